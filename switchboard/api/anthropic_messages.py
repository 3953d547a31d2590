"""POST /v1/messages: Anthropic's Messages API, so that clients built on the `anthropic` SDK can
use Switchboard. The request is translated to the same ChatRequest and runs through the same
metered path as /v1/chat/completions (hold, provider with fallbacks, settle, usage record with
endpoint "messages"); only the wire format differs.

Every error this endpoint returns is in Anthropic's shape,
`{"type": "error", "error": {"type": ..., "message": ...}, "request_id": ...}`, rendered here
rather than by the app's (OpenAI-format) exception handlers.

Streaming follows Anthropic's event sequence: message_start, ping, then per content block
content_block_start / content_block_delta (text_delta or input_json_delta) / content_block_stop,
then message_delta (stop reason, final usage, and Switchboard's metering) and message_stop.
The first upstream event is awaited before the response starts, so a failure before any output
is a plain HTTP error (nothing charged) rather than an error event inside a 200 stream.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from switchboard.accounts.keys import KeyCache, Principal
from switchboard.api.auth import parse_bearer, principal_for
from switchboard.api.anthropic_schemas import parse_messages_body
from switchboard.api.idempotency import Attempt, idempotency_key_of
from switchboard.api.openai_format import metering_headers, metering_json
from switchboard.api.state import AppState
from switchboard.core.errors import (
    AuthenticationFailed,
    ContextTooLong,
    ServiceUnavailable,
    SwitchboardError,
    UpstreamError,
    UpstreamTimeout,
    retry_after_header,
)
from switchboard.core.ids import new_id
from switchboard.core.types import StreamEvent, TextDelta, ToolCallDelta, Usage
from switchboard.inference.metered import MeteredCall, Metering
from switchboard.providers.anthropic import ERROR_STATUSES
from switchboard.providers.http import NOT_RETRYABLE_STATUSES

log = logging.getLogger(__name__)

# Anthropic's error type for each status it documents (the adapter's table, read backwards).
_ERROR_TYPES: dict[int, str] = {status: kind for kind, status in ERROR_STATUSES.items()}
# Upstream statuses that mean "the provider is busy": Anthropic's 529 overloaded_error.
_OVERLOADED_UPSTREAM = frozenset({429, 503, 529})


# -- errors -----------------------------------------------------------------------------------


def error_parts(exc: SwitchboardError) -> tuple[int, str, str, dict[str, str]]:
    """(status, Anthropic error type, message, extra headers) for a Switchboard error."""
    headers = dict(exc.headers())  # Retry-After of a rate limit or an outage
    status, message = exc.status, exc.message
    if isinstance(exc, ContextTooLong):
        # Anthropic answers an over-long prompt with a 400 whose message starts "prompt is too
        # long"; clients (Claude Code's auto-compaction among them) look for exactly that.
        return 400, "invalid_request_error", f"prompt is too long: {message}", headers
    if isinstance(exc, ServiceUnavailable):  # every model that could serve it is unavailable
        return 503, "overloaded_error", message, headers
    if isinstance(exc, UpstreamTimeout):
        status = 504
    elif isinstance(exc, UpstreamError):
        if exc.upstream_status in _OVERLOADED_UPSTREAM:
            status = 529
            if exc.retry_after_s is not None:
                headers["retry-after"] = retry_after_header(exc.retry_after_s)
        elif exc.upstream_status in NOT_RETRYABLE_STATUSES:  # the request itself was refused
            status = 400
        else:
            status = 502
    kind = _ERROR_TYPES.get(status) or ("invalid_request_error" if status < 500 else "api_error")
    return status, kind, message, headers


def error_json(kind: str, message: str, request_id: str | None, **extra: Any) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id, **extra}


def error_response(exc: SwitchboardError, request_id: str | None) -> Response:
    status, kind, message, headers = error_parts(exc)
    if request_id:
        headers["request-id"] = request_id
    return Response(
        orjson.dumps(error_json(kind, message, request_id)), status_code=status,
        media_type="application/json", headers=headers,
    )


# -- auth -------------------------------------------------------------------------------------


def api_key_of(request: Request) -> tuple[str, str]:
    """(key, where it came from): `x-api-key` (Anthropic's header) or `Authorization: Bearer`."""
    key = request.headers.get("x-api-key", "").strip()
    if key:
        return key, "x-api-key"
    header = request.headers.get("authorization")
    if not header:
        raise AuthenticationFailed("x-api-key header is required")
    token = parse_bearer(header)
    if token is None:
        raise AuthenticationFailed("Malformed Authorization header; expected 'Bearer YOUR_KEY' (or send x-api-key).")
    return token, "bearer token"


async def authenticate(request: Request, keys: KeyCache) -> Principal:
    key, source = api_key_of(request)
    principal = await principal_for(keys, key)
    if principal is None:
        raise AuthenticationFailed(f"invalid {source}: {key[:6]}****")  # never echo the whole key
    return principal


# -- the Message object ----------------------------------------------------------------------


def usage_json(usage: Usage) -> dict[str, int]:
    """Anthropic's usage: input_tokens excludes cache reads and writes (counted beside it)."""
    cached = min(usage.cached_prompt_tokens, usage.prompt_tokens)
    writes = min(usage.cache_write_tokens, usage.prompt_tokens - cached)
    return {
        "input_tokens": usage.prompt_tokens - cached - writes,
        "output_tokens": usage.completion_tokens,
        "cache_creation_input_tokens": writes,
        "cache_read_input_tokens": cached,
    }


def stop_reason(finish_reason: str, used_tools: bool) -> str:
    """OpenAI-style finish reasons as Anthropic stop reasons. An upstream reports a stop sequence
    as a plain "stop", so `stop_sequence` cannot be told apart and is always end_turn."""
    if finish_reason == "length":
        return "max_tokens"
    if used_tools:
        return "tool_use"
    if finish_reason == "content_filter":
        return "refusal"
    return "end_turn"


def tool_input(arguments: str) -> dict[str, Any]:
    """A tool call's JSON arguments as the `input` object; text that is not a JSON object is
    kept (under `_raw_arguments`) rather than dropped."""
    if not arguments.strip():
        return {}
    try:
        value = json.loads(arguments)
    except ValueError:
        value = None
    return value if isinstance(value, dict) else {"_raw_arguments": arguments}


def message_json(
    message_id: str, text: str, tool_calls: list[dict[str, Any]], finish_reason: str, m: Metering
) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if text or not tool_calls:
        content.append({"type": "text", "text": text})
    for call in tool_calls:
        content.append({
            "type": "tool_use", "id": call["id"] or "toolu_" + new_id(), "name": call["name"],
            "input": tool_input(call["arguments"]),
        })
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": m.model,
        "content": content,
        "stop_reason": stop_reason(finish_reason, bool(tool_calls)),
        "stop_sequence": None,
        "usage": usage_json(m.usage),
        "switchboard": metering_json(m),
    }


