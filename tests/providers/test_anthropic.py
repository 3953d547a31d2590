"""AnthropicProvider against a fake Messages API on a real port (and the fake against the SDK)."""

from __future__ import annotations

import asyncio
import collections.abc
import json
import socket
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import anthropic
import pytest
from aiohttp import web
from anthropic.types import ErrorResponse, RawMessageStreamEvent
from anthropic.types.message_create_params import MessageCreateParamsStreaming
from pydantic import TypeAdapter

from switchboard.core.catalog import ModelSpec
from switchboard.core.errors import InvalidRequest, UpstreamError, UpstreamTimeout
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
from switchboard.providers.anthropic import AnthropicProvider
from tests.fakes.anthropic_upstream import AnthropicBehaviour, FakeAnthropic, FakeToolCall
from tests.providers import support
from tests.providers.support import text_of

KEY = "sk-ant-test-SECRET-0123456789"
KEY_ENV = "SWITCHBOARD_TEST_FAKE_ANTHROPIC_KEY"

MODEL = ModelSpec(
    name="house-claude",
    provider="anthropic",
    upstream_name="claude-upstream-v1",
    context_window=200_000,
    input_usd_per_mtok=Decimal("3"),
    output_usd_per_mtok=Decimal("15"),
)

REQUEST_PARAMS = TypeAdapter(MessageCreateParamsStreaming)
STREAM_EVENT = TypeAdapter(RawMessageStreamEvent)
ERROR_RESPONSE = TypeAdapter(ErrorResponse)


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as server:
        yield server


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


def provider_for(url: str | None, **overrides: object) -> AnthropicProvider:
    return AnthropicProvider(support.provider_config({"name": "claude", "kind": "anthropic", "base_url": url, "api_key_env": KEY_ENV}, overrides))


def simple_request(**overrides: object) -> ChatRequest:
    fields: dict[str, Any] = {"model": "house-claude", "messages": [ChatMessage(role="user", content="Say hello")], "max_tokens": 100}
    fields.update(overrides)
    return ChatRequest(**fields)


def run(provider: AnthropicProvider, request: ChatRequest | None = None) -> tuple[list[StreamEvent], BaseException | None]:
    """support.run with this module's MODEL and, unless given, simple_request()."""
    return support.run(provider, MODEL, request or simple_request())


def assert_no_key(exc: BaseException) -> None:
    support.assert_no_key(exc, KEY)


def _materialise(value: Any) -> Any:
    """pydantic validates `Iterable[...]` fields lazily: walk them so every item is checked."""
    if isinstance(value, dict):
        return {k: _materialise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_materialise(v) for v in value]
    if isinstance(value, collections.abc.Iterator):
        return [_materialise(v) for v in value]
    return value


# Sampling fields the API still accepts (for models before the Opus 4.7 generation) but the
# anthropic SDK no longer types (>= 1.0): checked by hand below.
UNTYPED_SAMPLING = ("temperature", "top_p")


def assert_valid_request_body(body: Any) -> None:
    """The body is a valid MessageCreateParamsStreaming by the SDK's own types, with nothing
    dropped or coerced on the way (an unknown field would be dropped: the result would differ)."""
    typed = {k: v for k, v in body.items() if k not in UNTYPED_SAMPLING}
    assert _materialise(REQUEST_PARAMS.validate_python(typed)) == typed
    for name in UNTYPED_SAMPLING:
        if name in body:
            assert isinstance(body[name], (int, float)) and 0 <= body[name] <= 1, name
    assert not ("temperature" in body and "top_p" in body)  # Claude 4.x rejects the pair


def header(received: Any, name: str) -> str | None:
    return next((v for k, v in received.headers.items() if k.lower() == name), None)


