"""Rate limits (429 with Retry-After) and falling back to the next model within one hold."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from switchboard.api.app import create_app
from switchboard.core.config import Settings
from switchboard.store.db import make_engine
from switchboard.store.migrate import upgrade
from tests.api.conftest import INPUT_USD, OUTPUT_USD, add_user
from tests.fakes.openai_upstream import Behaviour, FakeOpenAI
from tests.support.servers import ServerThread


def _serve(tmp_path: Path, settings: Settings) -> tuple[ServerThread, str]:
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    _, key = add_user(engine, settings, "limits@example.com", "plus")
    engine.dispose()
    return ServerThread(create_app(settings)), key


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as f:
        yield f


def _models(url_a: str) -> dict:  # type: ignore[type-arg]
    return {
        "providers": [
            {"name": "primary", "kind": "openai-compatible", "base_url": url_a},
            {"name": "secondary", "kind": "openai-compatible", "base_url": url_a},
        ],
        "models": [
            {"name": "cheap", "provider": "primary", "upstream_name": "fake-model", "context_window": 4096,
             "input_usd_per_mtok": INPUT_USD, "output_usd_per_mtok": OUTPUT_USD},
            {"name": "sturdy", "provider": "secondary", "upstream_name": "fake-model-2", "context_window": 4096,
             "input_usd_per_mtok": INPUT_USD * 2, "output_usd_per_mtok": OUTPUT_USD * 2},
        ],
    }


def test_rate_limit_is_429_with_retry_after(tmp_path: Path, fake: FakeOpenAI) -> None:
    settings = Settings(data_dir=tmp_path, local_model={"enabled": False},
                        rate_limit={"requests_per_minute": 6, "burst": 2}, **_models(fake.url))
    server, key = _serve(tmp_path, settings)
    with server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
        for _ in range(2):
            client.chat.completions.create(model="cheap", messages=[{"role": "user", "content": "x"}], max_tokens=5)
        with pytest.raises(openai.RateLimitError) as err:
            client.chat.completions.create(model="cheap", messages=[{"role": "user", "content": "x"}], max_tokens=5)
        assert err.value.response.headers["retry-after"] == "10"  # one request per 10 s
        assert err.value.code == "rate_limit_exceeded"
        assert len(fake.chat_requests()) == 2


def test_auto_falls_back_to_the_next_model_within_the_same_hold(tmp_path: Path, fake: FakeOpenAI) -> None:
    settings = Settings(data_dir=tmp_path, local_model={"enabled": False}, default_model="cheap",
                        rate_limit={"requests_per_minute": 0}, **_models(fake.url))
    server, key = _serve(tmp_path, settings)
    # The first model fails twice (its retry included), then the next candidate answers.
    fake.enqueue(Behaviour(status=503, error_message="overloaded"), Behaviour(status=500),
                 Behaviour(text="from the fallback", prompt_tokens=10, completion_tokens=3))
    with server:
        raw = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0).chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "x"}], max_tokens=20
        )
        answer = raw.parse()
        assert answer.choices[0].message.content == "from the fallback"
        assert raw.headers["x-switchboard-model"] == "sturdy"
        # Charged at the fallback's prices: 10 * 0.4 + 3 * 0.8 credits.
        assert float(raw.headers["x-switchboard-credits-charged"]) == pytest.approx(6.4)
        assert [r.json["model"] for r in fake.chat_requests()] == ["fake-model", "fake-model", "fake-model-2"]
        usage = httpx.get(server.url + "/v1/usage", headers={"Authorization": f"Bearer {key}"}).json()["data"]
        [record] = usage
        assert record["model"] == "sturdy" and record["outcome"] == "ok"
        assert [(a["model"], a["outcome"]) for a in record["route"]["attempts"]] == [
            ("cheap", "error"), ("cheap", "error"), ("sturdy", "ok")]
        balance = httpx.get(server.url + "/v1/balance", headers={"Authorization": f"Bearer {key}"}).json()
        assert balance["held_credits"] == 0 and balance["available_credits"] == pytest.approx(6000 - 6.4)
    assert json.dumps(record)  # the explanation is plain JSON


def test_429_is_retried_after_retry_after_and_charged_once(tmp_path: Path, fake: FakeOpenAI) -> None:
    settings = Settings(data_dir=tmp_path, local_model={"enabled": False},
                        rate_limit={"requests_per_minute": 0}, **_models(fake.url))
    server, key = _serve(tmp_path, settings)
    fake.enqueue(Behaviour(status=429, retry_after="1", error_type="rate_limit_error"),
                 Behaviour(text="after the wait", prompt_tokens=10, completion_tokens=2))
    with server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
        started = time.monotonic()
        answer = client.chat.completions.create(model="cheap", messages=[{"role": "user", "content": "x"}], max_tokens=20)
        assert time.monotonic() - started >= 1.0  # honoured Retry-After
        assert answer.choices[0].message.content == "after the wait"
        assert answer.model_extra["switchboard"]["credits_charged"] == pytest.approx(10 * 0.2 + 2 * 0.4)
        assert len(fake.chat_requests()) == 2


def test_circuit_breaker_skips_a_failing_provider(tmp_path: Path, fake: FakeOpenAI) -> None:
    settings = Settings(data_dir=tmp_path, local_model={"enabled": False}, default_model="cheap",
                        rate_limit={"requests_per_minute": 0},
                        resilience={"attempts_per_model": 1, "breaker_failures": 2, "breaker_cooldown_s": 60},
                        **_models(fake.url))
    server, key = _serve(tmp_path, settings)
    with server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
        # "cheap" (provider primary) fails twice for this user: skipped for this user's requests.
        fake.enqueue(Behaviour(status=500), Behaviour(text="b1"), Behaviour(status=500), Behaviour(text="b2"))
        for _ in range(2):
            client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "x"}], max_tokens=5)
        calls = len(fake.chat_requests())
        answer = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "x"}], max_tokens=5)
        assert answer.headers["x-switchboard-model"] == "sturdy"
        assert [r.json["model"] for r in fake.chat_requests()[calls:]] == ["fake-model-2"]  # primary not called
        with pytest.raises(openai.APIStatusError) as err:  # asked by name, the open circuit is a 503
            client.chat.completions.create(model="cheap", messages=[{"role": "user", "content": "x"}], max_tokens=5)
        assert err.value.status_code == 503 and "skipped" in err.value.message
        assert 1 <= int(err.value.response.headers["retry-after"]) <= 60
        balance = httpx.get(server.url + "/v1/balance", headers={"Authorization": f"Bearer {key}"}).json()
        assert balance["held_credits"] == 0


def test_a_feature_the_model_lacks_is_a_clear_400(tmp_path: Path, fake: FakeOpenAI) -> None:
    models = _models(fake.url)
    models["models"][0]["abilities"] = ["tools"]  # "cheap" takes tools but no images or JSON mode
    settings = Settings(data_dir=tmp_path, local_model={"enabled": False}, rate_limit={"requests_per_minute": 0}, **models)
    server, key = _serve(tmp_path, settings)
    image = [{"type": "text", "text": "what is this?"},
             {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]
    with server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model="cheap", messages=[{"role": "user", "content": image}], max_tokens=5)
        assert "does not support vision" in err.value.message
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model="cheap", messages=[{"role": "user", "content": "x"}], max_tokens=5,
                                           response_format={"type": "json_object"})
        assert "does not support json" in err.value.message
        # "sturdy" declares no abilities (a self-hosted model): passed through to the upstream.
        client.chat.completions.create(model="sturdy", messages=[{"role": "user", "content": image}], max_tokens=5)
        assert fake.last.json["messages"][0]["content"][1]["type"] == "image_url"
        # With "auto", a model that cannot serve the request is skipped instead.
        settings_auto = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": image}], max_tokens=5)
        assert settings_auto.headers["x-switchboard-model"] == "sturdy"
        balance = httpx.get(server.url + "/v1/balance", headers={"Authorization": f"Bearer {key}"}).json()
        assert balance["held_credits"] == 0


def test_auto_routes_explains_and_degrades_before_refusing(tmp_path: Path, fake: FakeOpenAI) -> None:
    settings = Settings(data_dir=tmp_path, local_model={"enabled": False}, rate_limit={"requests_per_minute": 0},
                        routing={"tiers": {"cheap": "small", "sturdy": "mid"}, "plan_max_tier": {"free": "flagship"}},
                        **_models(fake.url))
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    _, rich_key = add_user(engine, settings, "rich@example.com", "plus")
    _, poor_key = add_user(engine, settings, "poor@example.com", "free")  # 100 credits
    engine.dispose()
    coding = [{"role": "user", "content": "Fix the bug in this python function: def f(): return 1/0"}]
    with ServerThread(create_app(settings)) as server:
        rich = openai.OpenAI(base_url=server.url + "/v1", api_key=rich_key, max_retries=0)
        raw = rich.chat.completions.with_raw_response.create(model="auto", messages=coding, max_tokens=200)
        assert raw.headers["x-switchboard-model"] == "sturdy"  # coding needs a mid-tier model
        route = raw.headers["x-switchboard-route"]
        assert route.startswith("model=sturdy; task=coding; difficulty=") and "tier=mid" in route
        [record] = httpx.get(server.url + "/v1/usage", headers={"Authorization": f"Bearer {rich_key}"}).json()["data"]
        assert record["route"]["task"] == "coding" and record["route"]["model"] == "sturdy"
        assert {c["model"] for c in record["route"]["candidates"]} == {"cheap", "sturdy"}
        # 200 output tokens on "sturdy" could cost 160 credits; the poor user has 100: "cheap" runs.
        poor = openai.OpenAI(base_url=server.url + "/v1", api_key=poor_key, max_retries=0)
        raw = poor.chat.completions.with_raw_response.create(model="auto", messages=coding, max_tokens=200)
        assert raw.headers["x-switchboard-model"] == "cheap"
        [record] = httpx.get(server.url + "/v1/usage", headers={"Authorization": f"Bearer {poor_key}"}).json()["data"]
        assert "degraded" in record["route"]
        with pytest.raises(openai.APIStatusError) as err:  # even "cheap" is too dear for 400 tokens: 402
            poor.chat.completions.create(model="auto", messages=coding, max_tokens=400)
        assert err.value.status_code == 402
