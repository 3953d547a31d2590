"""Every vendor, every failure mode, through the real gateway: the client always gets a clean
answer or a clean error, and the credits charged are exactly what the vendor's usage says.

The client is the official `openai` SDK against our /v1/chat/completions; behind the gateway is
a fake of the vendor's own API speaking its documented wire format.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from switchboard.api.app import create_app
from switchboard.core.config import Settings
from switchboard.core.types import ChatMessage, ChatRequest
from switchboard.core.catalog import ModelSpec
from switchboard.providers.base import Provider
from switchboard.providers.registry import build_providers
from switchboard.store.db import make_engine
from switchboard.store.migrate import upgrade
from tests.api.conftest import add_user
from tests.fakes.openai_upstream import Behaviour, FakeToolCall
from tests.support.servers import ServerThread
from tests.vendors.cases import BACKUP_FACTOR, PRICES, VendorCase, cases, credits

START_CREDITS = Decimal(6000)  # the plus plan
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]


@dataclass
class World:
    case: VendorCase
    fake: Any
    url: str
    key: str
    client: openai.OpenAI
    settings: Settings

    def provider(self) -> Provider:
        """The gateway's adapter for the `main` model (to count tokens as the gateway does)."""
        return build_providers(self.settings)["primary"]

    def spec(self) -> ModelSpec:
        return self.settings.catalog["main"]

    def balance(self) -> Decimal:
        body = httpx.get(self.url + "/v1/balance", headers={"Authorization": f"Bearer {self.key}"}).json()
        assert body["held_credits"] == 0
        return Decimal(body["available"])

    def records(self) -> list[dict[str, Any]]:
        return httpx.get(self.url + "/v1/usage?limit=50", headers={"Authorization": f"Bearer {self.key}"}).json()["data"]

    def assert_charged(self, expected: Decimal) -> None:
        """Balance fell by exactly the expected credits (rounded up to the micro-credit)."""
        ucr = math.ceil(expected * 1_000_000)
        assert START_CREDITS - self.balance() == Decimal(ucr) / 1_000_000


@pytest.fixture(params=cases(), ids=str)
def world(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    case: VendorCase = request.param
    monkeypatch.setenv("VENDOR_TEST_KEY", "test-secret-key-123")
    with case.fake_factory() as fake:
        price = {"input_usd_per_mtok": PRICES["input"], "cached_input_usd_per_mtok": PRICES["cached"],
                 "cache_write_usd_per_mtok": PRICES["write"], "output_usd_per_mtok": PRICES["output"]}
        backup_price = {k: v * BACKUP_FACTOR for k, v in price.items()}
        provider = {"kind": case.kind, "base_url": fake.url, "api_key_env": "VENDOR_TEST_KEY", "read_timeout_s": 1.5}
        abilities = ["tools", "vision", "json", "reasoning"]
        settings = Settings(
            data_dir=tmp_path, local_model={"enabled": False}, rate_limit={"requests_per_minute": 0},
            shipped_catalog=False, default_model="main",
            resilience={"backoff_base_s": 0.01},
            providers=[{"name": "primary", **provider}, {"name": "backup", **provider}],
            models=[
                {"name": "main", "provider": "primary", "upstream_name": "vendor-model", "context_window": 100_000,
                 "abilities": abilities, **price},
                {"name": "backup", "provider": "backup", "upstream_name": "vendor-model-backup",
                 "context_window": 100_000, "abilities": abilities, **backup_price},
            ],
        )
        engine = make_engine(settings.resolved_database_url)
        upgrade(engine)
        _, key = add_user(engine, settings, f"{case.kind}@example.com", "plus")
        engine.dispose()
        with ServerThread(create_app(settings)) as server:
            client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=30)
            yield World(case, fake, server.url, key, client, settings)


def ask(world: World, **kwargs: Any) -> Any:
    params = {"model": "main", "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
              "max_tokens": 200, **kwargs}
    return world.client.chat.completions.with_raw_response.create(**params)


