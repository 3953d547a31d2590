"""Bodies refused by size before they are read, and failed authentication that stays cheap."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
from sqlalchemy import Engine, event

from switchboard.accounts.keys import new_key
from switchboard.api.app import create_app
from switchboard.store.db import make_engine
from switchboard.store.migrate import upgrade
from tests.api.conftest import Gateway, add_user, gateway_settings
from tests.fakes.openai_upstream import FakeOpenAI
from tests.support.servers import ServerThread

MB = 1_000_000


def raw_post(url: str, path: str, content_length: int, sent: bytes = b"", timeout: float = 5.0) -> tuple[int, dict]:  # type: ignore[type-arg]
    """POST with a declared Content-Length but only `sent` of the body; the status and JSON body."""
    parts = urlparse(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {content_length}\r\n\r\n".encode() + sent)
        data = b""
        while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < int(
                data.lower().partition(b"content-length: ")[2].partition(b"\r\n")[0] or 10**9):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_an_oversized_webhook_is_refused_from_its_content_length_without_reading_it(gateway: Gateway) -> None:
    # 200 MB declared, none sent: the answer comes at once (it used to read all 200 MB first).
    status, body = raw_post(gateway.url, "/webhooks/stripe", 200 * MB)
    assert status == 413
    assert body["error"]["code"] == "request_too_large" and body["error"]["type"] == "invalid_request_error"


def test_an_oversized_chunked_body_is_refused_while_it_is_read(gateway: Gateway) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(20):  # 2 MB in 100 KB chunks, no Content-Length
            yield b" " * 100_000

    r = httpx.post(gateway.url + "/webhooks/stripe", content=chunks(), headers={"stripe-signature": "t=1,v1=x"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    r = httpx.post(gateway.api + "/billing/checkout", content=chunks(), headers={"Authorization": f"Bearer {gateway.key}"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_inference_bodies_take_images_up_to_32_mb_and_no_more(gateway: Gateway) -> None:
    image = "data:image/png;base64," + base64.b64encode(b"\x89PNG" + b"\x00" * 13 * MB).decode()  # a 17 MB body
    r = httpx.post(gateway.api + "/chat/completions", headers={"Authorization": f"Bearer {gateway.key}"}, timeout=60,
                   json={"model": "fake-small", "max_tokens": 5, "messages": [
                       {"role": "user", "content": [{"type": "text", "text": "what is it?"},
                                                    {"type": "image_url", "image_url": {"url": image}}]}]})
    assert r.status_code != 413 or r.json()["error"]["code"] != "request_too_large", r.text

    status, body = raw_post(gateway.url, "/v1/chat/completions", 40 * MB)
    assert status == 413 and body["error"]["code"] == "request_too_large"  # not context_length_exceeded
    status, body = raw_post(gateway.url, "/v1/messages", 40 * MB)
    assert status == 413 and body["type"] == "error" and body["error"]["type"] == "request_too_large"


@pytest.fixture
def no_failure_limit(tmp_path: Path, fake_upstream: FakeOpenAI) -> Iterator[tuple[str, str, Engine]]:
    settings = gateway_settings(tmp_path, f"sqlite:///{tmp_path / 'gw.db'}", fake_upstream.url,
                                limits={"auth_failures_per_minute": 0})
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    _, key = add_user(engine, settings, "alice@example.com", "plus")
    with ServerThread(create_app(settings)) as server:
        yield server.url + "/v1", key, engine
    engine.dispose()


def test_bad_keys_cost_no_database_query_each(no_failure_limit: tuple[str, str, Engine]) -> None:
    api, key, _ = no_failure_limit
    lookups: list[str] = []

    def count(conn, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
        if "api_keys" in statement:
            lookups.append(statement)

    event.listen(Engine, "before_cursor_execute", count)
    try:
        with httpx.Client() as client:
            unknown = new_key()
            for i in range(40):
                for bad in (f"sk-not-ours-{i}", "sb-" + "x" * i, unknown):
                    r = client.get(api + "/balance", headers={"Authorization": f"Bearer {bad}"})
                    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
                    assert len(bad) < 8 or bad not in r.text  # a prefix at most is echoed
    finally:
        event.remove(Engine, "before_cursor_execute", count)
    assert len(lookups) <= 1  # the one well-formed unknown key, looked up once and remembered
    assert httpx.get(api + "/balance", headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_failed_authentications_are_limited_per_client_address(gateway: Gateway) -> None:
    with httpx.Client() as client:
        assert client.get(gateway.api + "/balance", headers={"Authorization": f"Bearer {gateway.key}"}).status_code == 200
        statuses = [client.get(gateway.api + "/balance", headers={"Authorization": f"Bearer {new_key()}"}).status_code
                    for _ in range(40)]
        assert statuses[:30] == [401] * 30 and set(statuses[30:]) == {429}
        refused = client.get(gateway.api + "/balance", headers={"Authorization": f"Bearer {new_key()}"})
        assert refused.json()["error"]["code"] == "rate_limit_exceeded" and int(refused.headers["retry-after"]) >= 1
        # A key the server already knows still works from that address: the flood locks out no one.
        assert client.get(gateway.api + "/balance", headers={"Authorization": f"Bearer {gateway.key}"}).status_code == 200
