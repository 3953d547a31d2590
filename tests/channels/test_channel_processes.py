"""The channels under real concurrency and real crashes: `switchboard serve` processes sharing
one database (SQLite and PostgreSQL), the same update delivered to two of them at once, and a
server killed with SIGKILL between acknowledging a message and answering it."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from switchboard.channels import linking
from switchboard.store.assistant_schema import messages
from switchboard.store.channels_schema import channel_inbox
from switchboard.store.db import make_engine, reading
from switchboard.store.migrate import upgrade
from switchboard.store.runner import TransactionRunner
from switchboard.store.schema import usage_records
from tests.api.conftest import add_user, wait_for
from tests.api.test_multiprocess import _ledger_verify_cli, _settings
from tests.channels.conftest import PROCESS_TOML, TELEGRAM_SECRET, WHATSAPP_VERIFY, process_env
from tests.fakes.openai_upstream import Behaviour, FakeOpenAI
from tests.fakes.telegram_api import FakeTelegram, message_update, post_update
from tests.fakes.whatsapp_api import FakeWhatsApp, text_message
from tests.support.config import fake_model_toml
from tests.support.servers import ServerProcess

ADA = 4242
PHONE = "16505551234"
CHANNELS_TOML = PROCESS_TOML + """
[channels.telegram]
api_base_url = "{telegram}"

[channels.whatsapp]
phone_number_id = "{phone_number_id}"
api_base_url = "{whatsapp}"
"""


def _env(tmp_path: Path, database_url: str, upstream: FakeOpenAI, tg: FakeTelegram, wa: FakeWhatsApp) -> dict[str, str]:
    toml = fake_model_toml(upstream.url, CHANNELS_TOML.format(
        telegram=tg.url, whatsapp=wa.base_url, phone_number_id=wa.phone_number_id))
    return process_env(tmp_path, database_url, toml, {
        "TELEGRAM_BOT_TOKEN": tg.token, "TELEGRAM_WEBHOOK_SECRET": TELEGRAM_SECRET,
        "WHATSAPP_ACCESS_TOKEN": wa.access_token, "WHATSAPP_APP_SECRET": wa.app_secret,
        "WHATSAPP_VERIFY_TOKEN": WHATSAPP_VERIFY,
    })


def _prepared(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch, upstream: FakeOpenAI,
              tg: FakeTelegram, wa: FakeWhatsApp) -> tuple[dict[str, str], Engine, int]:
    env = _env(tmp_path, database_url, upstream, tg, wa)
    engine = make_engine(database_url)
    upgrade(engine)
    user_id, _ = add_user(engine, _settings(env, monkeypatch), "ada@example.com", "exact")
    return env, engine, user_id


def _link_telegram(server: ServerProcess, tg: FakeTelegram, engine: Engine, user_id: int) -> None:
    code = TransactionRunner(engine).run_sync(lambda c: linking.create_code(c, user_id, 900))
    post_update(server.url + "/channels/telegram/webhook", TELEGRAM_SECRET, message_update(ADA, f"/start {code}"))
    wait_for(lambda: tg.texts(ADA))


def _charged_requests(engine: Engine) -> int:
    with reading(engine) as conn:
        return len([r for r in conn.execute(select(usage_records.c.charged_ucr)) if r.charged_ucr > 0])


def _inbox(engine: Engine) -> list[Any]:
    with reading(engine) as conn:
        return list(conn.execute(select(channel_inbox).order_by(channel_inbox.c.id)))


def test_the_same_update_to_two_processes_at_once_is_answered_once_and_charged_once(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeOpenAI() as upstream, FakeTelegram() as tg, FakeWhatsApp() as wa:
        env, engine, user_id = _prepared(tmp_path, database_url, monkeypatch, upstream, tg, wa)
        with ServerProcess(env) as one, ServerProcess(env) as two:
            _link_telegram(one, tg, engine, user_id)
            linking_code = TransactionRunner(engine).run_sync(lambda c: linking.create_code(c, user_id, 900))
            wa.deliver(two.url + "/channels/whatsapp/webhook", text_message(wa, PHONE, f"LINK {linking_code}"))
            wait_for(lambda: wa.texts(PHONE))
            update = message_update(ADA, "once, please")
            notification = text_message(wa, PHONE, "once on WhatsApp too")
            outcomes: list[Any] = []

            def deliver(i: int) -> None:
                server = (one, two)[i % 2]
                if i < 6:
                    outcomes.append(post_update(server.url + "/channels/telegram/webhook", TELEGRAM_SECRET,
                                                update).json()["outcomes"])
                else:
                    outcomes.append(wa.deliver(server.url + "/channels/whatsapp/webhook", notification).json()["outcomes"])

            threads = [threading.Thread(target=deliver, args=(i,)) for i in range(12)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sorted(o[0] for o in outcomes) == ["duplicate"] * 10 + ["recorded"] * 2
            wait_for(lambda: "Hello from the fake upstream." in tg.texts(ADA)
                     and "Hello from the fake upstream." in wa.texts(PHONE), timeout=20)
            time.sleep(1.5)  # anything that would come twice has come by now
        assert tg.texts(ADA).count("Hello from the fake upstream.") == 1
        assert wa.texts(PHONE).count("Hello from the fake upstream.") == 1
        assert len(upstream.chat_requests()) == 2 and _charged_requests(engine) == 2
    _ledger_verify_cli(env)
    engine.dispose()


@pytest.mark.parametrize("survivor", ["restart", "sibling"])
def test_a_server_killed_between_acknowledging_and_answering_is_answered_once(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch, survivor: str
) -> None:
    """SIGKILL while the model thinks: the message is answered once, by the same server started
    again, or by another one already running."""
    with FakeOpenAI() as upstream, FakeTelegram() as tg, FakeWhatsApp() as wa:
        env, engine, user_id = _prepared(tmp_path, database_url, monkeypatch, upstream, tg, wa)
        other = ServerProcess(env).start() if survivor == "sibling" else None
        try:
            doomed = ServerProcess(env).start()
            _link_telegram(doomed, tg, engine, user_id)
            upstream.enqueue(Behaviour(text="never finished", first_byte_delay_s=60))
            started = time.monotonic()
            response = post_update(doomed.url + "/channels/telegram/webhook", TELEGRAM_SECRET,
                                   message_update(ADA, "what's the weather?"))
            assert response.status_code == 200 and time.monotonic() - started < 1.0
            wait_for(lambda: len(upstream.chat_requests()) == 1, timeout=15)  # the turn is with the model
            assert _inbox(engine)[-1].status == "running"
            doomed.kill()
            if other is None:
                other = ServerProcess(env).start()
            wait_for(lambda: "Hello from the fake upstream." in tg.texts(ADA), timeout=40)
            time.sleep(1.5)
        finally:
            if other is not None:
                other.stop()
        assert tg.texts(ADA).count("Hello from the fake upstream.") == 1
        assert not any("never finished" in t for t in tg.texts(ADA))
        last = _inbox(engine)[-1]
        assert (last.status, last.attempts) == ("answered", 2)
        assert _charged_requests(engine) == 1  # the killed turn had produced nothing: not charged
        # The question was stored by the killed turn; the turn run again does not store it twice,
        # so neither the model nor the conversation sees it twice.
        asked = [m for m in upstream.chat_requests()[-1].json["messages"] if m["role"] == "user"]
        assert [m["content"] for m in asked].count("what's the weather?") == 1
        with reading(engine) as conn:
            assert len(list(conn.execute(select(messages.c.id).where(messages.c.role == "user")))) == 1
    _ledger_verify_cli(env)
    engine.dispose()