def raw_stream(url: str, body: dict[str, Any]) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, str]]:
    """POST to the fake and split its SSE answer into (event name, parsed data), strictly."""
    req = urllib.request.Request(
        url + "/v1/messages",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", "anthropic-version": "2023-06-01", "x-api-key": "x"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        raw = resp.read().decode()
        headers = dict(resp.headers)
    assert raw.endswith("\n\n")
    events = []
    for frame in raw[:-2].split("\n\n"):
        event_line, data_line = frame.split("\n")
        assert event_line.startswith("event: ") and data_line.startswith("data: ")
        events.append((event_line[len("event: ") :], json.loads(data_line[len("data: ") :])))
    return events, headers


# -- happy path ---------------------------------------------------------------------------


def test_streams_text_and_maps_usage(fake: FakeAnthropic) -> None:
    fake.behaviour = AnthropicBehaviour(text="Hello, world! How are you?", chunks=4, prompt_tokens=20, completion_tokens=7)
    events, exc = run(provider_for(fake.url))
    assert exc is None
    assert len([e for e in events if isinstance(e, TextDelta)]) == 4
    assert text_of(events) == "Hello, world! How are you?"
    assert events[-2:] == [Finish("stop"), UsageReport(Usage(prompt_tokens=20, completion_tokens=7))]


def test_what_the_upstream_receives(fake: FakeAnthropic) -> None:
    request = ChatRequest(
        model="house-claude",
        messages=[
            ChatMessage(role="system", content="Be brief."),
            ChatMessage(role="system", content=[TextPart("Answer in English.")]),
            ChatMessage(
                role="user",
                content=[
                    TextPart("What is in these pictures?"),
                    ImagePart("data:image/png;base64,iVBORw0KGgo=", detail="low"),
                    ImagePart("https://example.com/cat.jpg"),
                ],
                name="alice",
            ),
            ChatMessage(role="user", content="Be thorough."),  # merged into the turn before
            ChatMessage(
                role="assistant",
                content="Let me look.",
                tool_calls=[ToolCall("toolu_1", "lookup", '{"q":"cat"}'), ToolCall("toolu_2", "now", "")],
            ),
            ChatMessage(role="tool", content="a cat", tool_call_id="toolu_1"),
            ChatMessage(role="tool", content="12:00", tool_call_id="toolu_2"),
            ChatMessage(role="user", content="Thanks! And?"),  # joins the tool results' turn
        ],
        max_tokens=64,
        temperature=0.5,
        top_p=0.9,
        stop=["END"],
        user="user-42",
        tools=[
            ToolSpec("lookup", "Look something up", {"type": "object", "properties": {"q": {"type": "string"}}}),
            ToolSpec("now", None, {}),
        ],
        tool_choice="required",
        response_format={"type": "json_object"},  # no Anthropic equivalent: left out
        account_id=7,
    )
    events, exc = run(provider_for(fake.url), request)
    assert exc is None and events
    received = fake.last
    assert received.method == "POST" and received.path == "/v1/messages"
    assert received.headers["x-api-key"] == KEY
    assert received.headers["anthropic-version"] == "2023-06-01"
    assert received.headers["Content-Type"] == "application/json"
    assert "Authorization" not in received.headers
    assert received.json == {
        "model": "claude-upstream-v1",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in these pictures?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
                    {"type": "text", "text": "Be thorough."},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "cat"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "a cat"},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": "12:00"},
                    {"type": "text", "text": "Thanks! And?"},
                ],
            },
        ],
        "max_tokens": 64,
        "stream": True,
        "system": "Be brief.\n\nAnswer in English.",
        "temperature": 0.5,  # top_p (0.9) left out: Claude 4.x rejects the pair
        "stop_sequences": ["END"],
        "metadata": {"user_id": "user-42"},
        "tools": [
            {
                "name": "lookup",
                "description": "Look something up",
                "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}},
            },
            {"name": "now", "input_schema": {"type": "object"}},
        ],
        "tool_choice": {"type": "any"},
    }
    assert_valid_request_body(received.json)


