"""GeminiProvider against a fake Gemini API on a real port; the fake against google-genai's
own types and client."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

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
from switchboard.providers.gemini import (
    DEFAULT_BASE_URL,
    SKIP_THOUGHT_SIGNATURE,
    GeminiProvider,
    _StreamState,
    gemini_schema,
    gemini_usage,
)
from tests.fakes.gemini_upstream import THOUGHT_SIGNATURE, FakeGemini, GeminiBehaviour
from tests.providers import support
from tests.providers.support import text_of
from tests.fakes.openai_upstream import Behaviour, FakeToolCall

KEY = "AIzaSy-test-SECRET-0123456789"
KEY_ENV = "SWITCHBOARD_TEST_FAKE_GEMINI_KEY"


def spec(upstream: str = "gemini-2.5-flash") -> ModelSpec:
    return ModelSpec(
        name="house-gemini",
        provider="google",
        upstream_name=upstream,
        context_window=1_000_000,
        input_usd_per_mtok=Decimal("0.3"),
        output_usd_per_mtok=Decimal("2.5"),
    )


MODEL = spec()


@pytest.fixture
def fake() -> Iterator[FakeGemini]:
    with FakeGemini() as server:
        yield server


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


def provider_for(url: str | None, **overrides: object) -> GeminiProvider:
    return GeminiProvider(support.provider_config({"name": "google", "kind": "gemini", "base_url": url, "api_key_env": KEY_ENV}, overrides))


def simple_request(**overrides: object) -> ChatRequest:
    return ChatRequest(model="house-gemini", messages=[ChatMessage(role="user", content="Say hello")], **overrides)  # type: ignore[arg-type]


def run(provider: GeminiProvider, request: ChatRequest | None = None) -> tuple[list[StreamEvent], BaseException | None]:
    """support.run with this module's MODEL and, unless given, simple_request()."""
    return support.run(provider, MODEL, request or simple_request())


def assert_no_key(exc: BaseException) -> None:
    support.assert_no_key(exc, KEY)


