"""Anthropic's Messages API end to end: the official `anthropic` SDK against a real server on a real
port, in front of the fake OpenAI-compatible upstream. Charged exactly like /v1/chat/completions."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import anthropic
import httpx
import pytest

from switchboard.api.anthropic_messages import error_parts, stop_reason, tool_input, usage_json
from switchboard.api.app import create_app
from switchboard.core.config import RateLimitConfig
from switchboard.core.errors import (
    ContextTooLong,
    DuplicateRequest,
    InsufficientCredits,
    ModelNotFound,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
)
from switchboard.core.types import Usage
from tests.api.conftest import Gateway, add_user, balance, credits_for, usage_records, wait_for
from tests.fakes.openai_upstream import FakeToolCall
from tests.support.servers import ServerThread

PLUS_CREDITS = 6000.0

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def client(gw: Gateway, key: str | None = None, **kw: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=key or gw.key, max_retries=0, **kw)


def post(gw: Gateway, body: Any, headers: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    h = {"x-api-key": gw.key, "content-type": "application/json", "anthropic-version": "2023-06-01"}
    kw.setdefault("timeout", 30)
    return httpx.post(gw.url + "/v1/messages", content=content, headers={**h, **(headers or {})}, **kw)


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) for each event of an Anthropic SSE body."""
    out = []
    for frame in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in frame.split("\n"))
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def assert_anthropic_error(r: httpx.Response, status: int, kind: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["type"] == "error" and body["error"]["type"] == kind and set(body["error"]) == {"type", "message"}
    return str(body["error"]["message"])


# -- answers ----------------------------------------------------------------------------------


def test_non_streaming_answer_usage_and_charge(gateway: Gateway) -> None:
    gateway.fake.configure(text="Paris is the capital.", chunks=4, prompt_tokens=20, completion_tokens=5, cached_tokens=8)
    raw = client(gateway).messages.with_raw_response.create(
        model="fake-small", max_tokens=50, system="Be brief.", stop_sequences=["END"],
        extra_body={"temperature": 0.2, "top_k": 5},  # sampling knobs older SDKs send as arguments
        metadata={"user_id": "user-42"}, messages=[{"role": "user", "content": "Capital of France?"}],
    )
    message = raw.parse()
    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    assert message.model == "fake-small"
    assert [(b.type, b.text) for b in message.content] == [("text", "Paris is the capital.")]  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    # Anthropic counts cache reads beside input_tokens, not inside it.
    u = message.usage
    assert (u.input_tokens, u.cache_read_input_tokens, u.cache_creation_input_tokens, u.output_tokens) == (12, 8, 0, 5)
    charged = credits_for(20, 5, cached=8)
    assert float(raw.headers["x-switchboard-credits-charged"]) == pytest.approx(charged)
    assert float(raw.headers["x-switchboard-credits-remaining"]) == pytest.approx(PLUS_CREDITS - charged)
    assert raw.headers["x-switchboard-model"] == "fake-small"
    assert raw.headers["request-id"] == raw.headers["x-switchboard-request-id"]
    meter = message.model_extra["switchboard"]  # type: ignore[index]
    assert meter["credits_charged"] == pytest.approx(charged) and meter["outcome"] == "ok"
    assert balance(gateway)["available_credits"] == pytest.approx(PLUS_CREDITS - charged)

    sent = gateway.fake.last.json
    assert sent["model"] == "fake-model" and sent["max_tokens"] == 50 and sent["temperature"] == 0.2
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}]
    assert sent["stop"] == ["END"] and sent["user"] == "user-42" and "top_k" not in sent

    [record] = usage_records(gateway)
    assert record["endpoint"] == "messages" and record["outcome"] == "ok" and record["stream"] is False
    assert (record["prompt_tokens"], record["cached_prompt_tokens"], record["completion_tokens"]) == (20, 8, 5)
    assert record["credits_charged"] == pytest.approx(charged)
    assert record["request_id"] == raw.headers["x-switchboard-request-id"]


