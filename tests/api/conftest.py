"""A real gateway on a real port, in front of a fake OpenAI-compatible upstream."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from sqlalchemy import Engine

from switchboard.accounts.keys import create_key
from switchboard.accounts.users import create_user
from switchboard.api.app import create_app
from switchboard.core.config import Settings
from switchboard.inference.runtime import make_ledger
from switchboard.store.db import make_engine
from switchboard.store.migrate import upgrade
from switchboard.store.runner import TransactionRunner
from tests.fakes.openai_upstream import FakeOpenAI
from tests.support.servers import ServerThread

# Prices chosen so that charges are easy to reason about: 1 credit = USD 0.005,
# so 1 prompt token = 0.2 credits... see `credits_for`.
INPUT_USD = 1000  # per million tokens -> USD 0.001 per token = 0.2 credits
OUTPUT_USD = 2000  # USD 0.002 per token = 0.4 credits


def credits_for(prompt_tokens: int, completion_tokens: int, cached: int = 0) -> float:
    return round((prompt_tokens - cached) * 0.2 + cached * 0.1 + completion_tokens * 0.4, 6)


def gateway_settings(tmp_path: Path, database_url: str, upstream_url: str, **extra: Any) -> Settings:
    """Settings of a gateway in front of the fake upstream; `extra` adds or replaces settings."""
    base: dict[str, Any] = dict(
        data_dir=tmp_path / "data",
        database_url=database_url,
        local_model={"enabled": False},
        rate_limit={"requests_per_minute": 0},
        sandbox={"backend": "none"},  # tests of the sandbox ask for it (tests/sandbox, tests/assistant)
        providers=[
            {"name": "fake", "kind": "openai-compatible", "base_url": upstream_url, "read_timeout_s": 5},
            {"name": "backup", "kind": "openai-compatible", "base_url": upstream_url, "read_timeout_s": 5},
        ],
        models=[
            {"name": "fake-small", "provider": "fake", "upstream_name": "fake-model", "context_window": 4096,
             "input_usd_per_mtok": INPUT_USD, "cached_input_usd_per_mtok": INPUT_USD / 2,
             "output_usd_per_mtok": OUTPUT_USD, "max_output_tokens": 100},
        ],
    )
    return Settings(**{**base, **extra})


def add_user(engine: Engine, settings: Settings, email: str, plan: str = "free") -> tuple[int, str]:
    """A user on `plan` (its allowance is the starting balance) with one API key."""
    ledger = make_ledger(settings)
    runner = TransactionRunner(engine)
    user = runner.run_sync(lambda c: create_user(c, ledger, email, plan))
    key = runner.run_sync(lambda c: create_key(c, user.id))
    return user.id, key


@dataclass
class Gateway:
    url: str
    key: str
    user_id: int
    fake: FakeOpenAI
    settings: Settings
    engine: Engine

    @property
    def api(self) -> str:
        return self.url + "/v1"


def balance(gw: Gateway) -> dict[str, Any]:
    """The gateway user's GET /v1/balance."""
    return httpx.get(gw.api + "/balance", headers={"Authorization": f"Bearer {gw.key}"}).json()


def usage_records(gw: Gateway) -> list[dict[str, Any]]:
    """The gateway user's usage records (GET /v1/usage), up to 100."""
    return httpx.get(gw.api + "/usage?limit=100", headers={"Authorization": f"Bearer {gw.key}"}).json()["data"]


T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 10.0) -> T:
    """The first truthy value of `predicate`, polled every 50 ms for up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.fixture
def fake_upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def gateway(tmp_path: Path, fake_upstream: FakeOpenAI) -> Iterator[Gateway]:
    settings = gateway_settings(tmp_path, f"sqlite:///{tmp_path / 'gw.db'}", fake_upstream.url)
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    user_id, key = add_user(engine, settings, "alice@example.com", "plus")
    with ServerThread(create_app(settings)) as server:
        yield Gateway(server.url, key, user_id, fake_upstream, settings, engine)
    engine.dispose()
