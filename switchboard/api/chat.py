"""POST /v1/chat/completions: the hot path. Plain Starlette request handling (no dependency
injection, body parsed once with pydantic from bytes, orjson out) to keep per-request overhead low."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Union

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from switchboard.accounts.keys import Principal
from switchboard.api.anthropic_messages import _prepend
from switchboard.api.auth import authenticate
from switchboard.api.idempotency import Attempt, idempotency_key_of
from switchboard.api.openai_format import (
    DONE,
    ChunkWriter,
    completion_json,
    metering_headers,
    metering_json,
    sse_error,
    usage_json,
)
from switchboard.api.schemas import ChatCompletionBody, parse_chat_body
from switchboard.api.state import AppState
from switchboard.core.errors import SwitchboardError
from switchboard.core.ids import new_id
from switchboard.core.types import StreamEvent, TextDelta, ToolCallDelta
from switchboard.inference.metered import MeteredCall


async def chat_completions(request: Request) -> Response:
    state: AppState = request.app.state.sb
    principal = await authenticate(request, state.keys)
    state.limits.check(principal.user_id)
    raw = await request.body()
    body = parse_chat_body(raw)
    key = idempotency_key_of(request)
    if key is None:
        return await _complete(state, principal, body, new_id(), None)
    attempt = await state.idempotency.claim(principal.user_id, key, "chat.completions", raw, body.stream)
    if isinstance(attempt, Response):  # the stored answer of the first request with this key
        return attempt
    try:
        return await _complete(state, principal, body, attempt.request_id, attempt)
    except BaseException:
        state.idempotency.release(attempt)  # nothing was answered: the key may be retried
        raise


async def _complete(
    state: AppState, principal: Principal, body: ChatCompletionBody, request_id: str, attempt: Attempt | None
) -> Response:
    call = await state.runtime.inference.begin(
        body.to_request(), user_id=principal.user_id, request_id=request_id, endpoint="chat.completions",
        stream=body.stream, api_key_id=principal.api_key_id, plan=principal.plan,
    )
    completion_id = "chatcmpl-" + new_id()
    created = int(time.time())
    if not body.stream:
        text, tool_calls, metering = await call.run_to_end()
        response = Response(
            completion_json(completion_id, created, text, tool_calls, call.finish_reason, metering),
            media_type="application/json",
            headers={**metering_headers(metering), "x-switchboard-route": call.decision.header(metering.model)},
        )
        if attempt is not None:
            await state.idempotency.complete(attempt, response)
        return response
    # The first event decides which model runs (a fallback happens before any output): the
    # headers and every chunk then name the model that ran, not the first choice.
    upstream = call.events()
    first = await _first_event(call, upstream)
    writer = ChunkWriter(completion_id, created, call.model.name)
    events = _stream(call, writer, body.include_usage, upstream, first)
    if attempt is not None:
        events = state.idempotency.then_done(events, attempt, call)
    # Started here (it yields the role chunk at once): a started generator is closed, and so
    # settles, even if the response is abandoned before it is iterated.
    head = await anext(events)
    return StreamingResponse(
        _prepend(head, events),
        media_type="text/event-stream",
        headers={"x-switchboard-model": call.model.name, "x-switchboard-request-id": request_id,
                 "x-switchboard-route": call.decision.header(call.model.name),
                 "cache-control": "no-cache", "x-accel-buffering": "no"},
    )


First = Union[StreamEvent, SwitchboardError, None]


async def _first_event(call: MeteredCall, upstream: AsyncIterator[StreamEvent]) -> First:
    """The stream's first event (None: it ended at once), or the error it failed with before
    any output, which the stream then reports in its body as before. A client gone while it
    waits: what was produced (nothing) is settled in the background."""
    try:
        return await anext(upstream, None)
    except SwitchboardError as exc:
        return exc
    except BaseException:
        call.settle_in_background("cancelled")
        raise


async def _replay(first: First, upstream: AsyncIterator[StreamEvent]) -> AsyncIterator[StreamEvent]:
    if isinstance(first, SwitchboardError):
        raise first
    if first is None:
        return
    yield first
    async for event in upstream:
        yield event


async def _stream(
    call: MeteredCall, writer: ChunkWriter, include_usage: bool, upstream: AsyncIterator[StreamEvent], first: First,
) -> AsyncIterator[bytes]:
    settled = False
    try:
        yield writer.delta({"role": "assistant", "content": ""})
        async for event in _replay(first, upstream):
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
