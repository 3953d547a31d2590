"""POST /v1/chat/completions: the hot path. Plain Starlette request handling (no dependency
injection, body parsed once with pydantic from bytes, orjson out) to keep per-request overhead low."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from switchboard.api.auth import authenticate
from switchboard.api.openai_format import (
    DONE,
    ChunkWriter,
    completion_json,
    metering_headers,
    metering_json,
    sse_error,
    usage_json,
)
from switchboard.api.schemas import parse_chat_body
from switchboard.api.state import AppState
from switchboard.core.errors import InvalidRequest, SwitchboardError
from switchboard.core.ids import new_id
from switchboard.core.types import TextDelta, ToolCallDelta
from switchboard.inference.metered import MeteredCall

_REQUEST_ID_HEADERS = ("idempotency-key", "x-request-id")


def request_id_of(request: Request) -> str:
    """The client's idempotency key when it sent one (a retry is then never charged twice)."""
    for header in _REQUEST_ID_HEADERS:
        value = request.headers.get(header)
        if value:
            if len(value) > 100 or not value.isprintable():
                raise InvalidRequest(f"{header} must be at most 100 printable characters", param=header)
            return value
    return new_id()


async def chat_completions(request: Request) -> Response:
    state: AppState = request.app.state.sb
    principal = await authenticate(request, state.keys)
    state.limits.check(principal.user_id)
    body = parse_chat_body(await request.body())
    request_id = request_id_of(request)
    call = await state.runtime.inference.begin(
        body.to_request(), user_id=principal.user_id, request_id=request_id, endpoint="chat.completions",
        stream=body.stream, api_key_id=principal.api_key_id, plan=principal.plan,
    )
    completion_id = "chatcmpl-" + new_id()
    created = int(time.time())
    if not body.stream:
        text, tool_calls, metering = await call.run_to_end()
        return Response(
            completion_json(completion_id, created, text, tool_calls, call.finish_reason, metering),
            media_type="application/json",
            headers={**metering_headers(metering), "x-switchboard-route": call.decision.header()},
        )
    writer = ChunkWriter(completion_id, created, call.model.name)
    return StreamingResponse(
        _stream(call, writer, body.include_usage),
        media_type="text/event-stream",
        headers={"x-switchboard-model": call.model.name, "x-switchboard-request-id": request_id,
                 "x-switchboard-route": call.decision.header(),
                 "cache-control": "no-cache", "x-accel-buffering": "no"},
    )


async def _stream(call: MeteredCall, writer: ChunkWriter, include_usage: bool) -> AsyncIterator[bytes]:
    settled = False
    try:
        yield writer.delta({"role": "assistant", "content": ""})
        async for event in call.events():
            if isinstance(event, TextDelta):
                if event.text:
                    yield writer.delta({"content": event.text})
            elif isinstance(event, ToolCallDelta):
                function: dict[str, str] = {"arguments": event.arguments}
                if event.name:
                    function["name"] = event.name
                delta: dict[str, object] = {"index": event.index, "function": function}
                if event.id:
                    delta["id"] = event.id
                    delta["type"] = "function"
                yield writer.delta({"tool_calls": [delta]})
        metering = await call.settle("ok")
        settled = True
        # The final chunk carries Switchboard's metering (credits charged and remaining).
        if include_usage:
            yield writer.finish(call.finish_reason)
            yield writer.chunk([], usage=usage_json(metering.usage), switchboard=metering_json(metering))
        else:
            yield writer.finish(call.finish_reason, switchboard=metering_json(metering))
        yield DONE
    except SwitchboardError as exc:
        # Headers are gone: the error travels in the stream, as OpenAI does.
        metering = await call.settle("error", exc.message)
        settled = True
        error = exc.to_openai()
        error["switchboard"] = metering_json(metering)
        yield sse_error(error)
        yield DONE
    finally:
        if not settled:  # the client went away: charge what it was sent, without waiting
            call.settle_in_background("cancelled")
