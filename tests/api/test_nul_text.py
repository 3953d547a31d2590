"""Text from outside with NUL bytes in it (an upstream's error message, a tool argument) is
stored on both databases: PostgreSQL's text cannot hold NUL, so the store writes U+FFFD there
instead; the request still ends cleanly and its hold is settled."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, select

from switchboard.api.app import create_app
from switchboard.store.db import make_engine
from switchboard.store.migrate import upgrade
from switchboard.store.schema import holds, usage_records
from tests.api.conftest import Gateway, add_user, balance, gateway_settings
from tests.fakes.openai_upstream import Behaviour, FakeOpenAI, FakeToolCall
from tests.support.servers import ServerThread

NUL_MESSAGE = "upstream broke\x00 here\x00"


@pytest.fixture
def gateway_on(tmp_path: Path, database_url: str, fake_upstream: FakeOpenAI) -> Iterator[Gateway]:
    """The gateway on SQLite and on PostgreSQL."""
    settings = gateway_settings(tmp_path, database_url, fake_upstream.url)
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    user_id, key = add_user(engine, settings, "nul@example.com", "plus")
    with ServerThread(create_app(settings)) as server:
        yield Gateway(server.url, key, user_id, fake_upstream, settings, engine)
    engine.dispose()


def _chat(gw: Gateway, **body: object) -> httpx.Response:
    payload = {"model": "fake-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20, **body}
    return httpx.post(gw.api + "/chat/completions", json=payload, headers={"Authorization": f"Bearer {gw.key}"},
                      timeout=20)


def _holds_and_errors(engine: Engine) -> tuple[list[str], list[str | None]]:
    with engine.connect() as conn:
        statuses = list(conn.execute(select(holds.c.status)).scalars())
        errors = list(conn.execute(select(usage_records.c.error)).scalars())
    return statuses, errors


def test_upstream_error_with_nul_gives_a_clean_error_and_a_settled_hold(gateway_on: Gateway) -> None:
    gw = gateway_on
    gw.fake.enqueue(Behaviour(status=400, error_message=NUL_MESSAGE, error_type="invalid_request_error"))
    r = _chat(gw)
    assert r.status_code == 502, r.text  # the upstream's failure, in OpenAI's format
    assert r.json()["error"]["code"] == "upstream_error"
    # Mid-stream: part of the answer arrives, then the upstream's error event with NULs.
    gw.fake.enqueue(Behaviour(chunks=4, error_event_after_chunks=2, error_message=NUL_MESSAGE))
    with httpx.stream("POST", gw.api + "/chat/completions", headers={"Authorization": f"Bearer {gw.key}"}, timeout=20,
                      json={"model": "fake-small", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                            "max_tokens": 20}) as s:
        assert s.status_code == 200
        body = s.read().decode()
    assert "error" in body
    statuses, errors = _holds_and_errors(gw.engine)
    assert statuses and all(status in ("settled", "voided") for status in statuses), statuses
    assert balance(gw)["held_credits"] == 0
    stored = [e for e in errors if e]
    assert stored and all("\x00" not in e for e in stored) if gw.engine.dialect.name == "postgresql" else stored


def test_tool_arguments_with_nul_are_answered_and_settled(gateway_on: Gateway) -> None:
    gw = gateway_on
    gw.fake.enqueue(Behaviour(text="", tool_calls=[FakeToolCall("call_1", "lookup\x00", '{"q": "a\\u0000b\\u0000"}')]))
    r = _chat(gw, tools=[{"type": "function", "function": {"name": "lookup", "description": "find\x00 things",
                                                           "parameters": {"type": "object"}}}])
    assert r.status_code == 200, r.text
    statuses, _ = _holds_and_errors(gw.engine)
    assert statuses == ["settled"]
    assert balance(gw)["held_credits"] == 0
