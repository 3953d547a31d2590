"""Adapter for Anthropic's Messages API (`POST /v1/messages`).

Always streams (`"stream": true`): the gateway serves non-streaming clients by collecting the
stream, so there is one code path. The stream is Server-Sent Events with an `event:` line and
a JSON `data:` line each; the `type` field inside every payload repeats the event name, so the
shared `SSEDecoder` (which keeps only the data) is enough. The sequence is `message_start`
(input usage), then per content block `content_block_start`, `content_block_delta`*,
`content_block_stop`, then `message_delta` (stop_reason, cumulative usage) and `message_stop`;
`ping` may come anywhere and an `error` event may replace the rest.

The canonical (OpenAI-shaped) request is mapped onto Anthropic's shape: system messages go to
the top-level `system`, tool calls become `tool_use` blocks, tool results become `tool_result`
blocks inside a user turn, and consecutive turns of one role are merged (Anthropic requires
user and assistant turns to alternate).

Error contract (see providers/base.py): failures before any output are `retryable=True`;
once a text/tool delta has been yielded they are `retryable=False`. The API key is read per
request from the environment and never put into a message, a log line or a repr.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from switchboard.core.catalog import ModelSpec
from switchboard.core.config import ProviderConfig
from switchboard.core.errors import InvalidRequest, UpstreamError, UpstreamTimeout
from switchboard.core.types import (
    ChatMessage,
    ChatRequest,
    Finish,
    FinishReason,
    ImagePart,
    StreamEvent,
    TextDelta,
    TextPart,
    ToolCallDelta,
    Usage,
    UsageReport,
)
from switchboard.providers.media import decode_data_url
from switchboard.providers.http import (
    NOT_RETRYABLE_STATUSES,
    HTTPProvider,
    SSEDecoder,
    drain,
    error_message,
    scrub,
)
from switchboard.providers.prompt_tokens import PromptCounter, anthropic_counter


DEFAULT_BASE_URL = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; the gateway normally always sets it

_FINISH_REASONS: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    # "pause_turn" (a server tool's long turn) and anything new: "stop".
}

# Anthropic's error types and the HTTP status each comes with (for `error` events mid-stream,
# which arrive inside a 200 response).
ERROR_STATUSES: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}

_IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})

_TOOL_CHOICES: dict[str, dict[str, str]] = {
    "auto": {"type": "auto"},
    "none": {"type": "none"},
    "required": {"type": "any"},
}


class AnthropicProvider(HTTPProvider):
    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config, DEFAULT_BASE_URL)
        # A configured base_url may or may not include the version segment.
        self._url = self.base_url + ("/messages" if self.base_url.endswith("/v1") else "/v1/messages")

    def prompt_counter(self, model: ModelSpec) -> PromptCounter:
        """Claude's tokenizer is not public: a generous stand-in, and its tool-use prompt."""
        return anthropic_counter()

    # -- request -------------------------------------------------------------------------

    def build_payload(self, model: ModelSpec, request: ChatRequest) -> dict[str, Any]:
        """The JSON body sent upstream (public so tests and the CLI can show it).

        Raises `InvalidRequest` for what Anthropic cannot express (a tool call whose arguments
        are not a JSON object, an image that is neither a base64 data: URL nor http(s)).
        """
        system, messages = _messages_json(request.messages)
        body: dict[str, Any] = {
            "model": model.upstream_name,
            "messages": messages,
            "max_tokens": request.max_tokens if request.max_tokens is not None else DEFAULT_MAX_TOKENS,
            "stream": True,
        }
        if system:
            body["system"] = system
        # Sampling: sent only when the client set it. Anthropic accepts temperature 0..1 (OpenAI
        # 0..2): values above 1 are sent as 1. Claude 4.x models reject temperature and top_p
        # together (HTTP 400), so when both are set only temperature goes. (The newest models
        # deprecate both; the anthropic SDK >= 1.0 no longer types them, the API still takes them.)
        if request.temperature is not None:
            body["temperature"] = min(float(request.temperature), 1.0)
        elif request.top_p is not None:
            body["top_p"] = request.top_p
        if request.stop:
            body["stop_sequences"] = list(request.stop)
        if request.user is not None:
            body["metadata"] = {"user_id": request.user}
        if request.tools:
            tools = []
            for tool in request.tools:
                schema = dict(tool.parameters) if tool.parameters else {}
                schema.setdefault("type", "object")  # Anthropic requires an object schema
                spec: dict[str, Any] = {"name": tool.name}
                if tool.description is not None:
                    spec["description"] = tool.description
                spec["input_schema"] = schema
                tools.append(spec)
            body["tools"] = tools
        if request.tool_choice is not None:
            body["tool_choice"] = _tool_choice(request.tool_choice)
        # response_format: Anthropic has no equivalent; the gateway refuses it earlier (by the
        # model's abilities), so it is left out here.
        return body

    def request_headers(self, key: str | None) -> dict[str, str]:
        headers = {
            "content-type": "application/json",
            "accept": "text/event-stream",
            "anthropic-version": ANTHROPIC_VERSION,
        }
        if key:
            headers["x-api-key"] = key
        return headers

    def error_detail(self, body: Any) -> str:
        """`{"type": "error", "error": {"type": ..., "message": ...}}` -> "type: message"."""
        if isinstance(body, dict):
            err = body.get("error")
            if isinstance(err, dict):
                kind, message = err.get("type"), err.get("message")
                if isinstance(kind, str) and isinstance(message, str):
                    return f"{kind}: {message}"
        return error_message(body)

    # -- stream --------------------------------------------------------------------------

    async def stream(self, model: ModelSpec, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        body = orjson.dumps(self.build_payload(model, request))
        key = self.config.api_key()

        # Phase 1: connect and get the status line. Nothing has been produced: retryable.
        resp = await self.open(self._url, body, self.request_headers(key))

        async with resp:
            if resp.status >= 300:
                raise await self.status_error(resp, key)
            if resp.content_type == "application/json":
                # A server that ignored `stream: true` and answered with a whole Message.
                async for event in self._from_message(resp):
                    yield event
                return

            # Phase 2: the stream. Locals, not attributes, on the per-event path.
            decoder = SSEDecoder()
            loads = orjson.loads
            yielded = False  # whether the client may have seen output (then: not retryable)
            finished = False  # a stop_reason arrived (message_delta): the answer is complete
            done = False  # message_stop arrived
            usage: dict[str, int] = {}
            tools: dict[Any, int] = {}  # content block index -> our tool-call index (0, 1, ...)
            no_args_yet: set[Any] = set()  # tool blocks (content block index) with no argument text yet
            content = resp.content
            try:
                async for chunk in content.iter_any():
                    for data in decoder.feed(chunk):
                        try:
                            obj = loads(data)
                        except orjson.JSONDecodeError:
                            raise UpstreamError(
                                f"{self.name}: malformed stream event from upstream", retryable=not yielded
                            ) from None
                        if type(obj) is not dict:
                            raise UpstreamError(f"{self.name}: unexpected stream event from upstream", retryable=not yielded)
                        kind = obj.get("type")
                        if kind == "content_block_delta":
                            delta = obj.get("delta") or {}
                            delta_kind = delta.get("type")
                            if delta_kind == "text_delta":
                                text = delta.get("text")
                                if text:
                                    yielded = True
                                    yield TextDelta(text)
                            elif delta_kind == "input_json_delta":
                                block = obj.get("index")
                                partial = delta.get("partial_json")
                                if partial and block in tools:
                                    yielded = True
                                    no_args_yet.discard(block)
                                    yield ToolCallDelta(index=tools[block], arguments=partial)
                            # thinking_delta / signature_delta / citations_delta: not client text.
                        elif kind == "content_block_start":
                            block = obj.get("content_block") or {}
                            block_kind = block.get("type")
                            if block_kind == "text":
                                text = block.get("text")
                                if text:
                                    yielded = True
                                    yield TextDelta(text)
                            elif block_kind == "tool_use":
                                index = obj.get("index")
                                tools[index] = len(tools)
                                no_args_yet.add(index)
                                yielded = True
                                yield ToolCallDelta(index=tools[index], id=block.get("id"), name=block.get("name"), arguments="")
                            # thinking / redacted_thinking / server tool blocks: not for the client.
                        elif kind == "content_block_stop":
                            index = obj.get("index")
                            if index in no_args_yet:
                                # A tool called without arguments streams no JSON at all; clients
                                # parse the assembled arguments, so give them an empty object.
                                no_args_yet.discard(index)
                                yield ToolCallDelta(index=tools[index], arguments="{}")
                        elif kind == "message_start":
                            _merge_usage(usage, (obj.get("message") or {}).get("usage"))
                        elif kind == "message_delta":
                            _merge_usage(usage, obj.get("usage"))  # cumulative figures: the last wins
                            reason = (obj.get("delta") or {}).get("stop_reason")
                            if reason and not finished:
                                finished = True
                                yield Finish(_FINISH_REASONS.get(reason, "stop"))
                        elif kind == "message_stop":
                            done = True
                            break
                        elif kind == "error":
                            raise self._event_error(obj, key, yielded)
                        # ping, and event types added later: nothing to do.
                    if done:
                        break
                if not done:
                    for data in decoder.flush():
                        try:
                            obj = loads(data)
                        except orjson.JSONDecodeError:
                            continue
                        if type(obj) is dict and obj.get("type") == "message_stop":
                            done = True
            except (TimeoutError, aiohttp.ClientError) as exc:
                if not finished:
                    self.raise_mid_stream(exc, yielded)
                # The answer is complete; only message_stop went missing.

            if not finished:
                if not done:
                    raise UpstreamError(f"{self.name}: upstream stream ended early", retryable=not yielded)
                yield Finish("stop")  # message_stop without a stop_reason: sloppy but complete
            if "input_tokens" in usage:
                yield UsageReport(_usage(usage))
            if done and not content.at_eof():
                await drain(content)

    def _event_error(self, obj: dict[str, Any], key: str | None, yielded: bool) -> UpstreamError:
        """An `error` event inside a 200 stream, e.g. `overloaded_error`."""
        err = obj.get("error")
        kind = err.get("type") if isinstance(err, dict) else None
        status = ERROR_STATUSES.get(kind) if isinstance(kind, str) else None
        message = f"{self.name}: upstream error mid-stream: {scrub(self.error_detail(obj), key)}"
        if status == 504:
            return UpstreamTimeout(message, retryable=not yielded, upstream_status=status)
        return UpstreamError(
            message,
            retryable=not yielded and status not in NOT_RETRYABLE_STATUSES,
            upstream_status=status,
        )

    async def _from_message(self, resp: aiohttp.ClientResponse) -> AsyncIterator[StreamEvent]:
        try:
            obj = orjson.loads(await resp.read())
            blocks = obj["content"]
            if not isinstance(blocks, list):
                raise TypeError
        except (orjson.JSONDecodeError, KeyError, TypeError, aiohttp.ClientError, TimeoutError):
            raise UpstreamError(f"{self.name}: malformed message from upstream") from None
        tool_index = 0
        for block in blocks:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text" and block.get("text"):
                yield TextDelta(block["text"])
            elif block.get("type") == "tool_use":
                arguments = orjson.dumps(block.get("input") or {}).decode()
                yield ToolCallDelta(index=tool_index, id=block.get("id"), name=block.get("name"), arguments=arguments)
                tool_index += 1
        yield Finish(_FINISH_REASONS.get(obj.get("stop_reason") or "end_turn", "stop"))
        usage: dict[str, int] = {}
        _merge_usage(usage, obj.get("usage"))
        if "input_tokens" in usage:
            yield UsageReport(_usage(usage))


# -- request mapping -----------------------------------------------------------------------


def _messages_json(messages: list[ChatMessage]) -> tuple[str, list[dict[str, Any]]]:
    """The top-level `system` text and the alternating user/assistant turns."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "system":
            text = message.text()
            if text.strip():
                system.append(text)
            continue
        if message.role == "tool":
            role = "user"
            blocks = [_tool_result(message)]
        else:
            role = message.role
            blocks = _content_blocks(message.content)
            if message.role == "assistant" and message.tool_calls:
                for call in message.tool_calls:
                    blocks.append({"type": "tool_use", "id": call.id, "name": call.name, "input": _tool_input(call.name, call.arguments)})
        if not blocks:
            continue  # Anthropic rejects empty turns; an empty message says nothing anyway
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)  # Anthropic requires alternating roles
        else:
            turns.append({"role": role, "content": blocks})
    if not turns:
        raise InvalidRequest("Anthropic models need at least one non-empty user or assistant message.", param="messages")
    for turn in turns:
        if turn["role"] == "user":
            # Tool results must come first in their user turn, before any text.
            turn["content"].sort(key=lambda block: block["type"] != "tool_result")
    last = turns[-1]
    if last["role"] == "assistant":
        # A final (prefilled) assistant turn may not end in whitespace.
        tail = last["content"][-1]
        if tail["type"] == "text":
            tail["text"] = tail["text"].rstrip()  # never empty: whitespace-only blocks are left out
    return "\n\n".join(system), turns


def _content_blocks(content: str | list[Any] | None) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        # Anthropic rejects empty and whitespace-only text blocks.
        return [{"type": "text", "text": content}] if content.strip() else []
    blocks: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, TextPart):
            if part.text.strip():
                blocks.append({"type": "text", "text": part.text})
        elif isinstance(part, ImagePart):
            blocks.append(_image_block(part.url))
    return blocks


def _image_block(url: str) -> dict[str, Any]:
    """data: URLs become base64 sources, http(s) URLs url sources. (`detail` has no equivalent.)"""
    if url.startswith("data:"):
        image = decode_data_url(url)
        if image.media_type not in _IMAGE_MEDIA_TYPES:
            raise InvalidRequest(
                f"Image type {image.media_type!r} is not supported by this model; "
                f"use one of: {', '.join(sorted(_IMAGE_MEDIA_TYPES))}."
            )
        return {"type": "image", "source": {"type": "base64", "media_type": image.media_type, "data": image.data}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise InvalidRequest("Image URLs must be http(s) URLs or base64 data: URLs.")


def _tool_input(name: str, arguments: str) -> dict[str, Any]:
    """Anthropic takes a tool call's input as a JSON object, not as JSON text."""
    if not arguments.strip():
        return {}  # some clients send "" for a call without arguments
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        raise InvalidRequest(
            f"The arguments of the earlier call to tool {name!r} are not valid JSON; "
            "this model needs them as a JSON object.",
            param="messages",
        ) from None
    if not isinstance(value, dict):
        raise InvalidRequest(
            f"The arguments of the earlier call to tool {name!r} are not a JSON object; "
            "this model needs them as a JSON object.",
            param="messages",
        )
    return value


def _tool_result(message: ChatMessage) -> dict[str, Any]:
    if not message.tool_call_id:
        raise InvalidRequest("A message with role 'tool' needs its tool_call_id.", param="messages")
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.tool_call_id}
    content = message.content
    if isinstance(content, list):
        parts = _content_blocks(content)
        if parts:
            block["content"] = parts
    elif content and content.strip():
        block["content"] = content
    return block


