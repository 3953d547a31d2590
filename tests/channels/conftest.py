"""A real gateway on a real port with Telegram and WhatsApp on, in front of fakes of both
platforms (tests/fakes/telegram_api.py, whatsapp_api.py) and of the model's upstream."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, select

from switchboard.api.app import create_app
from switchboard.channels import linking
from switchboard.core.config import Settings
from switchboard.store.channels_schema import channel_inbox, channel_outbox
from switchboard.store.db import make_engine, reading
from switchboard.store.migrate import upgrade
from switchboard.store.runner import TransactionRunner
from tests.api.conftest import add_user, gateway_settings, wait_for
from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.whatsapp_api import FakeWhatsApp
from tests.support.servers import ServerThread


# -- servers in processes of their own (test_channel_processes, test_discord_processes) ---------

# The plan and channel timings of a configuration file; each test adds its platforms' sections.
PROCESS_TOML = """
[plans.exact]
name = "exact"
monthly_usd = 0
monthly_credits = 100000
turn_credits = 5000

[channels]
poll_interval_s = 0.2
retry_base_s = 0.2
lease_s = 5
"""
# Heartbeats fast enough that a dead process is known within seconds; a conversation's turn
# lease short enough that a killed process's lease does not hold the next turn long.
FAST_PROCESSES = {"SWITCHBOARD_HEARTBEAT_INTERVAL_S": "0.5", "SWITCHBOARD_HEARTBEAT_LAPSE_S": "3",
        "SWITCHBOARD_PROGRESS_INTERVAL_S": "0.5", "SWITCHBOARD_ASSISTANT__LEASE_S": "3"}


def process_env(tmp_path: Path, database_url: str, toml: str, secrets: dict[str, str]) -> dict[str, str]:
    """The environment of `switchboard serve` processes on `database_url`, configured by `toml`
    (written to a file) with the platforms' `secrets`."""
    config = tmp_path / "switchboard.toml"
    config.write_text(toml)
    return {
        "SWITCHBOARD_CONFIG": str(config), "SWITCHBOARD_DATABASE_URL": database_url,
        "SWITCHBOARD_DATA_DIR": str(tmp_path / "data"), "SWITCHBOARD_LOCAL_MODEL__ENABLED": "false",
        "SWITCHBOARD_RATE_LIMIT__REQUESTS_PER_MINUTE": "0", "SWITCHBOARD_LOG_LEVEL": "info",
        **secrets, **FAST_PROCESSES,
    }


def link_code(engine: Engine, user_id: int, ttl_s: int = 900) -> str:
    """A link code, as `switchboard channels link-code` makes one."""
    return TransactionRunner(engine).run_sync(lambda c: linking.create_code(c, user_id, ttl_s))

TELEGRAM_SECRET = "tg_webhook-Secret_42"
WHATSAPP_VERIFY = "verify-me-please"
# Short intervals so that retries and takeovers happen within a test's patience.
FAST = {"poll_interval_s": 0.2, "retry_base_s": 0.2, "retry_max_s": 2.0, "lease_s": 5.0, "send_timeout_s": 3.0}


def channel_env(monkeypatch: pytest.MonkeyPatch, tg: FakeTelegram, wa: FakeWhatsApp) -> dict[str, str]:
    env = {"TELEGRAM_BOT_TOKEN": tg.token, "TELEGRAM_WEBHOOK_SECRET": TELEGRAM_SECRET,
           "WHATSAPP_ACCESS_TOKEN": wa.access_token, "WHATSAPP_APP_SECRET": wa.app_secret,
           "WHATSAPP_VERIFY_TOKEN": WHATSAPP_VERIFY}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def channels_config(tg: FakeTelegram, wa: FakeWhatsApp, **extra: Any) -> dict[str, Any]:
    whatsapp = {"phone_number_id": wa.phone_number_id, "api_base_url": wa.base_url, **extra.pop("whatsapp", {})}
    return {"telegram": {"api_base_url": tg.url}, "whatsapp": whatsapp, **FAST, **extra}