def test_streaming_text_usage_and_metering(gateway: Gateway) -> None:
    gateway.fake.configure(text="one two three four", chunks=4, prompt_tokens=12, completion_tokens=4, chunk_delay_s=0.01)
    with client(gateway).messages.stream(
        model="fake-small", max_tokens=20, messages=[{"role": "user", "content": "count"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "one two three four"
    assert final.stop_reason == "end_turn" and [b.type for b in final.content] == ["text"]
    assert (final.usage.input_tokens, final.usage.output_tokens) == (12, 4)

    # The message_delta event carries Switchboard's metering, settled before it was sent.
    with client(gateway).messages.stream(
        model="fake-small", max_tokens=20, messages=[{"role": "user", "content": "count"}]
    ) as stream:
        deltas = [e for e in stream if e.type == "message_delta"]
    [delta] = deltas
    meter = delta.model_extra["switchboard"]  # type: ignore[index]
    charged = credits_for(12, 4)
    assert meter["credits_charged"] == pytest.approx(charged) and meter["outcome"] == "ok"
    assert meter["credits_remaining"] == pytest.approx(PLUS_CREDITS - 2 * charged)
    assert meter["ttft_ms"] > 0 and meter["decode_tokens_per_s"] > 0
    assert delta.usage.output_tokens == 4 and delta.delta.stop_reason == "end_turn"

    records = usage_records(gateway)
    assert [(r["endpoint"], r["stream"], r["outcome"]) for r in records] == [("messages", True, "ok")] * 2
    assert balance(gateway)["available_credits"] == pytest.approx(PLUS_CREDITS - 2 * charged)
    assert gateway.fake.last.json["stream"] is True


def test_stream_wire_format_is_anthropics_event_sequence(gateway: Gateway) -> None:
    gateway.fake.configure(text="Hi there", chunks=2, prompt_tokens=9, completion_tokens=2)
    r = post(gateway, {"model": "fake-small", "max_tokens": 10, "stream": True,
                       "messages": [{"role": "user", "content": "hello"}]})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert [name for name, _ in events] == [
        "message_start", "ping", "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_stop", "message_delta", "message_stop",
    ]
    assert all(data["type"] == name for name, data in events)
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["usage"]["output_tokens"] == 0
    assert start["usage"]["input_tokens"] > 0  # the gateway's own count, before the provider's figure
    assert events[2][1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert [d["delta"] for _, d in events[3:5]] == [{"type": "text_delta", "text": "Hi t"}, {"type": "text_delta", "text": "here"}]
    delta = events[6][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"] == {"input_tokens": 9, "output_tokens": 2, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    assert delta["switchboard"]["credits_charged"] == pytest.approx(credits_for(9, 2))


def test_history_translation_system_blocks_images_thinking(gateway: Gateway) -> None:
    gateway.fake.configure(text="A cat.", chunks=1)
    client(gateway).messages.create(
        model="fake-small", max_tokens=10,
        system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind.", "cache_control": {"type": "ephemeral"}}],
        messages=[
            {"role": "user", "content": [
                {"type": "text", "text": "What are these?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "They look like cats.", "signature": "c2ln"},
                {"type": "text", "text": "Two cats?"},
            ]},
            {"role": "user", "content": "Just one word."},
        ],
    )
    assert gateway.fake.last.json["messages"] == [
        {"role": "system", "content": "Be brief.\n\nBe kind."},
        {"role": "user", "content": [
            {"type": "text", "text": "What are these?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
        ]},
        {"role": "assistant", "content": "Two cats?"},  # the thinking block is not forwarded
        {"role": "user", "content": "Just one word."},
    ]


# -- tools ------------------------------------------------------------------------------------


def test_tool_use_round_trip(gateway: Gateway) -> None:
    c = client(gateway)
    gateway.fake.configure(text="Let me check.", chunks=2, prompt_tokens=30, completion_tokens=9,
                           tool_calls=[FakeToolCall("call_abc", "get_weather", '{"city": "Paris"}')])
    first = c.messages.with_raw_response.create(
        model="fake-small", max_tokens=100, tools=[WEATHER_TOOL], tool_choice={"type": "any"},
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    )
    message = first.parse()
    assert message.stop_reason == "tool_use"
    text, tool_use = message.content
    assert text.type == "text" and text.text == "Let me check."
    assert tool_use.type == "tool_use" and (tool_use.id, tool_use.name, tool_use.input) == ("call_abc", "get_weather", {"city": "Paris"})
    sent = gateway.fake.last.json
    assert sent["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city.", "parameters": WEATHER_TOOL["input_schema"]}}]
    assert sent["tool_choice"] == "required"
    assert float(first.headers["x-switchboard-credits-charged"]) == pytest.approx(credits_for(30, 9))

    # The client runs the tool and sends the result back, with the assistant turn as the SDK gave it.
    gateway.fake.configure(text="It is 18°C and sunny in Paris.", chunks=3, prompt_tokens=60, completion_tokens=11)
    second = c.messages.create(
        model="fake-small", max_tokens=100, tools=[WEATHER_TOOL],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": message.content},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": tool_use.id, "content": [{"type": "text", "text": "18°C, sunny"}]},
                {"type": "text", "text": "Answer in one sentence."},
            ]},
        ],
    )
    assert second.content[0].text == "It is 18°C and sunny in Paris." and second.stop_reason == "end_turn"  # type: ignore[union-attr]
    sent = gateway.fake.last.json
    assert sent["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [
            {"id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "content": "18°C, sunny", "tool_call_id": "call_abc"},
        {"role": "user", "content": "Answer in one sentence."},
    ]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    total = credits_for(30, 9) + credits_for(60, 11)
    assert balance(gateway)["available_credits"] == pytest.approx(PLUS_CREDITS - total)
    assert [r["endpoint"] for r in usage_records(gateway)] == ["messages", "messages"]


def test_streaming_tool_use(gateway: Gateway) -> None:
    gateway.fake.configure(text="Checking.", chunks=1, prompt_tokens=25, completion_tokens=7, tool_calls=[
        FakeToolCall("call_1", "get_weather", '{"city": "Oslo"}'),
        FakeToolCall("call_2", "get_weather", '{"city": "Lima"}'),
    ])
    with client(gateway).messages.stream(
        model="fake-small", max_tokens=100, tools=[WEATHER_TOOL], messages=[{"role": "user", "content": "Oslo and Lima?"}]
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert [(b.type, getattr(b, "id", None), getattr(b, "input", None)) for b in final.content] == [
        ("text", None, None), ("tool_use", "call_1", {"city": "Oslo"}), ("tool_use", "call_2", {"city": "Lima"})]
    assert final.usage.output_tokens == 7

    # On the wire: the text block closes before each tool_use block opens; arguments arrive as input_json_delta.
    r = post(gateway, {"model": "fake-small", "max_tokens": 100, "stream": True, "tools": [WEATHER_TOOL],
                       "messages": [{"role": "user", "content": "Oslo and Lima?"}]})
    blocks = [(n, d.get("index"), d.get("content_block", d.get("delta", {})).get("type"))
              for n, d in sse_events(r.text) if n.startswith("content_block")]
    assert blocks == [
        ("content_block_start", 0, "text"), ("content_block_delta", 0, "text_delta"), ("content_block_stop", 0, None),
        ("content_block_start", 1, "tool_use"), ("content_block_delta", 1, "input_json_delta"),
        ("content_block_delta", 1, "input_json_delta"), ("content_block_stop", 1, None),
        ("content_block_start", 2, "tool_use"), ("content_block_delta", 2, "input_json_delta"),
        ("content_block_delta", 2, "input_json_delta"), ("content_block_stop", 2, None),
    ]
    assert balance(gateway)["available_credits"] == pytest.approx(PLUS_CREDITS - 2 * credits_for(25, 7))


# -- auth, validation and refusals -------------------------------------------------------------


def test_auth_by_x_api_key_or_bearer(gateway: Gateway) -> None:
    gateway.fake.configure(text="ok", chunks=1)
    assert post(gateway, {"model": "fake-small", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}).status_code == 200
    bearer = httpx.post(gateway.url + "/v1/messages", headers={"Authorization": f"Bearer {gateway.key}"},
                        json={"model": "fake-small", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})
    assert bearer.status_code == 200 and bearer.json()["content"][0]["text"] == "ok"

    with pytest.raises(anthropic.AuthenticationError) as bad:
        client(gateway, key="sb-not-a-real-key").messages.create(model="fake-small", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert bad.value.status_code == 401 and "sb-not-a-real-key" not in str(bad.value)
    assert bad.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    message = assert_anthropic_error(post(gateway, {}, headers={"x-api-key": "sb-wrong-key-123"}), 401, "authentication_error")
    assert message.startswith("invalid x-api-key") and "wrong-key-123" not in message
    missing = httpx.post(gateway.url + "/v1/messages", json={})
    assert assert_anthropic_error(missing, 401, "authentication_error") == "x-api-key header is required"
    assert len(usage_records(gateway)) == 2 and len(gateway.fake.chat_requests()) == 2


def test_missing_max_tokens_is_400(gateway: Gateway) -> None:
    with pytest.raises(anthropic.BadRequestError) as err:
        client(gateway).messages.create(model="fake-small", max_tokens=anthropic.NOT_GIVEN, timeout=10,  # type: ignore[arg-type]
                                        messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 400
    assert err.value.body["error"] == {"type": "invalid_request_error", "message": "max_tokens: Field required"}  # type: ignore[index]
    assert gateway.fake.chat_requests() == []


OK_MESSAGES = [{"role": "user", "content": "x"}]


@pytest.mark.parametrize(
    "body, fragment",
    [
        (b"{not json", "not valid JSON"),
        (b"", "empty"),
        ({"model": "fake-small", "max_tokens": 5}, "messages: Field required"),
        ({"model": "fake-small", "max_tokens": 5, "messages": []}, "messages"),
        ({"model": "fake-small", "max_tokens": 0, "messages": OK_MESSAGES}, "max_tokens"),
        ({"model": "fake-small", "max_tokens": 5, "messages": OK_MESSAGES, "temperature": 1.5}, "temperature"),
        ({"model": "fake-small", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
        ({"model": "fake-small", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "text"}]}]},
         "messages.0.content.0.text: Field required"),
        ({"model": "fake-small", "max_tokens": 5, "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/tiff", "data": "AAAA"}}]}]},
         "messages.0.content.0.source.media_type"),
        ({"model": "fake-small", "max_tokens": 5, "messages": [{"role": "user", "content": [
            {"type": "tool_use", "id": "t1", "name": "f", "input": {}}]}]}, "only appear in assistant messages"),
        ({"model": "fake-small", "max_tokens": 5, "messages": [{"role": "user", "content": [
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}]}]}, "'document' are not supported"),
        ({"model": "fake-small", "max_tokens": 5, "messages": OK_MESSAGES,
          "tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tool type 'web_search_20250305' is not supported"),
        ({"model": "fake-small", "max_tokens": 5, "messages": OK_MESSAGES, "tool_choice": {"type": "any"}}, "needs tools"),
        ({"model": "fake-small", "max_tokens": 5, "messages": OK_MESSAGES, "tools": [WEATHER_TOOL],
          "tool_choice": {"type": "tool", "name": "nope"}}, "not among the tools"),
    ],
)
def test_invalid_bodies_get_400_in_anthropic_format(gateway: Gateway, body: Any, fragment: str) -> None:
    message = assert_anthropic_error(post(gateway, body), 400, "invalid_request_error")
    assert fragment in message
    assert gateway.fake.chat_requests() == []  # nothing reached the upstream


