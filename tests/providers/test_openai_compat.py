"""OpenAICompatProvider against a fake upstream on a real port (and the fake against the SDK)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest

from switchboard.core.catalog import ModelSpec
from switchboard.core.errors import UpstreamError, UpstreamTimeout
from switchboard.core.types import (
    ChatMessage,
    ChatRequest,
    Finish,
    ImagePart,
    StreamEvent,
    TextDelta,
    TextPart,
    ToolCall,
    ToolCallDelta,
    ToolSpec,
    Usage,
    UsageReport,
)
from switchboard.providers.http import SSEDecoder
from switchboard.providers.openai_compat import OpenAICompatProvider
from tests.fakes.openai_upstream import Behaviour, FakeOpenAI, FakeToolCall
from tests.providers import support
from tests.providers.support import text_of

KEY = "sk-test-SECRET-0123456789"
KEY_ENV = "SWITCHBOARD_TEST_FAKE_KEY"

MODEL = ModelSpec(
    name="house-model",
    provider="fake",
    upstream_name="upstream-model-v1",
    context_window=8192,
    input_usd_per_mtok=Decimal("1"),
    output_usd_per_mtok=Decimal("2"),
)


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


def provider_for(url: str, **overrides: object) -> OpenAICompatProvider:
    return OpenAICompatProvider(support.provider_config({"name": "fake", "kind": "openai-compatible", "base_url": url, "api_key_env": KEY_ENV}, overrides))


def simple_request(**overrides: object) -> ChatRequest:
    return ChatRequest(model="house-model", messages=[ChatMessage(role="user", content="Say hello")], **overrides)  # type: ignore[arg-type]


def run(provider: OpenAICompatProvider, request: ChatRequest | None = None) -> tuple[list[StreamEvent], BaseException | None]:
    """support.run with this module's MODEL and, unless given, simple_request()."""
    return support.run(provider, MODEL, request or simple_request())


def assert_no_key(exc: BaseException) -> None:
    support.assert_no_key(exc, KEY)


# -- happy path ---------------------------------------------------------------------------


def test_streams_text_and_maps_usage(fake: FakeOpenAI) -> None:
    fake.behaviour = Behaviour(
        text="Hello, world! How are you?",
        chunks=4,
        prompt_tokens=20,
        completion_tokens=7,
        cached_tokens=8,
        reasoning_tokens=2,
    )
    events, exc = run(provider_for(fake.url))
    assert exc is None
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert len(deltas) == 4
    assert text_of(events) == "Hello, world! How are you?"
    assert events[-2:] == [
        Finish("stop"),
        UsageReport(Usage(prompt_tokens=20, completion_tokens=7, cached_prompt_tokens=8, reasoning_tokens=2)),
    ]


def test_what_the_upstream_receives(fake: FakeOpenAI) -> None:
    request = ChatRequest(
        model="house-model",
        messages=[
            ChatMessage(role="system", content="Be brief."),
            ChatMessage(
                role="user",
                content=[TextPart("What is in this picture?"), ImagePart("data:image/png;base64,AAAA", detail="low")],
                name="alice",
            ),
            ChatMessage(role="assistant", content=None, tool_calls=[ToolCall("call_1", "lookup", '{"q":"cat"}')]),
            ChatMessage(role="tool", content="a cat", tool_call_id="call_1"),
        ],
        max_tokens=64,
        temperature=0.5,
        top_p=0.9,
        stop=["\n\n"],
        user="user-42",
        tools=[ToolSpec("lookup", "Look something up", {"type": "object", "properties": {"q": {"type": "string"}}})],
        tool_choice="auto",
        response_format={"type": "json_object"},
        account_id=7,
    )
    events, exc = run(provider_for(fake.url), request)
    assert exc is None and events
    received = fake.last
    assert received.path == "/v1/chat/completions"
    assert received.headers["Authorization"] == f"Bearer {KEY}"
    assert received.headers["Content-Type"] == "application/json"
    assert received.json == {
        "model": "upstream-model-v1",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this picture?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
                ],
                "name": "alice",
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q":"cat"}'}}],
            },
            {"role": "tool", "content": "a cat", "tool_call_id": "call_1"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 64,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": ["\n\n"],
        "user": "user-42",
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "lookup",
                    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
                    "description": "Look something up",
                },
            }
        ],
        "tool_choice": "auto",
        "response_format": {"type": "json_object"},
    }