@dataclass
class Channels:
    url: str
    key: str
    user_id: int
    email: str
    upstream: FakeOpenAI
    telegram: FakeTelegram
    whatsapp: FakeWhatsApp
    settings: Settings
    engine: Engine

    @property
    def telegram_webhook(self) -> str:
        return self.url + "/channels/telegram/webhook"

    @property
    def whatsapp_webhook(self) -> str:
        return self.url + "/channels/whatsapp/webhook"

    def code(self, user_id: int | None = None, ttl_s: int = 900) -> str:
        return link_code(self.engine, self.user_id if user_id is None else user_id, ttl_s)

    def api(self, path: str) -> Any:
        response = httpx.get(self.url + path, headers={"Authorization": f"Bearer {self.key}"}, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()

    def usage_count(self) -> int:
        return len(self.api("/v1/usage?limit=100")["data"])

    def inbox(self) -> list[Any]:
        with reading(self.engine) as conn:
            return list(conn.execute(select(channel_inbox).order_by(channel_inbox.c.id)))

    def outbox(self) -> list[Any]:
        with reading(self.engine) as conn:
            return list(conn.execute(select(channel_outbox).order_by(channel_outbox.c.id)))

    def outbox_count(self, status: str) -> int:
        with reading(self.engine) as conn:
            return int(conn.execute(select(func.count()).select_from(channel_outbox)
                                    .where(channel_outbox.c.status == status)).scalar_one())


def roomy_plans() -> dict[str, Any]:
    """The default plans, with a turn limit the fake model's prices fit in."""
    plans = Settings().plans
    plans["plus"] = plans["plus"].model_copy(update={"turn_credits": Decimal(2000)})
    return plans


@contextlib.contextmanager
def running_channels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: dict[str, Any]) -> Iterator[Channels]:
    """The gateway with both channels on; `extra` settings (with "channels" extras)."""
    extra = dict(extra)
    with FakeOpenAI() as upstream, FakeTelegram() as tg, FakeWhatsApp() as wa:
        channel_env(monkeypatch, tg, wa)
        settings = gateway_settings(tmp_path, f"sqlite:///{tmp_path / 'gw.db'}", upstream.url,
                                    channels=channels_config(tg, wa, **extra.pop("channels", {})),
                                    plans=extra.pop("plans", roomy_plans()), **extra)
        engine = make_engine(settings.resolved_database_url)
        upgrade(engine)
        user_id, key = add_user(engine, settings, "ada@example.com", "plus")
        with ServerThread(create_app(settings)) as server:
            wa.webhook_url = server.url + "/channels/whatsapp/webhook"
            yield Channels(server.url, key, user_id, "ada@example.com", upstream, tg, wa, settings, engine)
        engine.dispose()


@pytest.fixture
def channels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[Channels]:
    """The gateway with both channels on; `extra` settings (and "channels" extras) by indirect param."""
    with running_channels(tmp_path, monkeypatch, dict(getattr(request, "param", {}) or {})) as gw:
        yield gw


def linked_on_telegram(gw: Channels, sender: int) -> None:
    """Link Telegram user `sender` to the gateway's user, as a person would: /start CODE."""
    from tests.fakes.telegram_api import message_update, post_update

    before = len(gw.telegram.texts(sender))
    response = post_update(gw.telegram_webhook, TELEGRAM_SECRET, message_update(sender, f"/start {gw.code()}"))
    assert response.status_code == 200, response.text
    wait_for(lambda: len(gw.telegram.texts(sender)) > before)
    assert gw.telegram.texts(sender)[-1].startswith("Linked")


def linked_on_whatsapp(gw: Channels, phone: str, bsuid: str | None = None) -> None:
    from tests.fakes.whatsapp_api import text_message

    before = len(gw.whatsapp.texts(phone))
    response = gw.whatsapp.deliver(gw.whatsapp_webhook, text_message(gw.whatsapp, phone, f"LINK {gw.code()}", bsuid=bsuid))
    assert response.status_code == 200, response.text
    wait_for(lambda: len(gw.whatsapp.texts(phone)) > before)
    assert gw.whatsapp.texts(phone)[-1].startswith("Linked")