# -- the handler ------------------------------------------------------------------------------


async def messages(request: Request) -> Response:
    request_id: str | None = None
    attempt: Attempt | None = None
    state: AppState = request.app.state.sb
    try:
        principal = await authenticate(request, state.keys)
        state.limits.check(principal.user_id)
        raw = await request.body()
        body = parse_messages_body(raw)
        key = idempotency_key_of(request)
        if key is None:
            request_id = new_id()
        else:
            request_id = key
            claimed = await state.idempotency.claim(principal.user_id, key, "messages", raw, body.stream)
            if isinstance(claimed, Response):  # the stored answer of the first request with this key
                return claimed
            attempt, request_id = claimed, claimed.request_id
        call = await state.runtime.inference.begin(
            body.to_request(), user_id=principal.user_id, request_id=request_id, endpoint="messages",
            stream=body.stream, api_key_id=principal.api_key_id, plan=principal.plan,
        )
        message_id = "msg_" + new_id()
        if not body.stream:
            text, tool_calls, metering = await call.run_to_end()
            response = Response(
                orjson.dumps(message_json(message_id, text, tool_calls, call.finish_reason, metering)),
                media_type="application/json",
                headers={**metering_headers(metering), "request-id": request_id},
            )
            if attempt is not None:
                await state.idempotency.complete(attempt, response)
            return response
        events = call.events()
        first = await _first_event(call, events)
        stream = _stream(call, events, first, message_id)
        if attempt is not None:
            stream = state.idempotency.then_done(stream, attempt, call)
        # Start the generator here (it yields message_start at once): a started generator is
        # closed, and so settles, even if the response is abandoned before it is iterated.
        head = await anext(stream)
        return StreamingResponse(
            _prepend(head, stream),
            media_type="text/event-stream",
            headers={"x-switchboard-model": call.model.name, "x-switchboard-request-id": request_id,
                     "request-id": request_id, "cache-control": "no-cache", "x-accel-buffering": "no"},
        )
    except SwitchboardError as exc:
        if attempt is not None:
            state.idempotency.release(attempt)  # nothing was answered: the key may be retried
        return error_response(exc, request_id)
    except BaseException as exc:
        if attempt is not None:
            state.idempotency.release(attempt)
        if not isinstance(exc, Exception) or isinstance(exc, ClientDisconnect):  # gone: one line (api.access_log)
            raise
        log.exception("unhandled error in /v1/messages")
        return Response(
            orjson.dumps(error_json("api_error", "The server had an error while processing your request.", request_id)),
            status_code=500, media_type="application/json",
        )


