"""One tenant cannot cause everyone's outage, and an outage is a 503 with Retry-After (never a
4xx), through the real API with the official SDKs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from switchboard.api.app import create_app
from switchboard.core.config import Settings
from switchboard.store.db import make_engine
from switchboard.store.migrate import upgrade
from tests.api.conftest import INPUT_USD, OUTPUT_USD, add_user
from tests.fakes.openai_upstream import FakeOpenAI
from tests.support.servers import ServerThread

ASK = [{"role": "user", "content": "hello"}]
IMAGE = [{"role": "user", "content": [
    {"type": "text", "text": "what is this?"},
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as f:
        yield f


def _settings(tmp_path: Path, url: str, **resilience: Any) -> Settings:
    """One provider, one text-only model: when its breaker is open, nothing can serve `auto`."""
    return Settings(
        data_dir=tmp_path, local_model={"enabled": False}, rate_limit={"requests_per_minute": 0},
        resilience={"attempts_per_model": 1, "breaker_cooldown_s": 60, **resilience},
        providers=[{"name": "primary", "kind": "openai-compatible", "base_url": url}],
        models=[{"name": "cheap", "provider": "primary", "upstream_name": "fake-model", "context_window": 4096,
                 "input_usd_per_mtok": INPUT_USD, "output_usd_per_mtok": OUTPUT_USD, "abilities": ["tools"]}],
    )


def _users(settings: Settings, n: int) -> list[str]:
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    keys = [add_user(engine, settings, f"user{i}@example.com", "plus")[1] for i in range(n)]
    engine.dispose()
    return keys


def _client(server: ServerThread, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)


def _fail_once(server: ServerThread, key: str) -> None:
    with pytest.raises(openai.APIStatusError) as err:
        _client(server, key).chat.completions.create(model="cheap", messages=ASK, max_tokens=5)
    assert err.value.status_code == 502  # the upstream's 500, passed on


def test_one_users_failing_requests_do_not_open_the_breaker_for_others(tmp_path: Path, fake: FakeOpenAI) -> None:
    settings = _settings(tmp_path, fake.url, breaker_failures=3)
    mallory, alice = _users(settings, 2)
    with ServerThread(create_app(settings)) as server:
        fake.configure(status=500, error_message="this prompt crashes the upstream")
        for _ in range(3):
            _fail_once(server, mallory)
        fake.configure(text="fine")
        calls = len(fake.chat_requests())
        # Before: the provider's breaker was open for everyone and `auto` answered 400.
        answer = _client(server, alice).chat.completions.create(model="auto", messages=ASK, max_tokens=5)
        assert answer.choices[0].message.content == "fine"
        assert _client(server, alice).chat.completions.create(model="cheap", messages=ASK, max_tokens=5)
        assert len(fake.chat_requests()) == calls + 2  # the provider was called for her
        # The failing user's own attempts are what is skipped: a 503 with Retry-After, not a 4xx.
        with pytest.raises(openai.InternalServerError) as err:
            _client(server, mallory).chat.completions.create(model="auto", messages=ASK, max_tokens=5)
        assert err.value.status_code == 503 and int(err.value.response.headers["retry-after"]) >= 1
        assert len(fake.chat_requests()) == calls + 2


def test_an_outage_seen_by_several_users_is_a_503_with_retry_after(tmp_path: Path, fake: FakeOpenAI) -> None:
    settings = _settings(tmp_path, fake.url, breaker_failures=3, breaker_min_users=3)
    *failing, dave = _users(settings, 4)
    with ServerThread(create_app(settings)) as server:
        fake.configure(status=503, error_message="upstream down")
        for key in failing:
            _fail_once(server, key)
        calls = len(fake.chat_requests())
        for model in ("auto", "cheap"):
            with pytest.raises(openai.InternalServerError) as err:
                _client(server, dave).chat.completions.create(model=model, messages=ASK, max_tokens=5)
            assert err.value.status_code == 503, model
            assert 50 <= int(err.value.response.headers["retry-after"]) <= 60
            assert err.value.code == "service_unavailable"
            assert "unavailable right now" in err.value.message and "Retry in" in err.value.message
        # Streaming and the Anthropic endpoint answer the same, each in its own format.
        r = httpx.post(server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {dave}"},
                       json={"model": "auto", "messages": ASK, "stream": True})
        assert r.status_code == 503 and r.headers["retry-after"] and r.json()["error"]["code"] == "service_unavailable"
        with pytest.raises(anthropic.APIStatusError) as aerr:
            anthropic.Anthropic(base_url=server.url, api_key=dave, max_retries=0).messages.create(
                model="cheap", max_tokens=5, messages=ASK)  # type: ignore[arg-type]
        assert aerr.value.status_code == 503 and int(aerr.value.response.headers["retry-after"]) >= 1
        assert aerr.value.body["type"] == "error" and aerr.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
        # A request no model could serve is still a true 400, outage or not.
        with pytest.raises(openai.BadRequestError) as bad:
            _client(server, dave).chat.completions.create(model="auto", messages=IMAGE, max_tokens=5)  # type: ignore[arg-type]
        assert "No model in the catalog can serve this request (needs vision)" in bad.value.message
        assert len(fake.chat_requests()) == calls  # nothing reached the failing provider
        balance = httpx.get(server.url + "/v1/balance", headers={"Authorization": f"Bearer {dave}"}).json()
        assert balance["held_credits"] == 0 and balance["available_credits"] == 6000
