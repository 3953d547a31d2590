"""A real gateway on a real port with Discord on, in front of the fake Discord (its Gateway, REST
API and interactions client: tests/fakes/discord_api.py) and the fake model upstream."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, Table, select

from switchboard.api.app import create_app
from switchboard.core.config import Settings
from switchboard.store.channels_schema import channel_inbox, channel_outbox
from switchboard.store.db import make_engine, reading
from switchboard.store.migrate import upgrade
from tests.api.conftest import add_user, gateway_settings, wait_for
from tests.channels.conftest import link_code, roomy_plans
from tests.fakes.discord_api import FakeDiscord, snowflake, user
from tests.fakes.openai_upstream import FakeOpenAI
from tests.support.servers import ServerThread

# Short intervals so that retries, leases and takeovers happen within a test's patience.
FAST = {"poll_interval_s": 0.2, "retry_base_s": 0.2, "retry_max_s": 2.0, "lease_s": 5.0, "send_timeout_s": 3.0}
# A model that may write a long reply (the default fake's output stops at 100 tokens).
WORDY = {"models": [{"name": "fake-small", "provider": "fake", "upstream_name": "fake-model", "context_window": 32000,
                     "input_usd_per_mtok": 1, "output_usd_per_mtok": 2, "max_output_tokens": 8000}]}
GUILD = "1300000000000000777"
GENERAL = "1300000000000000778"  # a text channel of GUILD


def discord_section(fake: FakeDiscord, **extra: Any) -> dict[str, Any]:
    return {"public_key": fake.public_key, "application_id": fake.application_id, "api_base_url": fake.api_url,
            "gateway_lease_s": 3.0, **extra}


@dataclass
class Person:
    """A Discord user and their direct-message channel with the bot."""

    author: dict[str, Any]
    dm: str

    @property
    def id(self) -> str:
        return str(self.author["id"])


def person(name: str = "ada") -> Person:
    return Person(user(snowflake(), name), snowflake())


@dataclass
class DiscordGateway:
    url: str
    key: str
    user_id: int
    upstream: FakeOpenAI
    discord: FakeDiscord
    settings: Settings
    engine: Engine

    @property
    def interactions_url(self) -> str:
        return self.url + "/channels/discord/interactions"

    def code(self, user_id: int | None = None, ttl_s: int = 900) -> str:
        return link_code(self.engine, self.user_id if user_id is None else user_id, ttl_s)

    def dm(self, who: Person, text: str, **kwargs: Any) -> dict[str, Any]:
        """`who` writes to the bot in their direct messages; the MESSAGE_CREATE sent."""
        d = self.discord.message_create(who.author, text, channel_id=who.dm, **kwargs)
        self.discord.send_message(d)
        return d

    def say(self, who: Person, text: str, channel_id: str = GENERAL, **kwargs: Any) -> dict[str, Any]:
        """`who` writes in a server channel."""
        d = self.discord.message_create(who.author, text, channel_id=channel_id, guild_id=GUILD, **kwargs)
        self.discord.send_message(d)
        return d

    def link(self, who: Person) -> None:
        """Link `who` as a person would: LINK CODE in a direct message."""
        before = len(self.discord.texts(who.dm))
        self.dm(who, f"LINK {self.code()}")
        wait_for(lambda: len(self.discord.texts(who.dm)) > before)
        assert self.discord.texts(who.dm)[-1].startswith("Linked"), self.discord.texts(who.dm)

    def rows(self, table: Table) -> list[Any]:
        with reading(self.engine) as conn:
            return list(conn.execute(select(table).order_by(table.c.id)))

    def inbox(self) -> list[Any]:
        return self.rows(channel_inbox)

    def outbox(self) -> list[Any]:
        return self.rows(channel_outbox)


def settle(seconds: float = 1.0) -> None:
    """Let anything that would come twice come."""
    time.sleep(seconds)


@contextlib.contextmanager
def running_discord(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: dict[str, Any] | None = None,
                    database_url: str | None = None) -> Iterator[DiscordGateway]:
    extra = dict(extra or {})
    with FakeOpenAI() as upstream, FakeDiscord() as fake:
        monkeypatch.setenv("DISCORD_BOT_TOKEN", fake.token)
        channels = {"discord": discord_section(fake, **extra.pop("discord", {})), **FAST, **extra.pop("channels", {})}
        url = database_url or f"sqlite:///{tmp_path / 'gw.db'}"
        settings = gateway_settings(tmp_path, url, upstream.url, channels=channels,
                                    plans=extra.pop("plans", roomy_plans()), **extra)
        engine = make_engine(settings.resolved_database_url)
        upgrade(engine)
        user_id, key = add_user(engine, settings, "ada@example.com", "plus")
        with ServerThread(create_app(settings)) as server:
            wait_for(lambda: fake.connected and fake.identifies, timeout=20)
            yield DiscordGateway(server.url, key, user_id, upstream, fake, settings, engine)
        engine.dispose()


@pytest.fixture
def discord_gw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[DiscordGateway]:
    """The gateway with Discord on; `extra` settings (and "channels"/"discord" extras) by indirect param."""
    with running_discord(tmp_path, monkeypatch, dict(getattr(request, "param", {}) or {})) as gw:
        yield gw