def _tool_choice(choice: Any) -> dict[str, Any]:
    if isinstance(choice, str) and choice in _TOOL_CHOICES:
        return dict(_TOOL_CHOICES[choice])
    if isinstance(choice, dict) and choice.get("type") == "function":
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if isinstance(name, str) and name:
            return {"type": "tool", "name": name}
    raise InvalidRequest(
        "tool_choice must be 'auto', 'none', 'required' or {\"type\": \"function\", \"function\": {\"name\": ...}}.",
        param="tool_choice",
    )


# -- usage ---------------------------------------------------------------------------------

_USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def _merge_usage(into: dict[str, int], raw: Any) -> None:
    if not isinstance(raw, dict):
        return
    for name in _USAGE_FIELDS:
        value = raw.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            into[name] = value


def _usage(raw: dict[str, int]) -> Usage:
    """Anthropic counts cache reads and writes apart from `input_tokens`; ours are subsets of
    the prompt. Anthropic does not split thinking out of `output_tokens`, so reasoning stays 0
    (the thinking tokens are inside completion_tokens, which is what is billed)."""
    fresh = raw.get("input_tokens", 0)
    read = raw.get("cache_read_input_tokens", 0)
    write = raw.get("cache_creation_input_tokens", 0)
    return Usage(
        prompt_tokens=fresh + read + write,
        completion_tokens=raw.get("output_tokens", 0),
        cached_prompt_tokens=read,
        cache_write_tokens=write,
        reasoning_tokens=0,
    )