def raw_stream(fake: FakeGemini, body: dict[str, Any] | None = None, model: str = "gemini-2.5-flash") -> bytes:
    req = urllib.request.Request(
        f"{fake.url}/models/{model}:streamGenerateContent?alt=sse",
        data=json.dumps(body or {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}).encode(),
        headers={"Content-Type": "application/json", "x-goog-api-key": "x"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        return resp.read()


def sse_payloads(raw: bytes) -> list[dict[str, Any]]:
    """Google frames each event as `data: <json>\\r\\n\\r\\n`; check that byte for byte."""
    assert raw.endswith(b"\r\n\r\n")
    events = raw[:-4].split(b"\r\n\r\n")
    assert all(e.startswith(b"data: ") and b"\n" not in e for e in events)
    return [json.loads(e[len(b"data: ") :]) for e in events]


# -- happy path ---------------------------------------------------------------------------


def test_streams_text_and_normalises_usage(fake: FakeGemini) -> None:
    # Gemini: promptTokenCount 20 includes cachedContentTokenCount 8; candidatesTokenCount 5
    # excludes thoughtsTokenCount 2. Ours: cached within prompt, reasoning within completion.
    fake.behaviour = Behaviour(
        text="Hello, world! How are you?", chunks=4, prompt_tokens=20, completion_tokens=7, cached_tokens=8, reasoning_tokens=2
    )
    events, exc = run(provider_for(fake.url))
    assert exc is None
    assert len([e for e in events if isinstance(e, TextDelta)]) == 4
    assert text_of(events) == "Hello, world! How are you?"
    assert events[-2:] == [
        Finish("stop"),
        UsageReport(Usage(prompt_tokens=20, completion_tokens=7, cached_prompt_tokens=8, reasoning_tokens=2)),
    ]
    last = sse_payloads(raw_stream(fake))[-1]["usageMetadata"]
    assert (last["promptTokenCount"], last["candidatesTokenCount"], last["thoughtsTokenCount"]) == (20, 5, 2)
    assert last["cachedContentTokenCount"] == 8 and last["totalTokenCount"] == 27


def test_usage_normalisation() -> None:
    raw = {
        "promptTokenCount": 1000,
        "cachedContentTokenCount": 600,
        "candidatesTokenCount": 50,
        "thoughtsTokenCount": 200,
        "toolUsePromptTokenCount": 30,
        "totalTokenCount": 1280,
    }
    usage = gemini_usage(raw)
    assert usage == Usage(prompt_tokens=1030, completion_tokens=250, cached_prompt_tokens=600, reasoning_tokens=200)
    assert usage.total_tokens == raw["totalTokenCount"]
    assert gemini_usage({"promptTokenCount": 4, "totalTokenCount": 4}) == Usage(prompt_tokens=4)


def test_what_the_upstream_receives(fake: FakeGemini) -> None:
    request = ChatRequest(
        model="house-gemini",
        messages=[
            ChatMessage(role="system", content="Be brief."),
            ChatMessage(role="system", content=[TextPart("Answer in English.")]),
            ChatMessage(
                role="user",
                content=[
                    TextPart("What is in these pictures?"),
                    ImagePart("data:image/png;base64,iVBORw0KGgo=", detail="low"),
                    ImagePart("https://example.com/pics/cat.png"),
                    ImagePart("https://example.com/pics/photo?id=3"),
                ],
                name="alice",
            ),
            ChatMessage(
                role="assistant",
                content="Let me look.",
                tool_calls=[ToolCall("call_1", "lookup", '{"q":"cat"}'), ToolCall("call_2", "lookup", '{"q": "dog", "n": 2}')],
            ),
            ChatMessage(role="tool", content="a cat", tool_call_id="call_1"),
            ChatMessage(role="tool", content='{"animal": "dog", "legs": 4}', tool_call_id="call_2"),
            ChatMessage(role="user", content="Thanks. Which is bigger?"),
        ],
        max_tokens=64,
        temperature=0.5,
        top_p=0.9,
        stop=["\n\n"],
        user="user-42",
        tools=[
            ToolSpec(
                "lookup",
                "Look something up",
                {
                    "$schema": "http://json-schema.org/draft-07/schema#",
                    "type": "object",
                    "properties": {
                        "q": {"type": "string", "description": "what to look up", "format": "uri"},
                        "n": {"type": ["integer", "null"], "minimum": 1},
                    },
                    "required": ["q"],
                    "additionalProperties": False,
                },
            ),
            ToolSpec("now", None, {"type": "object", "properties": {}}),
        ],
        tool_choice={"type": "function", "function": {"name": "lookup"}},
        response_format={"type": "json_object"},
        account_id=7,
    )
    events, exc = run(provider_for(fake.url), request)
    assert exc is None and events
    received = fake.last
    assert received.method == "POST"
    assert received.path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    assert received.query == {"alt": "sse"}  # the key never goes in the URL
    assert received.headers["x-goog-api-key"] == KEY
    assert "Authorization" not in received.headers
    assert received.headers["Content-Type"] == "application/json"
    assert KEY not in received.path and all(KEY not in v for v in received.query.values())
    body = received.json
    assert body == {
        "systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "Answer in English."}]},
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "What is in these pictures?"},
                    {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
                    {"fileData": {"mimeType": "image/png", "fileUri": "https://example.com/pics/cat.png"}},
                    {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/pics/photo?id=3"}},
                ],
            },
            {
                "role": "model",
                "parts": [
                    {"text": "Let me look."},
                    {"functionCall": {"name": "lookup", "args": {"q": "cat"}}},
                    {"functionCall": {"name": "lookup", "args": {"q": "dog", "n": 2}}},
                ],
            },
            {
                "role": "user",  # the two tool results and the next user message: one turn
                "parts": [
                    {"functionResponse": {"name": "lookup", "response": {"result": "a cat"}}},
                    {"functionResponse": {"name": "lookup", "response": {"animal": "dog", "legs": 4}}},
                    {"text": "Thanks. Which is bigger?"},
                ],
            },
        ],
        "tools": [
            {
                "functionDeclarations": [
                    {
                        "name": "lookup",
                        "description": "Look something up",
                        "parameters": {
                            "type": "OBJECT",
                            "properties": {
                                "q": {"type": "STRING", "description": "what to look up"},
                                "n": {"type": "INTEGER", "nullable": True, "minimum": 1},
                            },
                            "required": ["q"],
                        },
                    },
                    {"name": "now"},  # no parameters: Gemini rejects an OBJECT without properties
                ]
            }
        ],
        "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["lookup"]}},
        "generationConfig": {
            "maxOutputTokens": 64,
            "temperature": 0.5,
            "topP": 0.9,
            "stopSequences": ["\n\n"],
            "responseMimeType": "application/json",
        },
    }
    # Google's own (strict: extra="forbid") types accept every piece under its camelCase names.
    types.Content.model_validate(body["systemInstruction"])
    contents = [types.Content.model_validate(c) for c in body["contents"]]
    assert contents[0].parts[1].inline_data.mime_type == "image/png"  # type: ignore[union-attr,index]
    assert contents[1].parts[1].function_call.args == {"q": "cat"}  # type: ignore[union-attr,index]
    assert contents[2].parts[1].function_response.response == {"animal": "dog", "legs": 4}  # type: ignore[union-attr,index]
    tool = types.Tool.model_validate(body["tools"][0])
    assert tool.function_declarations[0].parameters.properties["n"].nullable is True  # type: ignore[index,union-attr]
    types.ToolConfig.model_validate(body["toolConfig"])
    types.GenerationConfig.model_validate(body["generationConfig"])
    types.GenerateContentConfig.model_validate(
        {**body["generationConfig"], "systemInstruction": body["systemInstruction"], "tools": body["tools"], "toolConfig": body["toolConfig"]}
    )


