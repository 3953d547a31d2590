"""No keys inside: code in a sandbox calls a model through the gateway's Unix socket with its
run's token (a file only the sandbox user can read), and the user is charged for it.

A real gateway runtime in front of the fake OpenAI upstream, a real bubblewrap sandbox, and a
plain http.client inside talking HTTP/1.1 over the bound socket.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from switchboard.api.sandbox_gateway import Sandboxes
from switchboard.core.money import credits_to_ucr
from switchboard.inference.runtime import Runtime
from switchboard.sandbox.base import SandboxUnavailable
from switchboard.sandbox.manager import SandboxManager
from switchboard.store.db import make_engine, read
from switchboard.store.migrate import upgrade
from switchboard.store.schema import usage_records, wallets
from tests.api.conftest import add_user, gateway_settings
from tests.fakes.openai_upstream import FakeOpenAI
from tests.sandbox.conftest import TEST_LIMITS

CLIENT = r"""
import http.client, json, os, socket, stat, sys

class Unix(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("gateway")
        self.unix_path = path
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.unix_path)

token_file = os.environ["SWITCHBOARD_GATEWAY_TOKEN_FILE"]
st = os.stat(token_file)
token = open(token_file).read().strip()
report = {"token_mode": oct(stat.S_IMODE(st.st_mode)), "token_uid": st.st_uid, "uid": os.getuid(),
          "token_in_env": any(token in v for v in os.environ.values()), "calls": []}