def test_unknown_model_is_404(gateway: Gateway) -> None:
    with pytest.raises(anthropic.NotFoundError) as err:
        client(gateway).messages.create(model="gpt-17", max_tokens=5, messages=OK_MESSAGES)
    assert err.value.status_code == 404 and "fake-small" in err.value.body["error"]["message"]  # type: ignore[index]
    assert err.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


def test_not_enough_credits_is_402_billing_error(gateway: Gateway) -> None:
    _, key = add_user(gateway.engine, gateway.settings, "poor@example.com", "free")  # 100 credits
    with pytest.raises(anthropic.APIStatusError) as err:
        client(gateway, key=key).messages.create(model="fake-small", max_tokens=4096,
                                                 messages=[{"role": "user", "content": "word " * 400}])
    assert err.value.status_code == 402 and isinstance(err.value, anthropic.PaymentRequiredError)
    error = err.value.body["error"]  # type: ignore[index]
    assert error["type"] == "billing_error" and "available 100," in error["message"] and "needs up to" in error["message"]
    assert gateway.fake.chat_requests() == []
    poor = httpx.get(gateway.api + "/balance", headers={"Authorization": f"Bearer {key}"}).json()
    assert (poor["available_credits"], poor["held_credits"]) == (100, 0)


def test_prompt_longer_than_context_is_400_prompt_too_long(gateway: Gateway) -> None:
    with pytest.raises(anthropic.BadRequestError) as err:
        client(gateway).messages.create(model="fake-small", max_tokens=10, messages=[{"role": "user", "content": "word " * 20_000}])
    assert err.value.body["error"]["message"].startswith("prompt is too long: ")  # type: ignore[index]
    assert balance(gateway)["held_credits"] == 0 and gateway.fake.chat_requests() == []