def test_optional_fields_left_out_and_no_key_no_header(fake: FakeGemini, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV)
    _, exc = run(provider_for(fake.url), simple_request(user="u-1", tools=None))
    assert exc is None
    assert "x-goog-api-key" not in {k.lower() for k in fake.last.headers}
    assert fake.last.json == {"contents": [{"role": "user", "parts": [{"text": "Say hello"}]}]}
    assert provider_for(None).base_url == DEFAULT_BASE_URL == "https://generativelanguage.googleapis.com/v1beta"


def test_model_paths(fake: FakeGemini) -> None:
    provider = provider_for("https://example.test/v1beta/")
    assert provider.url_for(spec("gemini-2.5-pro")) == "https://example.test/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
    assert provider.url_for(spec("tunedModels/my-tune")) == "https://example.test/v1beta/tunedModels/my-tune:streamGenerateContent?alt=sse"
    assert KEY not in repr(provider) and KEY not in repr(provider.config)


def test_tool_choice_and_response_schema_mapping() -> None:
    provider = provider_for("http://unused/v1beta")
    tools = [ToolSpec("f", "do f", {"type": "object", "properties": {"x": {"type": "number"}}})]

    def config(choice: Any) -> Any:
        return provider.build_payload(MODEL, simple_request(tools=tools, tool_choice=choice)).get("toolConfig")

    assert config("auto") == {"functionCallingConfig": {"mode": "AUTO"}}
    assert config("none") == {"functionCallingConfig": {"mode": "NONE"}}
    assert config("required") == {"functionCallingConfig": {"mode": "ANY"}}
    assert config(None) is None
    with pytest.raises(InvalidRequest):
        config("sometimes")
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}, "confidence": {"type": "number"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    body = provider.build_payload(
        MODEL, simple_request(response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema, "strict": True}})
    )
    assert body["generationConfig"] == {
        "responseMimeType": "application/json",
        "responseSchema": {
            "type": "OBJECT",
            "properties": {"answer": {"type": "STRING"}, "confidence": {"type": "NUMBER"}},
            "required": ["answer"],
        },
    }
    types.GenerationConfig.model_validate(body["generationConfig"])
    assert "generationConfig" not in provider.build_payload(MODEL, simple_request(response_format={"type": "text"}))