def test_optional_fields_left_out_and_no_key_no_header(fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV)
    _, exc = run(provider_for(fake.url), simple_request(max_tokens=None))
    assert exc is None
    assert "x-api-key" not in fake.last.headers
    assert fake.last.json == {
        "model": "claude-upstream-v1",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Say hello"}]}],
        "max_tokens": 4096,
        "stream": True,
    }
    assert_valid_request_body(fake.last.json)


def test_base_url_forms(fake: FakeAnthropic) -> None:
    assert provider_for(None).base_url == "https://api.anthropic.com"
    assert provider_for(None)._url == "https://api.anthropic.com/v1/messages"
    _, exc = run(provider_for(fake.url + "/v1/"))  # a configured .../v1 is not doubled
    assert exc is None and fake.last.path == "/v1/messages"


def test_tool_choice_temperature_and_tool_result_ordering(fake: FakeAnthropic) -> None:
    provider = provider_for(fake.url)
    for choice, expected in [
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        ({"type": "function", "function": {"name": "lookup"}}, {"type": "tool", "name": "lookup"}),
    ]:
        body = provider.build_payload(MODEL, simple_request(tool_choice=choice, tools=[ToolSpec("lookup", None, {"type": "object"})]))
        assert body["tool_choice"] == expected
        assert_valid_request_body(body)
    assert provider.build_payload(MODEL, simple_request(temperature=1.7))["temperature"] == 1.0
    assert provider.build_payload(MODEL, simple_request(temperature=0))["temperature"] == 0
    only_top_p = provider.build_payload(MODEL, simple_request(top_p=0.5))
    assert only_top_p["top_p"] == 0.5 and "temperature" not in only_top_p
    # A user text before a tool result in one turn: tool results go first, as Anthropic requires;
    # a final assistant prefill loses its trailing whitespace; empty messages are left out.
    body = provider.build_payload(
        MODEL,
        simple_request(
            messages=[
                ChatMessage(role="user", content="Go"),
                ChatMessage(role="assistant", content=None, tool_calls=[ToolCall("t1", "f", "{}")]),
                ChatMessage(role="user", content="  "),
                ChatMessage(role="user", content="note"),
                ChatMessage(role="tool", content=[TextPart("done")], tool_call_id="t1"),
                ChatMessage(role="assistant", content="Result: "),
            ]
        ),
    )
    assert body["messages"][2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "done"}]},
            {"type": "text", "text": "note"},
        ],
    }
    assert body["messages"][3] == {"role": "assistant", "content": [{"type": "text", "text": "Result:"}]}
    assert_valid_request_body(body)


def test_requests_anthropic_cannot_express_are_invalid() -> None:
    provider = provider_for(None)

    def build(**overrides: object) -> dict:  # type: ignore[type-arg]
        return provider.build_payload(MODEL, simple_request(**overrides))

    bad_args = [ChatMessage(role="user", content="hi"), ChatMessage(role="assistant", content=None, tool_calls=[ToolCall("t", "f", "{not json")])]
    with pytest.raises(InvalidRequest, match="'f'.*not valid JSON"):
        build(messages=bad_args)
    not_object = [ChatMessage(role="user", content="hi"), ChatMessage(role="assistant", content=None, tool_calls=[ToolCall("t", "f", "[1]")])]
    with pytest.raises(InvalidRequest, match="not a JSON object"):
        build(messages=not_object)
    with pytest.raises(InvalidRequest, match="base64"):
        build(messages=[ChatMessage(role="user", content=[ImagePart("data:image/png;base64,not*base64")])])
    # Percent-encoded data URLs are re-encoded as base64, which is all Anthropic takes.
    sent = build(messages=[ChatMessage(role="user", content=[ImagePart("data:image/png,raw%20bytes")])])
    assert sent["messages"][0]["content"][0]["source"]["data"] == "cmF3IGJ5dGVz"
    with pytest.raises(InvalidRequest, match="not supported"):
        build(messages=[ChatMessage(role="user", content=[ImagePart("data:image/tiff;base64,AAAA")])])
    with pytest.raises(InvalidRequest, match="http"):
        build(messages=[ChatMessage(role="user", content=[ImagePart("ftp://example.com/a.png")])])
    with pytest.raises(InvalidRequest, match="tool_call_id"):
        build(messages=[ChatMessage(role="tool", content="x")])
    with pytest.raises(InvalidRequest, match="tool_choice"):
        build(tool_choice="sometimes")
    with pytest.raises(InvalidRequest, match="at least one"):
        build(messages=[ChatMessage(role="system", content="only a system prompt")])