for stream in json.loads(sys.argv[1]):
    conn = Unix(os.environ["SWITCHBOARD_GATEWAY_SOCKET"])
    body = {"model": "fake-small", "messages": [{"role": "user", "content": "hello from the sandbox"}],
            "stream": stream, "max_tokens": 20}
    conn.request("POST", "/v1/chat/completions", json.dumps(body),
                 {"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    response = conn.getresponse()
    report["calls"].append({"status": response.status, "body": response.read().decode()})
seen = []
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            seen.append(open(f"/proc/{pid}/cmdline", "rb").read())
        except OSError:
            pass
report["token_in_cmdlines"] = any(token.encode() in c for c in seen)
print(json.dumps(report))
"""


@pytest.fixture
def fake() -> Any:
    with FakeOpenAI() as upstream:
        yield upstream


@asynccontextmanager
async def world(tmp_path: Path, fake: FakeOpenAI) -> AsyncIterator[tuple[Runtime, SandboxManager, int]]:
    settings = gateway_settings(tmp_path, f"sqlite:///{tmp_path / 'gw.db'}", fake.url,
                                sandbox={"backend": "bubblewrap", "limits": {"plus": TEST_LIMITS}})
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    user_id, _ = add_user(engine, settings, "sandboxed@example.com", "plus")
    engine.dispose()
    runtime = Runtime(settings)
    await runtime.start(sweep=False)
    try:
        sandboxes = await Sandboxes.start(runtime)
    except SandboxUnavailable as exc:
        await runtime.stop()
        pytest.skip(f"bubblewrap sandbox backend NOT available here ({exc}): SKIPPED")
    assert sandboxes is not None
    try:
        yield runtime, sandboxes.manager, user_id
    finally:
        await sandboxes.stop()
        await runtime.stop()


def _balance(runtime: Runtime, user_id: int) -> int:
    query = select(wallets.c.balance_ucr).where(wallets.c.user_id == user_id)
    return int(read(runtime.engine, lambda c: c.execute(query).scalar_one()))


def _records(runtime: Runtime, user_id: int) -> list[Any]:
    return list(read(runtime.engine, lambda c: c.execute(
        select(usage_records).where(usage_records.c.user_id == user_id).order_by(usage_records.c.id)).all()))


def _watch_host(token: str) -> tuple[threading.Event, list[str]]:
    """Scan every host process's command line and environment for the token until stopped."""
    stop, hits = threading.Event(), []

    def scan() -> None:
        while not stop.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                for name in ("cmdline", "environ"):
                    try:
                        with open(f"/proc/{pid}/{name}", "rb") as f:
                            if token.encode() in f.read():
                                hits.append(f"{pid}/{name}")
                    except OSError:
                        pass
            stop.wait(0.02)
    threading.Thread(target=scan, daemon=True).start()
    return stop, hits


def run(coro: Callable[[], Any]) -> Any:
    return asyncio.run(coro())


def test_code_in_the_sandbox_calls_a_model_through_the_socket_and_is_charged(tmp_path: Path, fake: FakeOpenAI) -> None:
    async def go() -> None:
        async with world(tmp_path, fake) as (runtime, manager, user_id):
            before = _balance(runtime, user_id)
            grant = manager.grant(user_id, "plus", "turn-1", credits_to_ucr(50))
            assert grant is not None
            token = manager.tokens.encode(grant)
            stop, hits = _watch_host(token)
            try:
                result = await manager.run_async(user_id, "plus", ["python3", "-c", CLIENT, json.dumps([False, True])],
                                                 grant=grant)
            finally:
                stop.set()
            assert result.exit_code == 0, result.stderr.decode()
            report = json.loads(result.stdout)
            # The token: a file of the sandbox user's alone, never in the environment or a command line.
            assert report["token_mode"] == "0o400" and report["token_uid"] == report["uid"] == manager.uid(user_id)
            assert not report["token_in_env"] and not report["token_in_cmdlines"] and hits == []
            plain, streamed = report["calls"]
            assert plain["status"] == 200, plain
            assert json.loads(plain["body"])["choices"][0]["message"]["content"] == "Hello from the fake upstream."
            assert streamed["status"] == 200 and "data: [DONE]" in streamed["body"]
            # Charged to that user, as requests of their own, counted against the run's grant.
            records = [r for r in _records(runtime, user_id) if r.endpoint == "sandbox.chat.completions"]
            assert len(records) == 2 and all(r.charged_ucr > 0 for r in records)
            charged = sum(r.charged_ucr for r in records)
            assert result.gateway_calls == 2 and result.gateway_ucr == charged
            assert _balance(runtime, user_id) == before - charged
            assert [m["content"] for m in fake.chat_requests()[-1].json["messages"]] == ["hello from the sandbox"]
            # The run is over: its token no longer opens anything, and the file is gone.
            transport = httpx.AsyncHTTPTransport(uds=str(manager.gateway_socket))
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
                late = await client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {token}"},
                                         json={"model": "fake-small", "messages": [{"role": "user", "content": "x"}]})
                forged = await client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {token[:-4]}AAAA"},
                                           json={"model": "fake-small", "messages": [{"role": "user", "content": "x"}]})
            assert late.status_code == 401 and "revoked" in late.json()["error"]["message"]
            assert forged.status_code == 401 and forged.json()["error"]["type"] == "authentication_error"
            assert not (manager.root / "run" / f"u{user_id}" / "token").exists()
    run(go)


def test_a_call_beyond_the_turns_credit_limit_is_refused_and_not_charged(tmp_path: Path, fake: FakeOpenAI) -> None:
    async def go() -> None:
        async with world(tmp_path, fake) as (runtime, manager, user_id):
            before = _balance(runtime, user_id)
            grant = manager.grant(user_id, "plus", "turn-2", 1000)  # 0.001 credits: less than any call's hold
            assert grant is not None
            result = await manager.run_async(user_id, "plus", ["python3", "-c", CLIENT, "[false]"], grant=grant)
            call = json.loads(result.stdout)["calls"][0]
            assert call["status"] == 402, call
            assert json.loads(call["body"])["error"]["code"] == "credit_limit_reached"
            assert result.gateway_ucr == 0 and _balance(runtime, user_id) == before
            assert len(fake.chat_requests()) == 0  # refused before the upstream was asked anything
    run(go)


def test_a_run_without_a_grant_has_no_way_out(tmp_path: Path, fake: FakeOpenAI) -> None:
    async def go() -> None:
        async with world(tmp_path, fake) as (runtime, manager, user_id):
            result = await manager.run_async(user_id, "plus", ["/bin/sh", "-c", "ls -A /run/switchboard 2>&1; env"])
            out = result.stdout.decode()
            assert "No such file or directory" in out and "SWITCHBOARD_GATEWAY" not in out
    run(go)
