"""One Gateway connection per bot however many `switchboard serve` processes share the database
(SQLite and PostgreSQL): two processes, one connection between them; the holder killed with
SIGKILL (or stopped), the survivor takes the connection over within seconds and resumes the
session, so that the messages sent meanwhile are answered, each once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from switchboard.channels import connections, linking
from switchboard.store.db import make_engine, reading
from switchboard.store.migrate import upgrade
from switchboard.store.runner import TransactionRunner
from switchboard.store.schema import processes
from tests.api.conftest import add_user, wait_for
from tests.api.test_multiprocess import _ledger_verify_cli, _settings
from tests.channels.conftest import PROCESS_TOML, process_env
from tests.channels.discord_env import person
from tests.fakes.discord_api import FakeDiscord
from tests.fakes.openai_upstream import FakeOpenAI
from tests.support.config import fake_model_toml
from tests.support.servers import ServerProcess

HELLO = "Hello from the fake upstream."
DISCORD_TOML = PROCESS_TOML + """
[channels.discord]
public_key = "{public_key}"
application_id = "{application_id}"
api_base_url = "{api}"
gateway_lease_s = 3
"""


def _env(tmp_path: Path, database_url: str, upstream: FakeOpenAI, fake: FakeDiscord) -> dict[str, str]:
    toml = fake_model_toml(upstream.url, DISCORD_TOML.format(
        public_key=fake.public_key, application_id=fake.application_id, api=fake.api_url))
    return process_env(tmp_path, database_url, toml, {"DISCORD_BOT_TOKEN": fake.token})


def _holder_pid(engine: Engine) -> int | None:
    with reading(engine) as conn:
        held = connections.holder(conn, "discord")
        if held is None or held.process_id is None:
            return None
        return conn.execute(select(processes.c.pid).where(processes.c.id == held.process_id)).scalar()


@pytest.mark.parametrize("how", ["killed", "stopped"])
def test_two_processes_hold_one_gateway_connection_and_the_survivor_takes_it_over(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    with FakeOpenAI() as upstream, FakeDiscord() as fake:
        env = _env(tmp_path, database_url, upstream, fake)
        engine = make_engine(database_url)
        upgrade(engine)
        user_id, _ = add_user(engine, _settings(env, monkeypatch), "ada@example.com", "exact")
        servers = [ServerProcess(env).start(), ServerProcess(env).start()]
        try:
            wait_for(lambda: fake.connected, timeout=30)
            time.sleep(3.0)  # both keepers have looked many times: still the one connection
            assert fake.connections_total == 1 and len(fake.identifies) == 1 and fake.max_connections_open == 1
            ada = person()
            code = TransactionRunner(engine).run_sync(lambda c: linking.create_code(c, user_id, 900))
            fake.send_message(fake.message_create(ada.author, f"LINK {code}", channel_id=ada.dm))
            wait_for(lambda: fake.texts(ada.dm), timeout=15)
            holder_pid = wait_for(lambda: _holder_pid(engine))
            [holder] = [s for s in servers if s.proc is not None and s.proc.pid == holder_pid]
            [survivor] = [s for s in servers if s is not holder]
            started = time.monotonic()
            if how == "killed":
                holder.kill()
            else:
                holder.stop()
            texts = [f"while nobody was connected {i}" for i in range(3)]
            for text in texts:  # Discord keeps them for the session
                fake.send_message(fake.message_create(ada.author, text, channel_id=ada.dm))
            wait_for(lambda: fake.resumes, timeout=30)
            took_over_s = time.monotonic() - started
            wait_for(lambda: fake.texts(ada.dm).count(HELLO) == len(texts), timeout=30)
            time.sleep(1.5)  # anything that would come twice has come by now
            assert _holder_pid(engine) == survivor.proc.pid  # type: ignore[union-attr]
            assert survivor.proc is not None and survivor.proc.poll() is None
        finally:
            for server in servers:
                server.stop()
        assert took_over_s < 10, took_over_s  # within seconds
        assert fake.texts(ada.dm).count(HELLO) == len(texts)
        asked = sorted(r.json["messages"][-1]["content"] for r in upstream.chat_requests())
        assert asked == sorted(texts)  # each once: nothing lost, nothing twice
        assert len(fake.identifies) == 1 and len(fake.resumes) == 1  # the session resumed, not started afresh
        assert fake.max_connections_open == 1  # never two at once
    _ledger_verify_cli(env)
    engine.dispose()
