"""After a crash: a real `switchboard serve` process, streaming from a slow upstream, is killed
with SIGKILL mid-stream. Its holds are resolved within 10 s of a restart, or by another running
process once the dead one's heartbeat lapsed, charged for the delivery its stream had recorded
(not zero, never above the hold), with a usage record saying so; a request that had delivered
nothing is voided. On SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select, text

from switchboard.inference.runtime import make_ledger
from switchboard.store.db import make_engine, reading
from switchboard.store.migrate import upgrade
from switchboard.store.schema import holds, usage_records
from tests.api.conftest import add_user
from tests.api.test_multiprocess import _env, _ledger_verify_cli, _settings
from tests.fakes.openai_upstream import FakeOpenAI
from tests.support.servers import ServerProcess

CREDITS = 1000
WORDS = 300
# Intervals short enough that the test runs in seconds (defaults: 2 s, 30 s, 2 s).
FAST = {"SWITCHBOARD_HEARTBEAT_INTERVAL_S": "0.5", "SWITCHBOARD_HEARTBEAT_LAPSE_S": "3",
        "SWITCHBOARD_PROGRESS_INTERVAL_S": "0.5"}


class Client(threading.Thread):
    """A streaming client that counts the content chunks it received (one word each)."""

    def __init__(self, url: str, key: str, request_id: str, stream: bool = True) -> None:
        super().__init__(daemon=True)
        self.url, self.key, self.request_id, self.stream, self.received = url, key, request_id, stream, 0

    def run(self) -> None:
        body = {"model": "fake-small", "messages": [{"role": "user", "content": "go"}], "stream": self.stream,
                "max_tokens": WORDS + 10}
        try:
            with httpx.stream("POST", self.url + "/v1/chat/completions", json=body, timeout=60,
                              headers={"Authorization": f"Bearer {self.key}", "Idempotency-Key": self.request_id}) as r:
                for line in r.iter_lines():
                    if '"content":"tok' in line.replace(" ", ""):
                        self.received += 1
        except httpx.HTTPError:
            pass  # the server died under us: expected


def _start(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch, fake: FakeOpenAI,
           **extra: str) -> tuple[dict[str, str], Engine, str]:
    # A slow upstream: WORDS one-word chunks, 0.1 s apart (30 s in all).
    fake.configure(text=" ".join(["tok"] * WORDS), chunks=WORDS, chunk_delay_s=0.1)
    env = _env(tmp_path, database_url, fake.url, CREDITS, **{**FAST, **extra})
    engine = make_engine(database_url)
    upgrade(engine)
    _, key = add_user(engine, _settings(env, monkeypatch), "crash@example.com", "exact")
    return env, engine, key


def _holds(engine: Engine) -> dict[str, Any]:
    """The holds by request id, with their recorded progress."""
    with reading(engine) as conn:
        return {row.request_id: row for row in conn.execute(select(holds).order_by(holds.c.id))}


def _wait_for(what: Any, timeout_s: float, step_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(step_s)
    raise AssertionError(f"not within {timeout_s} s")


def _stream_until_recorded(server: ServerProcess, engine: Engine, key: str, plain: bool = False) -> Client:
    """Start a stream "s" (and, with `plain`, a non-streaming request "p"); wait until the
    client received part of the answer and the server recorded it (a few seconds at most: a
    server that records nothing, as before holds belonged to processes, is killed all the same)."""
    client = Client(server.url, key, "s")
    client.start()
    if plain:
        Client(server.url, key, "p", stream=False).start()
    _wait_for(lambda: client.received >= 5 and len(_holds(engine)) == 1 + plain, 30)
    with contextlib.suppress(AssertionError):
        _wait_for(lambda: (_holds(engine)["s"]._mapping.get("progress_completion_tokens") or 0) > 0, 5)
    return client


def _killed_mid_stream(env: dict[str, str], engine: Engine, key: str, plain: bool = False) -> tuple[Client, float]:
    """A server of `env` SIGKILLed mid-stream (see `_stream_until_recorded`); its holds are left
    active. Returns the client and when the server was killed."""
    server = ServerProcess(env).start()
    try:
        client = _stream_until_recorded(server, engine, key, plain)
    finally:
        server.kill()
    killed_at = time.monotonic()
    client.join(10)
    assert all(r.status == "active" for r in _holds(engine).values())  # nothing settled them
    return client, killed_at


def _resolved_within(engine: Engine, timeout_s: float) -> float:
    """Seconds until no hold is active (fails past `timeout_s`)."""
    began = time.monotonic()
    _wait_for(lambda: all(r.status != "active" for r in _holds(engine).values()), timeout_s)
    return time.monotonic() - began


def _assert_charged_as_recorded(engine: Engine, env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                client: Client, plain: bool = False) -> int:
    """The stream's hold was charged what its server had recorded as delivered, with a usage
    record saying so; the non-streaming request's voided. Returns the charge."""
    ledger = make_ledger(_settings(env, monkeypatch))
    with reading(engine) as conn:
        balance = ledger.balance(conn, 1)
        assert ledger.verify(conn) == []
        records = {r.request_id: r for r in conn.execute(select(usage_records))}
    rows = _holds(engine)
    stream = rows["s"]
    charge = stream.progress_ucr
    # Recorded (counted as a cancellation counts it): part of the answer the client was
    # receiving, not all of it; the charge more than nothing and less than the hold.
    assert client.received > 0 and 0 < stream.progress_completion_tokens < WORDS
    assert 0 < charge < stream.amount_ucr
    assert (stream.status, stream.charged_ucr) == ("settled", charge)
    record = records["s"]
    assert (record.outcome, record.charged_ucr, record.completion_tokens) == (
        "interrupted", charge, stream.progress_completion_tokens)
    assert record.prompt_tokens == stream.progress_prompt_tokens > 0
    assert "stopped before settling" in record.error
    assert f"{stream.progress_completion_tokens} output tokens" in record.error
    if plain:  # the non-streaming request had delivered nothing: voided
        assert (rows["p"].status, rows["p"].charged_ucr, rows["p"].progress_ucr) == ("voided", 0, None)
        assert (records["p"].outcome, records["p"].charged_ucr) == ("interrupted", 0)
    assert (balance.held_ucr, balance.available_ucr) == (0, CREDITS * 1_000_000 - charge)
    return int(charge)