def test_rate_limit_is_429_with_retry_after(gateway: Gateway) -> None:
    settings = gateway.settings.model_copy(update={"rate_limit": RateLimitConfig(requests_per_minute=1, burst=1)})
    with ServerThread(create_app(settings)) as server:
        c = anthropic.Anthropic(base_url=server.url, api_key=gateway.key, max_retries=0)
        c.messages.create(model="fake-small", max_tokens=5, messages=OK_MESSAGES)
        with pytest.raises(anthropic.RateLimitError) as err:
            c.messages.create(model="fake-small", max_tokens=5, messages=OK_MESSAGES)
    assert err.value.status_code == 429 and int(err.value.response.headers["retry-after"]) >= 1
    assert err.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert len(usage_records(gateway)) == 1


def test_idempotency_key_is_never_charged_twice(gateway: Gateway) -> None:
    c = client(gateway)
    kwargs: dict[str, Any] = dict(model="fake-small", max_tokens=5, messages=OK_MESSAGES, extra_headers={"Idempotency-Key": "anthropic-1"})
    first = c.messages.with_raw_response.create(**kwargs)
    assert first.headers["x-switchboard-request-id"] == "anthropic-1"
    again = c.messages.with_raw_response.create(**kwargs)  # replayed (tests/api/test_idempotency.py)
    assert again.headers["idempotent-replayed"] == "true" and again.parse().id == first.parse().id
    with pytest.raises(anthropic.UnprocessableEntityError) as err:
        c.messages.create(**{**kwargs, "max_tokens": 6})
    assert err.value.body["error"]["type"] == "invalid_request_error" and err.value.body["request_id"] == "anthropic-1"  # type: ignore[index]
    assert len(usage_records(gateway)) == 1


