"""A real gateway on a real port with the assistant, in front of a scripted fake upstream."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from switchboard.api.app import create_app
from switchboard.core.config import Settings
from switchboard.store.db import make_engine
from switchboard.store.migrate import upgrade
from tests.api.conftest import Gateway, add_user, fake_upstream, gateway_settings  # noqa: F401 (a fixture)
from tests.fakes.openai_upstream import FakeOpenAI
from tests.support.servers import ServerThread


@pytest.fixture
def assistant_gateway(tmp_path: Path, fake_upstream: FakeOpenAI, request: pytest.FixtureRequest) -> Iterator[Gateway]:
    """The gateway (plus plan user, the fake's model) with the assistant; `extra` settings by indirect param."""
    extra: dict[str, Any] = dict(getattr(request, "param", {}) or {})
    with serve_assistant(tmp_path, f"sqlite:///{tmp_path / 'gw.db'}", fake_upstream, **extra) as gw:
        yield gw


@pytest.fixture
def assistant_gateway_on(tmp_path: Path, database_url: str, fake_upstream: FakeOpenAI) -> Iterator[Gateway]:
    """`assistant_gateway` on SQLite (a file under tmp_path) and on PostgreSQL."""
    with serve_assistant(tmp_path, database_url, fake_upstream) as gw:
        yield gw


@contextlib.contextmanager
def serve_assistant(tmp_path: Path, database_url: str, fake: FakeOpenAI, **extra: Any) -> Iterator[Gateway]:
    """A server thread with the assistant on `database_url` (migrated here), alice on Plus."""
    if "plans" not in extra:  # the fake model is expensive (0.2 credits a prompt token): a roomy turn limit
        plans = Settings().plans
        plans["plus"] = plans["plus"].model_copy(update={"turn_credits": Decimal(2000)})
        extra["plans"] = plans
    settings = gateway_settings(tmp_path, database_url, fake.url, **extra)
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    user_id, key = add_user(engine, settings, "alice@example.com", "plus")
    with ServerThread(create_app(settings)) as server:
        yield Gateway(server.url, key, user_id, fake, settings, engine)
    engine.dispose()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def new_conversation(gw: Gateway, key: str | None = None, **body: Any) -> dict[str, Any]:
    response = httpx.post(gw.api + "/conversations", headers=auth(key or gw.key), json=body or None)
    assert response.status_code == 201, response.text
    return response.json()


def say(gw: Gateway, conv_id: str, content: str, key: str | None = None, timeout: float = 30) -> httpx.Response:
    return httpx.post(f"{gw.api}/conversations/{conv_id}/messages", headers=auth(key or gw.key),
                      json={"content": content}, timeout=timeout)


def say_streaming(gw: Gateway, conv_id: str, content: str) -> list[tuple[str, dict[str, Any]]]:
    """The server-sent events of one streamed turn, as (event name, data)."""
    events: list[tuple[str, dict[str, Any]]] = []
    with httpx.stream("POST", f"{gw.api}/conversations/{conv_id}/messages", headers=auth(gw.key),
                      json={"content": content, "stream": True}, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                assert name is not None
                events.append((name, orjson.loads(line[len("data: "):])))
    return events


def history(gw: Gateway, conv_id: str, key: str | None = None) -> list[dict[str, Any]]:
    response = httpx.get(f"{gw.api}/conversations/{conv_id}/messages?limit=100", headers=auth(key or gw.key))
    assert response.status_code == 200, response.text
    return response.json()["data"]
