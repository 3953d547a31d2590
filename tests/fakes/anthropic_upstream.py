"""A fake Anthropic Messages API on a real port, for provider and gateway tests.

The same public interface as `FakeOpenAI` (it reuses its server machinery and its `Behaviour`
knobs), speaking Anthropic's wire format instead:

    with FakeAnthropic() as fake:
        fake.behaviour = AnthropicBehaviour(text="Hi there", chunks=2, cached_tokens=3, cache_write_tokens=5)
        ... POST {fake.url}/v1/messages ...          # fake.url has no /v1, like the anthropic SDK's base_url
        assert fake.last.json["stream"] is True

A streaming answer is `event: <type>\\ndata: <json>\\n\\n` events, in Anthropic's order:
`message_start` (the Message with empty content and the input usage), per content block
`content_block_start` / `content_block_delta`* / `content_block_stop` (a `ping` after the first
block's start), `message_delta` (stop_reason and cumulative usage), `message_stop`. Tool calls are
`tool_use` blocks whose input arrives as `input_json_delta` pieces (an empty one, then the JSON in
two pieces). A non-streaming request gets a Message JSON; an error status gets Anthropic's error
JSON `{"type": "error", "error": {"type": ..., "message": ...}, "request_id": ...}`; every response
carries a `request-id` header.

How the `Behaviour` knobs read here:
- `prompt_tokens` is the whole prompt, as in OpenAI's usage: the fake reports
  `input_tokens = prompt_tokens - cached_tokens - cache_write_tokens` (Anthropic counts cache
  reads and writes apart), `cache_read_input_tokens = cached_tokens` and
  `cache_creation_input_tokens = cache_write_tokens` (`AnthropicBehaviour` only). So an adapter
  that normalises correctly reports the same `prompt_tokens` for both fakes.
- `reasoning_tokens` is ignored (Anthropic does not report it apart).
- `finish_reason` takes OpenAI's words (stop, length, tool_calls, content_filter, mapped to
  end_turn, max_tokens, tool_use, refusal) or Anthropic's own, sent as they are.
- `send_finish=False` leaves out `message_delta`; `send_done=False` leaves out `message_stop`;
  `send_usage=False` leaves the `usage` objects out (not something Anthropic does).
- `error_type` left at its OpenAI default ("server_error") becomes the Anthropic type that goes
  with the status (api_error for 500, overloaded_error for 529, rate_limit_error for 429, ...),
  and `overloaded_error` for `error_event_after_chunks`.
- `error_code` is not used (Anthropic's errors have none).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.fakes.openai_upstream import Behaviour, FakeOpenAI, FakeToolCall, ReceivedRequest, _split

__all__ = ["AnthropicBehaviour", "Behaviour", "FakeAnthropic", "FakeToolCall", "ReceivedRequest"]


@dataclass
class AnthropicBehaviour(Behaviour):
    cache_write_tokens: int = 0  # reported as cache_creation_input_tokens


_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}

_OPENAI_DEFAULT_ERROR_TYPE = Behaviour.error_type  # "server_error"


def _compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def sse(event: str, payload: Any, *, spaced: bool = False) -> bytes:
    """One SSE event as Anthropic frames it. (Anthropic writes ping and error data with spaces.)"""
    data = json.dumps(payload).encode() if spaced else _compact(payload)
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


class FakeAnthropic(FakeOpenAI):
    """The fake server. Start with `with FakeAnthropic() as fake:` or `.start()` / `.stop()`."""

    behaviour_class = AnthropicBehaviour

    def __init__(
        self, behaviour: Behaviour | None = None, *, host: str = "127.0.0.1", models: list[str] | None = None
    ) -> None:
        super().__init__(behaviour, host=host, models=models or ["claude-fake-1"])
        self._ids = 0

    # -- public -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The API base, as clients configure it (no /v1: the SDK and our adapter add /v1/messages)."""
        return f"http://{self.host}:{self.port}"

    def chat_requests(self) -> list[ReceivedRequest]:
        return [r for r in self.requests if r.path == "/v1/messages" and r.method == "POST"]

    # -- server -------------------------------------------------------------------------

    def _routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_get("/v1/models", self._models)

    def _next_id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}_fake{self._ids:020d}"

    async def _models(self, request: web.Request) -> web.Response:
        self._record(request, b"")
        data = [
            {"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"} for m in self.models
        ]
        body = {"data": data, "has_more": False, "first_id": self.models[0], "last_id": self.models[-1]}
        return web.json_response(body, headers={"request-id": self._next_id("req")})

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        payload, b = await self._receive(request)
        request_id = self._next_id("req")
        headers = dict(b.extra_headers)
        headers["request-id"] = request_id
        if b.retry_after is not None:
            headers["retry-after"] = b.retry_after
        if not isinstance(payload, dict):
            return _error(400, "invalid_request_error", "There was an issue with the format of your request body.", request_id, headers)
        if "anthropic-version" not in request.headers:
            return _error(400, "invalid_request_error", "anthropic-version: header is required", request_id, headers)
        for required in ("model", "max_tokens", "messages"):
            if required not in payload:
                return _error(400, "invalid_request_error", f"{required}: Field required", request_id, headers)
        if b.status >= 300:
            kind = _ERROR_TYPES.get(b.status, "api_error") if b.error_type == _OPENAI_DEFAULT_ERROR_TYPE else b.error_type
            return _error(b.status, kind, b.error_message, request_id, headers)

        model = str(payload["model"])
        pieces = _split(b.text, b.chunks)
        stop_reason = _STOP_REASONS.get(b.finish_reason or "", b.finish_reason) or ("tool_use" if b.tool_calls else "end_turn")
        stops = payload.get("stop_sequences") or []
        stop_sequence = stops[0] if stop_reason == "stop_sequence" and stops else None
        usage = _usage_json(b, len(pieces))
        mid = self._next_id("msg")
        if not payload.get("stream") or b.ignore_stream:
            content = [{"type": "text", "text": b.text}] if pieces else []
            content += [
                {"type": "tool_use", "id": c.id, "name": c.name, "input": json.loads(c.arguments or "{}")} for c in b.tool_calls
            ]
            return web.json_response(_message(mid, model, content, stop_reason, stop_sequence, usage), headers=headers)

        resp = web.StreamResponse(status=200, headers=headers)
        resp.content_type = "text/event-stream"
        resp.charset = "utf-8"
        resp.headers["Cache-Control"] = "no-cache"
        await resp.prepare(request)

        start_usage = dict(usage, output_tokens=1) if usage else None  # message_start's output count is a placeholder
        message = _message(mid, model, [], None, None, start_usage)
        await resp.write(sse("message_start", {"type": "message_start", "message": message}))
        block = 0
        sent = 0
        pinged = False

        async def start_block(content_block: dict[str, Any]) -> None:
            nonlocal pinged
            await resp.write(sse("content_block_start", {"type": "content_block_start", "index": block, "content_block": content_block}))
            if not pinged:
                pinged = True
                await resp.write(sse("ping", {"type": "ping"}, spaced=True))

        async def delta(d: dict[str, Any]) -> None:
            await resp.write(sse("content_block_delta", {"type": "content_block_delta", "index": block, "delta": d}))

        async def stop_block() -> None:
            nonlocal block
            await resp.write(sse("content_block_stop", {"type": "content_block_stop", "index": block}))
            block += 1

        if pieces:
            await start_block({"type": "text", "text": ""})
            for piece in pieces:
                if await self._maybe_fail(request, resp, b, sent):
                    return resp
                if b.chunk_delay_s:
                    await asyncio.sleep(b.chunk_delay_s)
                await delta({"type": "text_delta", "text": piece})
                sent += 1
            await stop_block()
        for call in b.tool_calls:
            if await self._maybe_fail(request, resp, b, sent):
                return resp
            await start_block({"type": "tool_use", "id": call.id, "name": call.name, "input": {}})
            await delta({"type": "input_json_delta", "partial_json": ""})
            half = max(1, len(call.arguments) // 2)
            for part in (call.arguments[:half], call.arguments[half:]):
                if b.chunk_delay_s:
                    await asyncio.sleep(b.chunk_delay_s)
                await delta({"type": "input_json_delta", "partial_json": part})
            await stop_block()
            sent += 1
        if not pinged:
            await resp.write(sse("ping", {"type": "ping"}, spaced=True))
        if await self._maybe_fail(request, resp, b, sent):
            return resp
        if b.send_finish:
            event: dict[str, Any] = {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence}}
            if usage is not None:
                event["usage"] = {k: usage[k] for k in _DELTA_USAGE_FIELDS}
            await resp.write(sse("message_delta", event))
        if b.send_done:
            await resp.write(sse("message_stop", {"type": "message_stop"}))
        await resp.write_eof()
        return resp

    def _garbage_frame(self) -> bytes:
        return b'event: content_block_delta\ndata: {"this is": not json\n\n'

    def _error_frame(self, b: Behaviour) -> bytes:
        kind = "overloaded_error" if b.error_type == _OPENAI_DEFAULT_ERROR_TYPE else b.error_type
        return sse("error", {"type": "error", "error": {"type": kind, "message": b.error_message}}, spaced=True)


_DELTA_USAGE_FIELDS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens")


def _usage_json(b: Behaviour, pieces: int) -> dict[str, Any] | None:
    if not b.send_usage:
        return None
    written = getattr(b, "cache_write_tokens", 0)
    output = b.completion_count(pieces)
    return {
        "input_tokens": max(0, b.prompt_tokens - b.cached_tokens - written),
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": b.cached_tokens,
        "cache_creation": {"ephemeral_5m_input_tokens": written, "ephemeral_1h_input_tokens": 0},
        "output_tokens": output,
        "service_tier": "standard",
    }


def _message(
    mid: str,
    model: str,
    content: list[dict[str, Any]],
    stop_reason: str | None,
    stop_sequence: str | None,
    usage: dict[str, Any] | None,
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "model": model,
        "id": mid,
        "type": "message",
        "role": "assistant",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
    }
    if usage is not None:
        message["usage"] = usage
    return message


def _error(status: int, kind: str, message: str, request_id: str, headers: dict[str, str]) -> web.Response:
    body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id}
    return web.json_response(body, status=status, headers=headers)