def test_tool_call_deltas(fake: FakeAnthropic) -> None:
    fake.behaviour = AnthropicBehaviour(
        text="Checking.",
        chunks=2,
        tool_calls=[FakeToolCall("toolu_a", "get_weather", '{"city":"Paris"}'), FakeToolCall("toolu_b", "get_time", "{}")],
    )
    events, exc = run(provider_for(fake.url))
    assert exc is None
    assert text_of(events) == "Checking."
    calls = [e for e in events if isinstance(e, ToolCallDelta)]
    # Indices count tool_use blocks only (the text block is content block 0).
    assert calls[0] == ToolCallDelta(index=0, id="toolu_a", name="get_weather", arguments="")
    assert len([c for c in calls if c.index == 0 and c.arguments]) >= 2  # streamed in pieces
    assert json.loads("".join(c.arguments for c in calls if c.index == 0)) == {"city": "Paris"}
    assert ToolCallDelta(index=1, id="toolu_b", name="get_time", arguments="") in calls
    assert "".join(c.arguments for c in calls if c.index == 1) == "{}"
    assert events[-2:] == [Finish("tool_calls"), UsageReport(Usage(prompt_tokens=11, completion_tokens=2))]


def test_cache_reads_and_writes_are_normalised(fake: FakeAnthropic) -> None:
    # The fake reports input_tokens=100-30-20=50, cache_read=30, cache_creation=20.
    fake.behaviour = AnthropicBehaviour(text="ok", prompt_tokens=100, cached_tokens=30, cache_write_tokens=20, completion_tokens=5, reasoning_tokens=3)
    events, exc = run(provider_for(fake.url))
    assert exc is None
    assert events[-1] == UsageReport(
        Usage(prompt_tokens=100, completion_tokens=5, cached_prompt_tokens=30, cache_write_tokens=20, reasoning_tokens=0)
    )


def test_finish_reasons(fake: FakeAnthropic) -> None:
    for given, expected in [("max_tokens", "length"), ("length", "length"), ("refusal", "content_filter"),
                            ("stop_sequence", "stop"), ("pause_turn", "stop"), ("something_new", "stop")]:
        fake.behaviour = AnthropicBehaviour(text="abc", finish_reason=given)
        events, exc = run(provider_for(fake.url))
        assert exc is None and Finish(expected) in events, given


def test_stop_reason_without_message_stop_is_a_complete_answer(fake: FakeAnthropic) -> None:
    fake.behaviour = AnthropicBehaviour(text="abc", send_done=False, prompt_tokens=3, completion_tokens=2)
    events, exc = run(provider_for(fake.url))
    assert exc is None
    assert events[-2:] == [Finish("stop"), UsageReport(Usage(prompt_tokens=3, completion_tokens=2))]


def test_missing_usage_still_finishes(fake: FakeAnthropic) -> None:
    fake.behaviour = AnthropicBehaviour(text="abc", send_usage=False)
    events, exc = run(provider_for(fake.url))
    assert exc is None
    assert events[-1] == Finish("stop") and not any(isinstance(e, UsageReport) for e in events)


def test_non_streaming_answer_to_a_streaming_request(fake: FakeAnthropic) -> None:
    fake.behaviour = AnthropicBehaviour(
        text="whole answer", ignore_stream=True, prompt_tokens=9, completion_tokens=2, cached_tokens=4,
        tool_calls=[FakeToolCall("toolu_z", "f", '{"x":1}')],
    )
    events, exc = run(provider_for(fake.url))
    assert exc is None
    assert events == [
        TextDelta("whole answer"),
        ToolCallDelta(index=0, id="toolu_z", name="f", arguments='{"x":1}'),
        Finish("tool_calls"),
        UsageReport(Usage(prompt_tokens=9, completion_tokens=2, cached_prompt_tokens=4)),
    ]