# -- upstream failures ------------------------------------------------------------------------


def test_upstream_failure_before_output_is_502_and_free(gateway: Gateway) -> None:
    gateway.fake.configure(status=500, error_message="upstream exploded")
    with pytest.raises(anthropic.InternalServerError) as err:
        client(gateway).messages.create(model="fake-small", max_tokens=10, messages=OK_MESSAGES)
    assert err.value.status_code == 502 and "upstream exploded" in err.value.body["error"]["message"]  # type: ignore[index]
    assert err.value.body["error"]["type"] == "api_error"  # type: ignore[index]
    # Streaming too: the first upstream event is awaited before the response starts.
    with pytest.raises(anthropic.InternalServerError) as err:
        with client(gateway).messages.stream(model="fake-small", max_tokens=10, messages=OK_MESSAGES) as stream:
            stream.get_final_message()
    assert err.value.status_code == 502
    b = balance(gateway)
    assert (b["available_credits"], b["held_credits"]) == (PLUS_CREDITS, 0)
    records = usage_records(gateway)
    assert [(r["endpoint"], r["outcome"], r["charged_ucr"]) for r in records] == [("messages", "error", 0)] * 2


def test_upstream_rate_limited_is_529_overloaded(gateway: Gateway) -> None:
    gateway.fake.configure(status=429, error_message="slow down", retry_after="0")
    with pytest.raises(anthropic.OverloadedError) as err:
        client(gateway).messages.create(model="fake-small", max_tokens=10, messages=OK_MESSAGES)
    assert err.value.status_code == 529 and err.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    assert balance(gateway)["available_credits"] == PLUS_CREDITS


def test_upstream_cut_mid_stream_sends_error_event_and_charges_what_was_produced(gateway: Gateway) -> None:
    gateway.fake.configure(text="aaaa bbbb cccc dddd eeee ffff", chunks=6, fail_after_chunks=3)
    received = ""
    with pytest.raises(anthropic.APIStatusError) as err:
        with client(gateway).messages.stream(model="fake-small", max_tokens=50, messages=OK_MESSAGES) as stream:
            for text in stream.text_stream:
                received += text
    assert received == "aaaa bbbb cccc "
    body = err.value.body
    assert body["type"] == "error" and body["error"]["type"] == "api_error"  # type: ignore[index]
    [record] = wait_for(lambda: usage_records(gateway))
    assert record["outcome"] == "error" and 0 < record["completion_tokens"] < 8
    assert record["credits_charged"] > 0
    assert body["switchboard"]["credits_charged"] == pytest.approx(record["credits_charged"])  # type: ignore[index]
    assert balance(gateway)["available_credits"] == pytest.approx(PLUS_CREDITS - record["credits_charged"])