async def _first_event(call: MeteredCall, events: AsyncIterator[StreamEvent]) -> StreamEvent | None:
    """Wait for the first event so that a failure before any output gets a real HTTP status."""
    try:
        return await anext(events, None)
    except SwitchboardError as exc:
        await call.settle("error", exc.message)  # nothing was produced: charges nothing
        raise
    except BaseException:
        call.settle_in_background("cancelled")
        raise


async def _prepend(head: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield head
    async for chunk in rest:
        yield chunk


def sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class _Blocks:
    """Turns the call's text and tool-call deltas into Anthropic content-block events: one text
    block while text flows, a tool_use block per tool call (its arguments as input_json_delta)."""

    __slots__ = ("count", "open_kind", "open_tool", "used_tools")

    def __init__(self) -> None:
        self.count = 0  # blocks opened so far; the open one has index count - 1
        self.open_kind: str | None = None
        self.open_tool: int | None = None  # the upstream tool-call index of the open tool block
        self.used_tools = False

    def _start(self, block: dict[str, Any]) -> list[bytes]:
        out = self.close()
        out.append(sse("content_block_start", {"type": "content_block_start", "index": self.count, "content_block": block}))
        self.count += 1
        self.open_kind = block["type"]
        return out

    def close(self) -> list[bytes]:
        if self.open_kind is None:
            return []
        self.open_kind = self.open_tool = None
        return [sse("content_block_stop", {"type": "content_block_stop", "index": self.count - 1})]

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return sse("content_block_delta", {"type": "content_block_delta", "index": self.count - 1, "delta": delta})

    def feed(self, event: StreamEvent) -> list[bytes]:
        if isinstance(event, TextDelta):
            if not event.text:
                return []
            out = [] if self.open_kind == "text" else self._start({"type": "text", "text": ""})
            out.append(self._delta({"type": "text_delta", "text": event.text}))
            return out
        if isinstance(event, ToolCallDelta):
            out = []
            if not (self.open_kind == "tool_use" and self.open_tool == event.index):
                out = self._start({"type": "tool_use", "id": event.id or "toolu_" + new_id(),
                                   "name": event.name or "", "input": {}})
                self.open_tool = event.index
                self.used_tools = True
            if event.arguments:
                out.append(self._delta({"type": "input_json_delta", "partial_json": event.arguments}))
            return out
        return []  # Finish: the call keeps the reason; usage reports never reach here

    def finish(self) -> list[bytes]:
        """Close the open block; an answer with no content at all still gets one (empty) text block."""
        out = [] if self.count else self._start({"type": "text", "text": ""})
        return out + self.close()


async def _stream(
    call: MeteredCall, events: AsyncIterator[StreamEvent], first: StreamEvent | None, message_id: str
) -> AsyncIterator[bytes]:
    settled = False
    blocks = _Blocks()
    try:
        yield sse("message_start", {"type": "message_start", "message": {
            "id": message_id, "type": "message", "role": "assistant", "model": call.model.name, "content": [],
            "stop_reason": None, "stop_sequence": None,
            # Our own count of the prompt; message_delta carries the provider's final figures.
            "usage": {"input_tokens": call.prompt_tokens, "output_tokens": 0,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
        }})
        yield sse("ping", {"type": "ping"})
        if first is not None:
            for chunk in blocks.feed(first):
                yield chunk
            async for event in events:
                for chunk in blocks.feed(event):
                    yield chunk
        for chunk in blocks.finish():
            yield chunk
        metering = await call.settle("ok")
        settled = True
        yield sse("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason(call.finish_reason, blocks.used_tools), "stop_sequence": None},
            "usage": usage_json(metering.usage),
            "switchboard": metering_json(metering),
        })
        yield sse("message_stop", {"type": "message_stop"})
    except SwitchboardError as exc:
        # Headers are gone: the error travels in the stream, as Anthropic does, after charging
        # what was produced.
        metering = await call.settle("error", exc.message)
        settled = True
        _, kind, message, _ = error_parts(exc)
        yield sse("error", error_json(kind, message, call.request_id, switchboard=metering_json(metering)))
    finally:
        if not settled:  # the client went away: charge what it was sent, without waiting
            call.settle_in_background("cancelled")