def test_plain_answer(world: World) -> None:
    b = world.fake.configure(text="It is sunny in Paris.", chunks=3, prompt_tokens=40, completion_tokens=7)
    raw = ask(world)
    answer = raw.parse()
    assert answer.choices[0].message.content == "It is sunny in Paris."
    usage = world.case.expected_usage(b)
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (usage.prompt_tokens, usage.completion_tokens)
    world.assert_charged(credits(usage))
    assert Decimal(raw.headers["x-switchboard-credits-charged"]) == START_CREDITS - world.balance()
    assert "test-secret-key-123" not in json.dumps(world.records())


def test_stream(world: World) -> None:
    b = world.fake.configure(text="one two three four five", chunks=5, prompt_tokens=30, completion_tokens=5)
    chunks = list(world.client.chat.completions.create(
        model="main", messages=[{"role": "user", "content": "count"}], max_tokens=50, stream=True,
        stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "one two three four five"
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 3
    usage = world.case.expected_usage(b)
    assert chunks[-1].usage.completion_tokens == usage.completion_tokens
    world.assert_charged(credits(usage))


def test_tool_call(world: World) -> None:
    b = world.fake.configure(text="", tool_calls=[FakeToolCall("call_1", "get_weather", '{"city": "Paris"}')],
                             prompt_tokens=60, completion_tokens=12)
    answer = ask(world, tools=TOOLS).parse()
    [call] = answer.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert answer.choices[0].finish_reason == "tool_calls"
    world.assert_charged(credits(world.case.expected_usage(b)))


def test_streamed_tool_call(world: World) -> None:
    b = world.fake.configure(text="", tool_calls=[FakeToolCall("call_9", "get_weather", '{"city": "Lyon"}')],
                             prompt_tokens=60, completion_tokens=12)
    chunks = list(world.client.chat.completions.create(
        model="main", messages=[{"role": "user", "content": "weather?"}], max_tokens=50, tools=TOOLS, stream=True))
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas and deltas[0].function.name == "get_weather" and deltas[0].id
    assert json.loads("".join(d.function.arguments or "" for d in deltas)) == {"city": "Lyon"}
    world.assert_charged(credits(world.case.expected_usage(b)))


def test_cached_tokens(world: World) -> None:
    b = world.fake.configure(text="cached answer", chunks=2, prompt_tokens=1000, cached_tokens=800, completion_tokens=4)
    answer = ask(world).parse()
    usage = world.case.expected_usage(b)
    assert usage.cached_prompt_tokens == 800
    assert answer.usage.prompt_tokens_details.cached_tokens == 800
    world.assert_charged(credits(usage))
    [record] = world.records()
    assert record["cached_prompt_tokens"] == 800


def test_reasoning_tokens(world: World) -> None:
    b = world.fake.configure(text="42", chunks=1, prompt_tokens=20, completion_tokens=60, reasoning_tokens=50)
    answer = ask(world).parse()
    usage = world.case.expected_usage(b)
    if world.case.reports_reasoning:
        assert answer.usage.completion_tokens_details.reasoning_tokens == 50
    world.assert_charged(credits(usage))  # reasoning is billed as output


def test_429_then_success(world: World) -> None:
    world.fake.enqueue(Behaviour(status=429, retry_after="0", error_message="slow down", error_type="rate_limit_error"))
    b = world.fake.configure(text="finally", chunks=1, prompt_tokens=10, completion_tokens=1)
    answer = ask(world).parse()
    assert answer.choices[0].message.content == "finally"
    assert len(world.fake.chat_requests()) == 2
    world.assert_charged(credits(world.case.expected_usage(b)))  # once


def test_500_then_fallback(world: World) -> None:
    world.fake.enqueue(Behaviour(status=500), Behaviour(status=500))  # both tries of "main"
    b = world.fake.configure(text="from backup", chunks=2, prompt_tokens=10, completion_tokens=2)
    raw = ask(world, model="auto")
    assert raw.parse().choices[0].message.content == "from backup"
    assert raw.headers["x-switchboard-model"] == "backup"
    world.assert_charged(credits(world.case.expected_usage(b), factor=BACKUP_FACTOR))


def test_stream_cut_midway_charges_what_was_produced(world: World) -> None:
    world.fake.configure(text="aaaa bbbb cccc dddd eeee", chunks=5, fail_after_chunks=2, prompt_tokens=10)
    received = ""
    with pytest.raises(openai.APIError):
        for chunk in world.client.chat.completions.create(
                model="main", messages=[{"role": "user", "content": "go"}], max_tokens=50, stream=True):
            if chunk.choices:
                received += chunk.choices[0].delta.content or ""
    assert received == "aaaa bbbb "
    [record] = world.records()
    assert record["outcome"] == "error"
    # No usage report arrived: the prompt and the output as produced, by the vendor's tokenizer or its
    # estimate (Provider.count_prompt, count_text_tokens).
    provider = world.provider()
    spec = world.spec()
    prompt = provider.count_prompt(spec, ChatRequest("main", [ChatMessage("user", "go")])).estimate
    produced = provider.count_text_tokens(spec, received)
    assert (record["prompt_tokens"], record["completion_tokens"]) == (prompt, produced)
    from switchboard.core.types import Usage

    world.assert_charged(credits(Usage(prompt_tokens=prompt, completion_tokens=produced)))


def test_garbage_chunk(world: World) -> None:
    world.fake.configure(text="aaaa bbbb cccc", chunks=3, garbage_after_chunks=1, prompt_tokens=10)
    with pytest.raises(openai.APIError):
        list(world.client.chat.completions.create(
            model="main", messages=[{"role": "user", "content": "go"}], max_tokens=50, stream=True))
    [record] = world.records()
    assert record["outcome"] == "error" and record["completion_tokens"] > 0
    assert START_CREDITS - world.balance() == Decimal(record["credits_charged_exact"])
    # Garbage before any output is retried; the retry's answer is charged once.
    world.fake.enqueue(Behaviour(text="x", garbage_after_chunks=0))
    b = world.fake.configure(text="clean", chunks=1, prompt_tokens=10, completion_tokens=1)
    before = world.balance()
    assert ask(world).parse().choices[0].message.content == "clean"
    assert before - world.balance() == Decimal(math.ceil(credits(world.case.expected_usage(b)) * 10**6)) / 10**6


def test_upstream_slower_than_timeout(world: World) -> None:
    world.fake.configure(first_byte_delay_s=3)  # read timeout: 1.5 s
    with pytest.raises(openai.APIStatusError) as err:
        ask(world)
    assert err.value.status_code == 504
    world.assert_charged(Decimal(0))
    [record] = world.records()
    assert record["outcome"] == "error" and record["charged_ucr"] == 0


@pytest.mark.parametrize("world", [c for c in cases() if c.kind == "anthropic"], ids=str, indirect=True)
def test_cache_writes_are_charged_at_their_own_price(world: World) -> None:
    """Only Anthropic reports cache writes apart from the rest of the prompt."""
    b = world.fake.configure(text="ok", chunks=1, prompt_tokens=1000, cached_tokens=300, cache_write_tokens=500,
                             completion_tokens=2)
    # A prompt of about the 1,000 tokens the fake reports, so that the hold covers them.
    answer = ask(world, messages=[{"role": "user", "content": "word " * 1000}]).parse()
    usage = world.case.expected_usage(b)
    assert answer.usage.prompt_tokens == 1000 and usage.cache_write_tokens == 500
    world.assert_charged(credits(usage))  # 200 input + 300 cached + 500 written + 2 output
    [record] = world.records()
    assert record["cache_write_tokens"] == 500