# -- events the fake never sends: thinking, a tool without arguments, blocks not for clients --


@asynccontextmanager
async def canned_upstream(body: bytes) -> AsyncIterator[str]:
    """A one-route server on this event loop answering every POST with `body` as SSE."""

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"content-type": "text/event-stream; charset=utf-8"})
        await resp.prepare(request)
        await resp.write(body)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/messages", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        await runner.cleanup()
        sock.close()


def frame(payload: dict[str, Any]) -> bytes:
    return f"event: {payload['type']}\ndata: {json.dumps(payload)}\n\n".encode()


def run_canned(events: list[dict[str, Any]]) -> tuple[list[StreamEvent], BaseException | None]:
    body = b"".join(frame(e) for e in events)

    async def go() -> tuple[list[StreamEvent], BaseException | None]:
        async with canned_upstream(body) as url:
            return await support.collect(provider_for(url), MODEL, simple_request())

    return asyncio.run(go())


MESSAGE_START = {
    "type": "message_start",
    "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": "claude-x",
        "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 12, "output_tokens": 1},
    },
}


def test_thinking_and_argumentless_tools() -> None:
    events, exc = run_canned([
        MESSAGE_START,
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
        {"type": "ping"},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Let me think"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "EqQBCgIYAhIM"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Sure."}},
        {"type": "content_block_stop", "index": 1},
        {"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "toolu_n", "name": "now", "input": {}}},
        {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": ""}},
        {"type": "content_block_stop", "index": 2},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None}, "usage": {"output_tokens": 40}},
        {"type": "message_stop"},
    ])
    assert exc is None
    assert events == [
        TextDelta("Sure."),
        ToolCallDelta(index=0, id="toolu_n", name="now", arguments=""),
        ToolCallDelta(index=0, arguments="{}"),  # no JSON streamed: an empty object
        Finish("tool_calls"),
        UsageReport(Usage(prompt_tokens=12, completion_tokens=40)),  # thinking is inside output_tokens
    ]


def test_message_stop_without_stop_reason_and_unknown_events() -> None:
    events, exc = run_canned([
        MESSAGE_START,
        {"type": "some_future_event", "x": 1},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": "Hi"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_stop"},
    ])
    assert exc is None
    assert events == [TextDelta("Hi"), Finish("stop"), UsageReport(Usage(prompt_tokens=12, completion_tokens=1))]


# -- failures -----------------------------------------------------------------------------


def test_429_carries_retry_after(fake: FakeAnthropic) -> None:
    fake.behaviour = AnthropicBehaviour(status=429, error_message="Number of request tokens has exceeded your per-minute rate limit", retry_after="7")
    events, exc = run(provider_for(fake.url))
    assert events == []
    assert isinstance(exc, UpstreamError)
    assert exc.retryable and exc.upstream_status == 429 and exc.retry_after_s == 7.0
    assert "rate_limit_error: Number of request tokens" in exc.message


@pytest.mark.parametrize("status,kind", [(500, "api_error"), (529, "overloaded_error")])
def test_5xx_and_529_overloaded_are_retryable(fake: FakeAnthropic, status: int, kind: str) -> None:
    fake.behaviour = AnthropicBehaviour(status=status, error_message="Overloaded")
    events, exc = run(provider_for(fake.url))
    assert events == []
    assert isinstance(exc, UpstreamError) and not isinstance(exc, UpstreamTimeout)
    assert exc.retryable and exc.upstream_status == status
    assert f"HTTP {status}: {kind}: Overloaded" in exc.message
    assert_no_key(exc)


