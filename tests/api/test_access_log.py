"""The access log: one JSON object per request, never a key or a prompt; and a client that goes
away mid-upload is one short line, not a traceback."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import httpx
import orjson
import pytest

from switchboard.api.access_log import ACCESS_LOGGER
from switchboard.store.db import make_engine
from switchboard.store.migrate import upgrade
from tests.api.conftest import Gateway, add_user, gateway_settings
from tests.fakes.openai_upstream import FakeOpenAI
from tests.support.config import fake_model_toml
from tests.support.servers import ServerProcess

FIELDS = {"time", "request_id", "user_id", "client", "method", "path", "status", "latency_ms", "model", "credits_charged"}
PROMPT = "my secret plans for the weekend"


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def access_lines() -> Iterator[list[str]]:
    logger = logging.getLogger(ACCESS_LOGGER)
    handler, level = Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_each_request_is_one_json_line_without_keys_or_prompts(gateway: Gateway, access_lines: list[str]) -> None:
    auth = {"Authorization": f"Bearer {gateway.key}"}
    body = {"model": "fake-small", "max_tokens": 5, "messages": [{"role": "user", "content": PROMPT}]}
    plain = httpx.post(gateway.api + "/chat/completions", headers=auth, json=body)
    assert plain.status_code == 200
    with httpx.stream("POST", gateway.api + "/chat/completions", headers=auth, json={**body, "stream": True}) as streamed:
        streamed.read()
    assert httpx.get(gateway.api + "/balance", headers={"Authorization": "Bearer sb-wrong-key-1234567"}).status_code == 401
    assert httpx.get(gateway.api + "/usage?limit=2", headers=auth).status_code == 200

    time.sleep(0.2)  # a line is written once its response is complete
    entries = [orjson.loads(line) for line in access_lines]
    assert [(e["method"], e["path"], e["status"]) for e in entries] == [
        ("POST", "/v1/chat/completions", 200), ("POST", "/v1/chat/completions", 200),
        ("GET", "/v1/balance", 401), ("GET", "/v1/usage", 200)]
    for entry in entries:
        assert set(entry) == FIELDS and entry["client"] == "127.0.0.1" and entry["latency_ms"] > 0
    chat, stream, refused, usage = entries
    assert chat["request_id"] == plain.headers["x-switchboard-request-id"]
    assert chat["model"] == "fake-small" and chat["user_id"] == gateway.user_id
    assert chat["credits_charged"] == float(plain.headers["x-switchboard-credits-charged"]) > 0
    assert stream["request_id"] == streamed.headers["x-switchboard-request-id"] and stream["credits_charged"] > 0
    assert refused["user_id"] is None and refused["credits_charged"] is None
    assert usage["user_id"] == gateway.user_id and usage["model"] is None
    text = "\n".join(access_lines)
    assert gateway.key not in text and "sb-wrong" not in text and "secret plans" not in text and "limit=" not in text


def _abort_upload(url: str, path: str, key: str) -> None:
    """Send headers that promise 100 KB and 1 KB of it, then hang up."""
    parts = urlparse(url)
    with socket.create_connection((parts.hostname, parts.port)) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                  "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n".encode() + b"{" * 1000)
        time.sleep(0.3)


@pytest.mark.parametrize("access_log", ["true", "false"])
def test_an_aborted_upload_is_one_short_line(tmp_path: Path, access_log: str) -> None:
    with FakeOpenAI() as fake:
        config = tmp_path / "switchboard.toml"
        config.write_text(fake_model_toml(fake.url))
        db = f"sqlite:///{tmp_path / 'gw.db'}"
        settings = gateway_settings(tmp_path, db, fake.url)
        engine = make_engine(db)
        upgrade(engine)
        _, key = add_user(engine, settings, "alice@example.com", "plus")
        env = {"SWITCHBOARD_CONFIG": str(config), "SWITCHBOARD_DATABASE_URL": db, "SWITCHBOARD_DATA_DIR": str(tmp_path / "d"),
               "SWITCHBOARD_LOCAL_MODEL__ENABLED": "false", "SWITCHBOARD_ACCESS_LOG": access_log}
        with ServerProcess(env) as server:
            before = server.log()
            for path in ("/v1/chat/completions", "/v1/messages", "/webhooks/stripe", "/v1/billing/checkout"):
                _abort_upload(server.url, path, key)
            time.sleep(1.0)
            assert httpx.get(server.url + "/healthz").status_code == 200
            log = server.log()[len(before):]
        engine.dispose()
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log
    lines = [line for line in log.splitlines() if line.strip()]
    if access_log == "false":
        assert len(lines) == 4 and all("client disconnected" in line for line in lines), log
    else:
        assert lines == [], log  # the access lines (stdout) say it: status 499