def test_schema_is_cut_down_to_what_gemini_accepts() -> None:
    # What pydantic writes for `class Order(BaseModel): item: Item; note: str | None; kind: Literal[...]`.
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$defs": {
            "Item": {
                "type": "object",
                "title": "Item",
                "properties": {"sku": {"type": "string", "pattern": "^[A-Z]+$"}, "qty": {"type": "integer", "format": "int32"}},
                "required": ["sku", "qty"],
                "additionalProperties": False,
            },
            "Node": {"type": "object", "properties": {"child": {"$ref": "#/$defs/Node"}}},
        },
        "type": "object",
        "title": "Order",
        "properties": {
            "item": {"$ref": "#/$defs/Item", "description": "what"},
            "items": {"type": "array", "items": {"$ref": "#/$defs/Item"}, "maxItems": 3},
            "note": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
            "kind": {"const": "retail"},
            "size": {"type": "integer", "enum": [1, 2, 3]},
            "mode": {"enum": ["a", "b", None]},
            "when": {"type": "string", "format": "date-time"},
            "site": {"type": "string", "format": "uri"},
            "tree": {"$ref": "#/$defs/Node"},
            "extra": {"type": "object", "patternProperties": {".*": {"type": "string"}}},
        },
        "required": ["item", "kind", "ghost"],
        "additionalProperties": False,
    }
    out = gemini_schema(schema)
    item = {
        "type": "OBJECT",
        "title": "Item",
        "properties": {"sku": {"type": "STRING", "pattern": "^[A-Z]+$"}, "qty": {"type": "INTEGER", "format": "int32"}},
        "required": ["sku", "qty"],
    }
    assert out == {
        "type": "OBJECT",
        "title": "Order",
        "properties": {
            "item": {**item, "description": "what"},
            "items": {"type": "ARRAY", "items": item, "maxItems": 3},
            "note": {"nullable": True, "type": "STRING", "default": None},
            "kind": {"type": "STRING", "enum": ["retail"]},
            "size": {"type": "INTEGER", "description": "One of: 1, 2, 3"},
            "mode": {"nullable": True, "type": "STRING", "enum": ["a", "b"]},
            "when": {"type": "STRING", "format": "date-time"},
            "site": {"type": "STRING"},
            "tree": {"type": "OBJECT", "properties": {"child": {"type": "OBJECT"}}},
            "extra": {"type": "OBJECT"},
        },
        "required": ["item", "kind"],
    }
    types.Schema.model_validate(out)
    assert "additionalProperties" not in json.dumps(out) and '"$' not in json.dumps(out)