def test_400_is_not_retryable(fake: FakeAnthropic) -> None:
    fake.behaviour = AnthropicBehaviour(status=400, error_message="messages: roles must alternate")
    _, exc = run(provider_for(fake.url))
    assert isinstance(exc, UpstreamError) and not exc.retryable and exc.upstream_status == 400
    assert "invalid_request_error: messages: roles must alternate" in exc.message


def test_key_echoed_by_upstream_is_scrubbed(fake: FakeAnthropic) -> None:
    fake.behaviour = AnthropicBehaviour(status=401, error_message=f"invalid x-api-key {KEY}")
    provider = provider_for(fake.url)
    _, exc = run(provider)
    assert isinstance(exc, UpstreamError) and exc.upstream_status == 401
    assert "authentication_error: invalid x-api-key ***" in exc.message
    assert_no_key(exc)
    assert KEY not in repr(provider) and KEY not in repr(provider.config)


def test_stream_ending_without_stop_reason_or_message_stop_is_an_error(fake: FakeAnthropic) -> None:
    fake.behaviour = AnthropicBehaviour(text="abc", chunks=1, send_finish=False, send_done=False)
    events, exc = run(provider_for(fake.url))
    assert text_of(events) == "abc"
    assert isinstance(exc, UpstreamError) and not exc.retryable and "ended early" in exc.message


def test_error_event_inside_a_200_stream(fake: FakeAnthropic) -> None:
    fake.behaviour = AnthropicBehaviour(text="abcdef", chunks=3, error_event_after_chunks=1, error_message="Overloaded")
    events, exc = run(provider_for(fake.url))
    assert text_of(events) == "ab"
    assert isinstance(exc, UpstreamError) and not exc.retryable
    assert "overloaded_error: Overloaded" in exc.message and exc.upstream_status == 529
    fake.behaviour = AnthropicBehaviour(text="abcdef", chunks=3, error_event_after_chunks=0, error_message="Overloaded")
    events, exc = run(provider_for(fake.url))
    assert events == [] and isinstance(exc, UpstreamError) and exc.retryable and exc.upstream_status == 529
    fake.behaviour = AnthropicBehaviour(text="abc", error_event_after_chunks=0, error_type="invalid_request_error", error_message="bad")
    _, exc = run(provider_for(fake.url))
    assert isinstance(exc, UpstreamError) and not exc.retryable and exc.upstream_status == 400


def test_enqueued_behaviours_apply_in_order(fake: FakeAnthropic) -> None:
    fake.enqueue(AnthropicBehaviour(status=529), AnthropicBehaviour(text="second"))
    _, first = run(provider_for(fake.url))
    second, _ = run(provider_for(fake.url))
    third, _ = run(provider_for(fake.url))
    assert isinstance(first, UpstreamError) and first.upstream_status == 529
    assert text_of(second) == "second"
    assert text_of(third) == AnthropicBehaviour().text
    assert isinstance(fake.configure(text="x", cache_write_tokens=2), AnthropicBehaviour)


# -- the fake itself: its events by the SDK's types, and as the official SDK sees it ---------


def test_fake_events_match_the_sdk_types(fake: FakeAnthropic) -> None:
    fake.behaviour = AnthropicBehaviour(
        text="Hi there.", chunks=2, prompt_tokens=30, cached_tokens=10, cache_write_tokens=5, completion_tokens=9,
        tool_calls=[FakeToolCall("toolu_1", "lookup", '{"q":"cat","n":2}')],
    )
    body = {"model": "claude-x", "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    events, headers = raw_stream(fake.url, body)
    assert headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert headers["request-id"].startswith("req_")
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "content_block_start", "ping", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop",
    ]
    for name, data in events:
        assert data["type"] == name
        if name == "ping":
            assert data == {"type": "ping"}
            continue
        STREAM_EVENT.validate_python(data)
    start = STREAM_EVENT.validate_python(events[0][1])
    assert start.message.usage.input_tokens == 15
    assert (start.message.usage.cache_read_input_tokens, start.message.usage.cache_creation_input_tokens) == (10, 5)
    final = STREAM_EVENT.validate_python(events[-2][1])
    assert final.delta.stop_reason == "tool_use" and final.usage.output_tokens == 9
    pieces = [d["delta"]["partial_json"] for n, d in events if n == "content_block_delta" and d["index"] == 1]
    assert len([p for p in pieces if p]) >= 2 and json.loads("".join(pieces)) == {"q": "cat", "n": 2}

    fake.behaviour = AnthropicBehaviour(text="abc", error_event_after_chunks=1)
    events, _ = raw_stream(fake.url, body)
    assert events[-1][0] == "error"
    error = ERROR_RESPONSE.validate_python(events[-1][1])
    assert error.error.type == "overloaded_error"


