"""Transport failures, the same for every HTTP adapter (they share providers.http): what is
retryable is what failed before any output; after output nothing is retried, and the answer
so far is kept. Each adapter against its own fake, on a real port."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest

from switchboard.core.errors import UpstreamError, UpstreamTimeout
from switchboard.core.types import Finish
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.gemini_upstream import FakeGemini
from tests.fakes.openai_upstream import FakeOpenAI
from tests.providers import test_anthropic, test_gemini, test_openai_compat
from tests.support.servers import free_port


@dataclass(frozen=True)
class Adapter:
    tests: ModuleType  # the adapter's own test module: MODEL, simple_request, provider_for, run, text_of, assert_no_key, KEY, KEY_ENV
    fake: type[FakeOpenAI]
    base_path: str  # what the adapter's base URL ends with


ADAPTERS = {
    "openai-compatible": Adapter(test_openai_compat, FakeOpenAI, "/v1"),
    "anthropic": Adapter(test_anthropic, FakeAnthropic, ""),
    "gemini": Adapter(test_gemini, FakeGemini, "/v1beta"),
}


@pytest.fixture(params=sorted(ADAPTERS))
def adapter(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Adapter:
    chosen = ADAPTERS[request.param]
    monkeypatch.setenv(chosen.tests.KEY_ENV, chosen.tests.KEY)
    return chosen


@pytest.fixture
def fake(adapter: Adapter) -> Iterator[Any]:
    with adapter.fake() as server:
        yield server


def test_connect_refused_is_retryable(adapter: Adapter) -> None:
    port = free_port()  # free a moment ago, and no listener now
    events, exc = adapter.tests.run(adapter.tests.provider_for(f"http://127.0.0.1:{port}{adapter.base_path}"))
    assert events == []
    assert isinstance(exc, UpstreamError) and not isinstance(exc, UpstreamTimeout)
    assert exc.retryable and exc.upstream_status is None
    adapter.tests.assert_no_key(exc)


def test_slow_first_byte_is_a_retryable_timeout(adapter: Adapter, fake: Any) -> None:
    fake.configure(first_byte_delay_s=3.0)
    events, exc = adapter.tests.run(adapter.tests.provider_for(fake.url, read_timeout_s=0.3))
    assert events == []
    assert isinstance(exc, UpstreamTimeout) and exc.retryable


def test_read_timeout_mid_stream_after_output(adapter: Adapter, fake: Any) -> None:
    fake.configure(text="abcdef", chunks=3, stall_after_chunks=1, stall_s=3.0)
    events, exc = adapter.tests.run(adapter.tests.provider_for(fake.url, read_timeout_s=0.3))
    assert adapter.tests.text_of(events) == "ab"
    assert isinstance(exc, UpstreamTimeout) and not exc.retryable


def test_cut_mid_stream_after_output_is_not_retryable(adapter: Adapter, fake: Any) -> None:
    fake.configure(text="abcdef", chunks=3, fail_after_chunks=2)
    events, exc = adapter.tests.run(adapter.tests.provider_for(fake.url))
    assert adapter.tests.text_of(events) == "abcd"
    assert isinstance(exc, UpstreamError) and not exc.retryable
    assert not any(isinstance(e, Finish) for e in events)


def test_cut_before_output_is_retryable(adapter: Adapter, fake: Any) -> None:
    fake.configure(text="abcdef", chunks=3, fail_after_chunks=0)
    events, exc = adapter.tests.run(adapter.tests.provider_for(fake.url))
    assert events == []
    assert isinstance(exc, UpstreamError) and exc.retryable


def test_garbage_chunk(adapter: Adapter, fake: Any) -> None:
    fake.configure(text="abcdef", chunks=3, garbage_after_chunks=1)
    events, exc = adapter.tests.run(adapter.tests.provider_for(fake.url))
    assert adapter.tests.text_of(events) == "ab"
    assert isinstance(exc, UpstreamError) and not exc.retryable and "malformed" in exc.message
    fake.configure(text="abcdef", chunks=3, garbage_after_chunks=0)
    events, exc = adapter.tests.run(adapter.tests.provider_for(fake.url))
    assert events == [] and isinstance(exc, UpstreamError) and exc.retryable


def test_connection_is_pooled_across_requests(adapter: Adapter, fake: Any) -> None:
    provider = adapter.tests.provider_for(fake.url)

    async def go() -> None:
        await provider.start()
        try:
            for _ in range(3):
                async for _event in provider.stream(adapter.tests.MODEL, adapter.tests.simple_request()):
                    pass
        finally:
            await provider.aclose()

    asyncio.run(go())
    assert len(fake.chat_requests()) == 3 and len({r.peer for r in fake.chat_requests()}) == 1