def test_tool_calls_and_thought_signature_round_trip(fake: FakeGemini) -> None:
    fake.behaviour = Behaviour(
        text="", tool_calls=[FakeToolCall("ignored", "get_weather", '{"city":"Paris"}'), FakeToolCall("ignored", "get_time", "{}")]
    )
    provider = provider_for(fake.url)
    events, exc = run(provider)
    assert exc is None
    calls = [e for e in events if isinstance(e, ToolCallDelta)]
    assert [(c.index, c.name, json.loads(c.arguments)) for c in calls] == [(0, "get_weather", {"city": "Paris"}), (1, "get_time", {})]
    assert all(c.id and c.id.startswith("call_") for c in calls) and calls[0].id != calls[1].id
    assert not any(isinstance(e, TextDelta) for e in events)
    assert Finish("tool_calls") in events  # Gemini said STOP

    # The client sends the calls back: the first carries the signature Gemini gave it.
    history = [
        ChatMessage(role="user", content="Weather and time in Paris?"),
        ChatMessage(role="assistant", content=None, tool_calls=[ToolCall(c.id or "", c.name or "", c.arguments) for c in calls]),
        ChatMessage(role="tool", content="18C, cloudy", tool_call_id=calls[0].id),
        ChatMessage(role="tool", content="14:05", tool_call_id=calls[1].id),
    ]
    fake.behaviour = Behaviour(text="It is 18C and 14:05.")
    events, exc = run(provider, ChatRequest(model="house-gemini", messages=history))
    assert exc is None and text_of(events) == "It is 18C and 14:05."
    model_turn = fake.last.json["contents"][1]
    assert model_turn == {
        "role": "model",
        "parts": [
            {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": THOUGHT_SIGNATURE},
            {"functionCall": {"name": "get_time", "args": {}}},
        ],
    }
    assert fake.last.json["contents"][2]["parts"][1] == {"functionResponse": {"name": "get_time", "response": {"result": "14:05"}}}

    # Calls Gemini never made (another provider's, or from before a restart): Gemini 3 gets
    # Google's documented placeholder; Gemini 2.x gets nothing.
    foreign = [ChatMessage(role="user", content="hi"), ChatMessage(role="assistant", content=None, tool_calls=[ToolCall("toolu_1", "f", "{}")])]
    gemini3 = provider.build_payload(spec("gemini-3-pro-preview"), ChatRequest(model="m", messages=foreign))["contents"][1]["parts"][0]
    assert gemini3["thoughtSignature"] == SKIP_THOUGHT_SIGNATURE
    types.Part.model_validate(gemini3)
    gemini2 = provider.build_payload(spec("gemini-2.5-flash"), ChatRequest(model="m", messages=foreign))["contents"][1]["parts"][0]
    assert "thoughtSignature" not in gemini2


def test_bad_tool_history_is_an_invalid_request(fake: FakeGemini) -> None:
    bad_args = [ChatMessage(role="assistant", content=None, tool_calls=[ToolCall("c1", "f", "{not json")])]
    with pytest.raises(InvalidRequest):
        run(provider_for(fake.url), ChatRequest(model="m", messages=bad_args))
    not_object = [ChatMessage(role="assistant", content=None, tool_calls=[ToolCall("c1", "f", "[1, 2]")])]
    with pytest.raises(InvalidRequest):
        run(provider_for(fake.url), ChatRequest(model="m", messages=not_object))
    orphan = [ChatMessage(role="user", content="x"), ChatMessage(role="tool", content="42", tool_call_id="nope")]
    with pytest.raises(InvalidRequest):
        run(provider_for(fake.url), ChatRequest(model="m", messages=orphan))
    with pytest.raises(InvalidRequest):
        run(provider_for(fake.url), ChatRequest(model="m", messages=[ChatMessage(role="user", content=[ImagePart("data:image/png;base64,@@@")])]))
    assert fake.requests == []  # refused before any I/O


def test_finish_reasons(fake: FakeGemini) -> None:
    for gemini_reason, ours in [("length", "length"), ("SAFETY", "content_filter"), ("RECITATION", "content_filter"),
                                ("MALFORMED_FUNCTION_CALL", "error"), ("SOMETHING_NEW", "stop")]:
        fake.behaviour = Behaviour(text="abc", finish_reason=gemini_reason)
        events, exc = run(provider_for(fake.url))
        assert exc is None and Finish(ours) in events, gemini_reason


def test_thought_parts_are_not_output() -> None:
    state = _StreamState(provider_for("http://unused/v1beta"), None)
    events = state.feed(
        {
            "candidates": [
                {
                    "content": {
                        "parts": [{"text": "**Planning** I should greet.", "thought": True}, {"text": "Hi!", "thoughtSignature": "c2ln"}],
                        "role": "model",
                    },
                    "finishReason": "STOP",
                    "index": 0,
                }
            ],
            "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 1, "thoughtsTokenCount": 9, "totalTokenCount": 13},
        }
    )
    assert events == [TextDelta("Hi!")]
    assert state.finish() == [Finish("stop"), UsageReport(Usage(prompt_tokens=3, completion_tokens=10, reasoning_tokens=9))]


def test_whole_json_answer_to_a_streaming_request(fake: FakeGemini) -> None:
    # A proxy that drops alt=sse gets Google's `alt=json` form: one JSON array of the chunks.
    fake.behaviour = Behaviour(text="whole answer", chunks=2, ignore_stream=True, prompt_tokens=4, completion_tokens=2, cached_tokens=1)
    events, exc = run(provider_for(fake.url))
    assert exc is None
    assert events == [
        TextDelta("whole "),
        TextDelta("answer"),
        Finish("stop"),
        UsageReport(Usage(prompt_tokens=4, completion_tokens=2, cached_prompt_tokens=1)),
    ]


def test_timeout_after_finish_is_a_complete_answer(fake: FakeGemini) -> None:
    fake.behaviour = Behaviour(text="abc", chunks=1, stall_after_chunks=1, stall_s=3.0)
    events, exc = run(provider_for(fake.url, read_timeout_s=0.3))
    assert exc is None and text_of(events) == "abc"
    assert events[-2] == Finish("stop") and isinstance(events[-1], UsageReport)


# -- failures -----------------------------------------------------------------------------


def test_429_with_retry_info(fake: FakeGemini) -> None:
    fake.behaviour = Behaviour(status=429, retry_after="30", error_message="You exceeded your current quota.")
    events, exc = run(provider_for(fake.url))
    assert events == []
    assert isinstance(exc, UpstreamError) and not isinstance(exc, UpstreamTimeout)
    assert exc.retryable and exc.upstream_status == 429 and exc.retry_after_s == 30.0
    assert "RESOURCE_EXHAUSTED: You exceeded your current quota." in exc.message
    assert_no_key(exc)
    # A Retry-After header, where a proxy adds one, wins; no hint at all leaves it unset.
    fake.behaviour = Behaviour(status=429, retry_after="30", extra_headers={"Retry-After": "7"})
    _, exc = run(provider_for(fake.url))
    assert isinstance(exc, UpstreamError) and exc.retry_after_s == 7.0
    fake.behaviour = Behaviour(status=429)
    _, exc = run(provider_for(fake.url))
    assert isinstance(exc, UpstreamError) and exc.retryable and exc.retry_after_s is None


def test_500_is_retryable(fake: FakeGemini) -> None:
    fake.behaviour = Behaviour(status=500, error_message="An internal error has occurred.")
    events, exc = run(provider_for(fake.url))
    assert events == []
    assert isinstance(exc, UpstreamError) and exc.retryable and exc.upstream_status == 500
    assert "INTERNAL: An internal error has occurred." in exc.message
    fake.behaviour = Behaviour(status=504, error_message="Deadline expired.")
    _, exc = run(provider_for(fake.url))
    assert isinstance(exc, UpstreamTimeout) and exc.retryable


def test_400s(fake: FakeGemini) -> None:
    fake.behaviour = Behaviour(status=400, error_message="* GenerateContentRequest.contents: contents is not specified")
    _, exc = run(provider_for(fake.url))
    assert isinstance(exc, UpstreamError) and not exc.retryable and exc.upstream_status == 400
    assert "INVALID_ARGUMENT: * GenerateContentRequest.contents" in exc.message
    # A bad key is a 400 at Google, but our configuration's fault: another provider may serve it.
    fake.behaviour = Behaviour(status=400, error_message=f"API key not valid. Please pass a valid API key. ({KEY})")
    _, exc = run(provider_for(fake.url))
    assert isinstance(exc, UpstreamError) and exc.retryable and "API key not valid" in exc.message
    assert_no_key(exc)
    fake.behaviour = Behaviour(status=400, error_code="FAILED_PRECONDITION", error_message="User location is not supported for the API use.")
    _, exc = run(provider_for(fake.url))
    assert isinstance(exc, UpstreamError) and exc.retryable


def test_stream_ending_without_finish_reason(fake: FakeGemini) -> None:
    fake.behaviour = Behaviour(text="abc", chunks=1, send_finish=False)
    events, exc = run(provider_for(fake.url))
    assert text_of(events) == "abc"
    assert isinstance(exc, UpstreamError) and not exc.retryable
    assert not any(isinstance(e, (Finish, UsageReport)) for e in events)


def test_error_event_inside_a_200_stream(fake: FakeGemini) -> None:
    fake.behaviour = Behaviour(text="abcdef", chunks=3, error_event_after_chunks=1, error_message="The model is overloaded.")
    events, exc = run(provider_for(fake.url))
    assert text_of(events) == "ab"
    assert isinstance(exc, UpstreamError) and not exc.retryable
    assert "INTERNAL: The model is overloaded." in exc.message and exc.upstream_status == 500


def test_blocked_prompt_is_not_retryable(fake: FakeGemini) -> None:
    fake.behaviour = GeminiBehaviour(block_reason="PROHIBITED_CONTENT")
    events, exc = run(provider_for(fake.url))
    assert events == []
    assert isinstance(exc, UpstreamError) and not exc.retryable
    assert "blocked the prompt" in exc.message and "PROHIBITED_CONTENT" in exc.message
    # A blocked answer (rather than prompt) is a normal finish, with what was produced.
    fake.behaviour = Behaviour(text="Some", chunks=1, finish_reason="SAFETY")
    events, exc = run(provider_for(fake.url))
    assert exc is None and text_of(events) == "Some" and Finish("content_filter") in events


def test_enqueued_behaviours_apply_in_order(fake: FakeGemini) -> None:
    fake.enqueue(Behaviour(status=503, error_message="The model is overloaded."), Behaviour(text="second"))
    _, first = run(provider_for(fake.url))
    second, _ = run(provider_for(fake.url))
    third, _ = run(provider_for(fake.url))
    assert isinstance(first, UpstreamError) and first.upstream_status == 503 and "UNAVAILABLE" in first.message
    assert text_of(second) == "second"
    assert text_of(third) == Behaviour().text


# -- the fake itself, as Google's SDK sees it ------------------------------------------------


def test_every_chunk_the_fake_sends_is_a_valid_response(fake: FakeGemini) -> None:
    body_with_thoughts = {
        "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
        "generationConfig": {"thinkingConfig": {"includeThoughts": True}},
    }
    cases: list[tuple[Behaviour, dict[str, Any] | None]] = [
        (Behaviour(text="Hello <b> & 'you'", chunks=3), None),
        (Behaviour(text="", tool_calls=[FakeToolCall("x", "f", '{"a": [1, 2]}'), FakeToolCall("y", "g", "{}")]), None),
        (Behaviour(text="ok", cached_tokens=5, reasoning_tokens=3, completion_tokens=6), body_with_thoughts),
        (Behaviour(text="", send_usage=False), None),
        (Behaviour(text="cut", finish_reason="length"), None),
        (GeminiBehaviour(block_reason="SAFETY"), None),
    ]
    for behaviour, body in cases:
        fake.behaviour = behaviour
        raw = raw_stream(fake, body)
        assert b"<" not in raw and b"&" not in raw  # Google escapes them as \u003c, \u0026
        for payload in sse_payloads(raw):
            types.GenerateContentResponse.model_validate(payload)
    blocked = sse_payloads(raw_stream(fake))  # the last case's behaviour still stands
    assert len(blocked) == 1 and "promptFeedback" in blocked[0] and "candidates" not in blocked[0]
    fake.behaviour = Behaviour(text="ok", chunks=1, reasoning_tokens=3, completion_tokens=6)
    first = sse_payloads(raw_stream(fake, body_with_thoughts))[0]["candidates"][0]["content"]["parts"]
    assert first[0]["thought"] is True and first[1] == {"text": "ok"}


def test_fake_speaks_the_wire_format_the_sdk_parses(fake: FakeGemini) -> None:
    client = genai.Client(
        api_key="x",
        http_options=types.HttpOptions(base_url=fake.root, api_version="v1beta", retry_options=types.HttpRetryOptions(attempts=1)),
    )
    try:
        fake.behaviour = Behaviour(text="Hello there, SDK.", chunks=3, prompt_tokens=9, completion_tokens=4, cached_tokens=2, reasoning_tokens=1)
        chunks = list(client.models.generate_content_stream(model="gemini-2.5-flash", contents="hi"))
        assert fake.last.path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent" and fake.last.query == {"alt": "sse"}
        assert fake.last.headers["x-goog-api-key"] == "x"
        assert "".join(c.text or "" for c in chunks) == "Hello there, SDK."
        assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP  # type: ignore[index]
        usage = chunks[-1].usage_metadata
        assert usage is not None
        assert (usage.prompt_token_count, usage.candidates_token_count, usage.thoughts_token_count) == (9, 3, 1)
        assert usage.cached_content_token_count == 2 and usage.total_token_count == 13
        assert chunks[-1].model_version == "gemini-2.5-flash" and chunks[-1].response_id

        whole = client.models.generate_content(model="gemini-2.5-flash", contents="hi")
        assert fake.last.path.endswith(":generateContent")
        assert whole.text == "Hello there, SDK." and whole.candidates[0].finish_reason == types.FinishReason.STOP  # type: ignore[index]

        fake.behaviour = Behaviour(text="", tool_calls=[FakeToolCall("z", "get_weather", '{"city": "Paris"}')])
        calls = [fc for c in client.models.generate_content_stream(model="m", contents="hi") for fc in (c.function_calls or [])]
        assert [(fc.name, fc.args) for fc in calls] == [("get_weather", {"city": "Paris"})]

        fake.behaviour = Behaviour(text="Fine.", chunks=1, reasoning_tokens=5, completion_tokens=7)
        config = types.GenerateContentConfig(thinking_config=types.ThinkingConfig(include_thoughts=True))
        parts = [p for c in client.models.generate_content_stream(model="m", contents="hi", config=config) for p in c.candidates[0].content.parts]  # type: ignore[index,union-attr]
        assert [bool(p.thought) for p in parts] == [True, False] and parts[1].text == "Fine."

        fake.behaviour = Behaviour(status=429, retry_after="30", error_message="Quota exceeded.")
        with pytest.raises(genai_errors.ClientError) as info:
            client.models.generate_content(model="m", contents="hi")
        assert info.value.code == 429 and info.value.status == "RESOURCE_EXHAUSTED" and "Quota exceeded." in str(info.value)
        retry = [d for d in info.value.details["error"]["details"] if d["@type"].endswith("RetryInfo")]
        assert retry == [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "30s"}]

        fake.behaviour = GeminiBehaviour(block_reason="SAFETY")
        blocked = client.models.generate_content(model="m", contents="hi")
        assert blocked.prompt_feedback is not None and blocked.prompt_feedback.block_reason == types.BlockedReason.SAFETY
        assert not blocked.candidates

        assert [m.name for m in client.models.list()] == ["models/fake-model"]
    finally:
        client.close()


def test_unknown_paths_get_a_google_404(fake: FakeGemini) -> None:
    req = urllib.request.Request(f"{fake.url}/files", method="GET")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=5)
    assert info.value.code == 404
    assert json.loads(info.value.read())["error"]["status"] == "NOT_FOUND"