def test_fake_speaks_the_wire_format_the_sdk_parses(fake: FakeAnthropic) -> None:
    fake.behaviour = AnthropicBehaviour(text="Hello there, SDK.", chunks=3, prompt_tokens=9, completion_tokens=4, cached_tokens=2, cache_write_tokens=3)
    client = anthropic.Anthropic(base_url=fake.url, api_key="x", max_retries=0)
    messages = [{"role": "user", "content": "hi"}]
    try:
        events = list(client.messages.create(model="claude-x", max_tokens=20, messages=messages, stream=True))
        assert [e.type for e in events][0] == "message_start" and events[-1].type == "message_stop"
        assert "".join(e.delta.text for e in events if e.type == "content_block_delta") == "Hello there, SDK."
        start = events[0].message.usage
        assert (start.input_tokens, start.cache_read_input_tokens, start.cache_creation_input_tokens) == (4, 2, 3)
        assert_valid_request_body(fake.last.json)
        # (This SDK sends `Authorization: Bearer` and its own, newer anthropic-version.)
        assert header(fake.last, "anthropic-version")
        assert header(fake.last, "x-api-key") == "x" or header(fake.last, "authorization") == "Bearer x"

        with client.messages.stream(model="claude-x", max_tokens=20, messages=messages) as stream:
            assert "".join(stream.text_stream) == "Hello there, SDK."
            final = stream.get_final_message()
        assert final.stop_reason == "end_turn" and final.usage.output_tokens == 4

        whole = client.messages.create(model="claude-x", max_tokens=20, messages=messages)
        assert whole.type == "message" and whole.content[0].text == "Hello there, SDK."
        assert whole.stop_reason == "end_turn" and whole.usage.input_tokens == 4

        fake.behaviour = AnthropicBehaviour(text="", tool_calls=[FakeToolCall("toolu_z", "f", '{"x":1,"y":[true]}')])
        with client.messages.stream(model="claude-x", max_tokens=20, messages=messages) as stream:
            final = stream.get_final_message()
        assert final.stop_reason == "tool_use"
        assert [(b.type, b.id, b.name, b.input) for b in final.content] == [("tool_use", "toolu_z", "f", {"x": 1, "y": [True]})]

        fake.behaviour = AnthropicBehaviour(status=429, retry_after="1", error_message="slow down")
        with pytest.raises(anthropic.RateLimitError) as info:
            client.messages.create(model="claude-x", max_tokens=20, messages=messages)
        assert "slow down" in str(info.value) and info.value.request_id.startswith("req_")

        fake.behaviour = AnthropicBehaviour(status=529, error_message="Overloaded")
        with pytest.raises(anthropic.InternalServerError) as overloaded:
            client.messages.create(model="claude-x", max_tokens=20, messages=messages)
        assert overloaded.value.status_code == 529 and overloaded.value.body["error"]["type"] == "overloaded_error"

        fake.behaviour = AnthropicBehaviour(text="abc", error_event_after_chunks=1, error_message="Overloaded")
        with pytest.raises(anthropic.APIStatusError, match="overloaded_error"):
            list(client.messages.create(model="claude-x", max_tokens=20, messages=messages, stream=True))

        assert [m.id for m in client.models.list()] == ["claude-fake-1"]
    finally:
        client.close()