def test_optional_fields_left_out_and_no_key_no_auth(fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV)
    _, exc = run(provider_for(fake.url))
    assert exc is None
    assert "Authorization" not in fake.last.headers
    assert fake.last.json == {
        "model": "upstream-model-v1",
        "messages": [{"role": "user", "content": "Say hello"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_openai_kind_sends_max_completion_tokens(fake: FakeOpenAI) -> None:
    _, exc = run(provider_for(fake.url, kind="openai"), simple_request(max_tokens=5))
    assert exc is None
    assert fake.last.json["max_completion_tokens"] == 5 and "max_tokens" not in fake.last.json
    assert provider_for(None, kind="openai").base_url == "https://api.openai.com/v1"  # type: ignore[arg-type]


def test_tool_call_deltas(fake: FakeOpenAI) -> None:
    fake.behaviour = Behaviour(
        text="",
        tool_calls=[FakeToolCall("call_a", "get_weather", '{"city":"Paris"}'), FakeToolCall("call_b", "get_time", "{}")],
    )
    events, exc = run(provider_for(fake.url))
    assert exc is None
    calls = [e for e in events if isinstance(e, ToolCallDelta)]
    assert calls[0] == ToolCallDelta(index=0, id="call_a", name="get_weather", arguments="")
    assert "".join(c.arguments for c in calls if c.index == 0) == '{"city":"Paris"}'
    assert calls[3] == ToolCallDelta(index=1, id="call_b", name="get_time", arguments="")
    assert "".join(c.arguments for c in calls if c.index == 1) == "{}"
    assert not any(isinstance(e, TextDelta) for e in events)
    assert Finish("tool_calls") in events


def test_missing_usage_chunk_still_finishes(fake: FakeOpenAI) -> None:
    fake.behaviour = Behaviour(text="abc", send_usage=False)
    events, exc = run(provider_for(fake.url))
    assert exc is None
    assert events[-1] == Finish("stop")
    assert not any(isinstance(e, UsageReport) for e in events)


def test_unknown_finish_reason_maps_to_stop(fake: FakeOpenAI) -> None:
    fake.behaviour = Behaviour(text="abc", finish_reason="eos_token")
    events, exc = run(provider_for(fake.url))
    assert exc is None and Finish("stop") in events
    fake.behaviour = Behaviour(text="abc", finish_reason="length")
    events, _ = run(provider_for(fake.url))
    assert Finish("length") in events


def test_finish_without_done_is_a_complete_answer(fake: FakeOpenAI) -> None:
    fake.behaviour = Behaviour(text="abc", send_done=False, prompt_tokens=3)
    events, exc = run(provider_for(fake.url))
    assert exc is None
    assert Finish("stop") in events and isinstance(events[-1], UsageReport)


def test_non_streaming_answer_to_a_streaming_request(fake: FakeOpenAI) -> None:
    fake.behaviour = Behaviour(text="whole answer", ignore_stream=True, prompt_tokens=4, completion_tokens=2, cached_tokens=1)
    events, exc = run(provider_for(fake.url))
    assert exc is None
    assert events == [
        TextDelta("whole answer"),
        Finish("stop"),
        UsageReport(Usage(prompt_tokens=4, completion_tokens=2, cached_prompt_tokens=1)),
    ]


# -- failures -----------------------------------------------------------------------------


def test_500_is_retryable_with_status(fake: FakeOpenAI) -> None:
    fake.behaviour = Behaviour(status=500, error_message="The server had an error while processing your request.")
    events, exc = run(provider_for(fake.url))
    assert events == []
    assert isinstance(exc, UpstreamError) and not isinstance(exc, UpstreamTimeout)
    assert exc.retryable and exc.upstream_status == 500
    assert "The server had an error while processing your request." in exc.message
    assert_no_key(exc)


def test_429_carries_retry_after(fake: FakeOpenAI) -> None:
    fake.behaviour = Behaviour(status=429, error_type="rate_limit_error", error_message="Rate limit reached", retry_after="7")
    _, exc = run(provider_for(fake.url))
    assert isinstance(exc, UpstreamError)
    assert exc.retryable and exc.upstream_status == 429 and exc.retry_after_s == 7.0
    assert "Rate limit reached" in exc.message


def test_400_is_not_retryable(fake: FakeOpenAI) -> None:
    fake.behaviour = Behaviour(status=400, error_type="invalid_request_error", error_message="bad 'messages'")
    _, exc = run(provider_for(fake.url))
    assert isinstance(exc, UpstreamError) and not exc.retryable and exc.upstream_status == 400


def test_key_echoed_by_upstream_is_scrubbed(fake: FakeOpenAI) -> None:
    fake.behaviour = Behaviour(status=401, error_type="invalid_request_error", error_message=f"Incorrect API key provided: {KEY}.")
    provider = provider_for(fake.url)
    _, exc = run(provider)
    assert isinstance(exc, UpstreamError) and exc.upstream_status == 401
    assert "Incorrect API key provided" in exc.message
    assert_no_key(exc)
    assert KEY not in repr(provider) and KEY not in repr(provider.config)


def test_stream_ending_without_done_or_finish_is_an_error(fake: FakeOpenAI) -> None:
    fake.behaviour = Behaviour(text="abc", chunks=1, send_finish=False, send_usage=False, send_done=False)
    events, exc = run(provider_for(fake.url))
    assert text_of(events) == "abc"
    assert isinstance(exc, UpstreamError) and not exc.retryable


def test_error_event_inside_a_200_stream(fake: FakeOpenAI) -> None:
    fake.behaviour = Behaviour(text="abcdef", chunks=3, error_event_after_chunks=1, error_message="overloaded")
    events, exc = run(provider_for(fake.url))
    assert text_of(events) == "ab"
    assert isinstance(exc, UpstreamError) and not exc.retryable and "overloaded" in exc.message


def test_enqueued_behaviours_apply_in_order(fake: FakeOpenAI) -> None:
    fake.enqueue(Behaviour(status=503), Behaviour(text="second"))
    _, first = run(provider_for(fake.url))
    second, _ = run(provider_for(fake.url))
    third, _ = run(provider_for(fake.url))
    assert isinstance(first, UpstreamError) and first.upstream_status == 503
    assert text_of(second) == "second"
    assert text_of(third) == Behaviour().text


# -- SSE decoding -------------------------------------------------------------------------


def test_sse_decoder_handles_any_split() -> None:
    stream = b': keep-alive\r\n\r\ndata: {"a":1}\r\n\r\nevent: x\ndata:{"b":\ndata: 2}\n\ndata: [DONE]'
    expected = [b'{"a":1}', b'{"b":\n2}', b"[DONE]"]
    for size in range(1, len(stream) + 1):
        decoder = SSEDecoder()
        out: list[bytes] = []
        for i in range(0, len(stream), size):
            out.extend(decoder.feed(stream[i : i + size]))
        out.extend(decoder.flush())
        assert out == expected, size


# -- the fake itself, as the official SDK sees it -------------------------------------------


def test_fake_speaks_the_wire_format_the_sdk_parses(fake: FakeOpenAI) -> None:
    openai = pytest.importorskip("openai")
    fake.behaviour = Behaviour(text="Hello there, SDK.", chunks=3, prompt_tokens=9, completion_tokens=4, cached_tokens=2, reasoning_tokens=1)
    client = openai.OpenAI(base_url=fake.url, api_key="x", max_retries=0)
    try:
        chunks = list(
            client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}], stream=True, stream_options={"include_usage": True}
            )
        )
        assert all(c.object == "chat.completion.chunk" for c in chunks)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello there, SDK."
        assert chunks[0].choices[0].delta.role == "assistant"
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
        last = chunks[-1]
        assert last.choices == [] and last.usage is not None
        assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (9, 4)
        assert last.usage.prompt_tokens_details.cached_tokens == 2
        assert last.usage.completion_tokens_details.reasoning_tokens == 1

        whole = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert whole.object == "chat.completion"
        assert whole.choices[0].message.content == "Hello there, SDK." and whole.choices[0].finish_reason == "stop"
        assert whole.usage is not None and whole.usage.total_tokens == 13

        fake.behaviour = Behaviour(text="", tool_calls=[FakeToolCall("call_z", "f", '{"x":1}')])
        tool_chunks = list(client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True))
        args = "".join(
            tc.function.arguments or "" for c in tool_chunks for tc in (c.choices[0].delta.tool_calls or [])
        )
        assert args == '{"x":1}' and tool_chunks[-1].usage is None

        fake.behaviour = Behaviour(status=429, retry_after="1", error_type="rate_limit_error", error_message="slow down")
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert "slow down" in str(info.value)

        assert [m.id for m in client.models.list()] == ["fake-model"]
    finally:
        client.close()