def test_a_restart_resolves_the_holds_of_a_killed_server_within_10_s(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeOpenAI() as fake:
        env, engine, key = _start(tmp_path, database_url, monkeypatch, fake)
        client, _ = _killed_mid_stream(env, engine, key, plain=True)
        started = time.monotonic()
        with ServerProcess(env):
            _resolved_within(engine, 10)
            assert time.monotonic() - started <= 10  # counting the restart itself
            with reading(engine) as conn:  # the dead process's row went with its holds
                assert len(conn.execute(text("SELECT id FROM processes")).all()) == 1
        _assert_charged_as_recorded(engine, env, monkeypatch, client, plain=True)
        with reading(engine) as conn:  # a clean stop leaves no row behind
            assert conn.execute(text("SELECT COUNT(*) FROM processes")).scalar_one() == 0
    _ledger_verify_cli(env)
    engine.dispose()


def test_another_process_resolves_them_once_the_heartbeat_lapsed(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No restart: the other process (of another host, so only the heartbeat can tell) resolves
    the dead one's holds once its heartbeat lapsed (3 s here), not before."""
    with FakeOpenAI() as fake:
        env, engine, key = _start(tmp_path, database_url, monkeypatch, fake)
        with ServerProcess({**env, "SWITCHBOARD_PROCESS_HOST": "host-b"}) as other:
            client, killed_at = _killed_mid_stream({**env, "SWITCHBOARD_PROCESS_HOST": "host-a"}, engine, key)
            _resolved_within(engine, 40)
            # Its last heartbeat was at most 0.5 s before the kill: lapsed 2.5 to 3 s after it,
            # found at the other's next heartbeat (0.5 s), resolved in well under a second.
            assert 2.0 <= time.monotonic() - killed_at <= 3.0 + 6.0
        assert "resolved 1 hold(s) of dead server process(es)" in other.log()
        _assert_charged_as_recorded(engine, env, monkeypatch, client)
    _ledger_verify_cli(env)
    engine.dispose()


def test_a_sibling_process_of_the_same_host_resolves_them_without_waiting_for_the_lapse(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes of one host (as `serve --workers 2` runs them): the survivor sees the
    killed one's pid gone at its next heartbeat, long before the 30 s lapse."""
    with FakeOpenAI() as fake:
        env, engine, key = _start(tmp_path, sqlite_url, monkeypatch, fake, SWITCHBOARD_HEARTBEAT_LAPSE_S="30")
        with ServerProcess(env) as other:
            client, killed_at = _killed_mid_stream(env, engine, key)
            _resolved_within(engine, 40)
            assert time.monotonic() - killed_at <= 5
            # The survivor goes on serving; the user's credits are free again.
            balance = httpx.get(other.url + "/v1/balance", headers={"Authorization": f"Bearer {key}"}).json()
        charge = _assert_charged_as_recorded(engine, env, monkeypatch, client)
        assert balance["available_credits"] == CREDITS - charge / 1_000_000
    engine.dispose()