def test_client_disconnect_mid_stream_charges_only_what_was_delivered(gateway: Gateway) -> None:
    gateway.fake.configure(text=" ".join(f"w{i:02d}" for i in range(40)), chunks=40, chunk_delay_s=0.1,
                           prompt_tokens=10, completion_tokens=40)
    body = {"model": "fake-small", "max_tokens": 100, "stream": True, "messages": OK_MESSAGES}
    delivered = 0
    with httpx.stream("POST", gateway.url + "/v1/messages", json=body, headers={"x-api-key": gateway.key}, timeout=30) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and '"text_delta"' in line:
                delivered += 1
                if delivered == 5:
                    break  # hang up
    [record] = wait_for(lambda: usage_records(gateway))
    assert record["outcome"] == "cancelled" and record["endpoint"] == "messages"
    # Far from all 40 words: counted with o200k, as an unknown server's tokenizer is estimated (~2 tokens a word).
    assert 5 <= record["completion_tokens"] <= 30
    b = balance(gateway)
    assert b["held_credits"] == 0 and b["available_credits"] == pytest.approx(PLUS_CREDITS - record["credits_charged"])


def test_client_gone_before_the_first_token_is_settled(gateway: Gateway) -> None:
    gateway.fake.configure(text="a late and slow answer", chunks=10, first_byte_delay_s=1.0, chunk_delay_s=0.2)
    body = {"model": "fake-small", "max_tokens": 10, "stream": True, "messages": OK_MESSAGES}
    with pytest.raises(httpx.ReadTimeout):
        post(gateway, body, timeout=0.3)  # hangs up while the gateway waits for the upstream
    [record] = wait_for(lambda: usage_records(gateway))
    assert record["outcome"] == "cancelled" and record["completion_tokens"] < 10
    wait_for(lambda: balance(gateway)["held_credits"] == 0)
    assert balance(gateway)["available_credits"] == pytest.approx(PLUS_CREDITS - record["credits_charged"])


# -- the async client -------------------------------------------------------------------------


def test_async_client(gateway: Gateway) -> None:
    gateway.fake.configure(text="async works", chunks=2, prompt_tokens=7, completion_tokens=2)

    async def go() -> tuple[str, str, int]:
        async with anthropic.AsyncAnthropic(base_url=gateway.url, api_key=gateway.key, max_retries=0) as aclient:
            whole = await aclient.messages.create(model="fake-small", max_tokens=10, messages=OK_MESSAGES)
            async with aclient.messages.stream(model="fake-small", max_tokens=10, messages=OK_MESSAGES) as stream:
                parts = [t async for t in stream.text_stream]
                final = await stream.get_final_message()
            return whole.content[0].text, "".join(parts), final.usage.output_tokens  # type: ignore[union-attr]

    assert asyncio.run(go()) == ("async works", "async works", 2)
    assert [r["endpoint"] for r in usage_records(gateway)] == ["messages", "messages"]
    assert balance(gateway)["available_credits"] == pytest.approx(PLUS_CREDITS - 2 * credits_for(7, 2))


# -- mapping details --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc, status, kind",
    [
        (ModelNotFound("no such model"), 404, "not_found_error"),
        (InsufficientCredits(1, 2), 402, "billing_error"),
        (ContextTooLong("too long"), 400, "invalid_request_error"),
        (RateLimited("slow", 2.2), 429, "rate_limit_error"),
        (DuplicateRequest("again"), 409, "invalid_request_error"),
        (UpstreamError("boom", upstream_status=500), 502, "api_error"),
        (UpstreamError("refused", upstream_status=400, retryable=False), 400, "invalid_request_error"),
        (UpstreamError("busy", upstream_status=429, retry_after_s=3), 529, "overloaded_error"),
        (UpstreamError("reset"), 502, "api_error"),
        (UpstreamTimeout("slow upstream"), 504, "timeout_error"),
    ],
)
def test_error_mapping(exc: Any, status: int, kind: str) -> None:
    got_status, got_kind, _, headers = error_parts(exc)
    assert (got_status, got_kind) == (status, kind)
    if status in (429, 529):
        assert int(headers["retry-after"]) >= 1


def test_usage_stop_reason_and_tool_input_mapping() -> None:
    usage = Usage(prompt_tokens=100, completion_tokens=7, cached_prompt_tokens=60, cache_write_tokens=30)
    assert usage_json(usage) == {"input_tokens": 10, "output_tokens": 7, "cache_creation_input_tokens": 30,
                                 "cache_read_input_tokens": 60}
    assert [stop_reason(f, False) for f in ("stop", "length", "content_filter", "error")] == [
        "end_turn", "max_tokens", "refusal", "end_turn"]
    assert stop_reason("tool_calls", True) == stop_reason("stop", True) == "tool_use"
    assert tool_input('{"a": 1}') == {"a": 1} and tool_input("") == {}
    assert tool_input("[1, 2]") == {"_raw_arguments": "[1, 2]"} and tool_input("{oops") == {"_raw_arguments": "{oops"}

