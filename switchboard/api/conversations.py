"""The assistant over HTTP: conversations, their messages, a turn (JSON or server-sent events),
and reminders. Another user's ids answer 404, exactly like ids that do not exist."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from switchboard.api.auth import authenticate
from switchboard.api.params import IdQuery, IntQuery, PathId
from switchboard.api.schemas import invalid_from_validation
from switchboard.api.sse import EventStream
from switchboard.api.state import AppState
from switchboard.assistant.conversations import Conversation, Message
from switchboard.assistant.events import TextDelta, ToolFinished, ToolStarted, TurnCompleted, TurnFailed
from switchboard.assistant.reminders import reminder_id
from switchboard.core.errors import InvalidRequest
from switchboard.core.money import format_credits, ucr_to_credits_float

CONVERSATION = PathId("conversation_id", "conv", "conversation")
REMINDER = PathId("reminder_id", "rem", "reminder", digits=True)
LIMIT = IntQuery("limit", 20, 1, 100, "How many to return (1 to 100)")
AFTER_CONVERSATION = IdQuery("after", "conv", "Return the conversations older than this one (the previous page's last id)")
AFTER_MESSAGE = IdQuery("after", "msg", "Return the messages after this one (the previous page's last id)")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ConversationBody(_Body):
    """POST /v1/conversations (the body is optional)."""

    title: str | None = Field(default=None, max_length=200, description="A title for the conversation")


class MessageBody(_Body):
    """POST /v1/conversations/{conversation_id}/messages: one turn of the assistant."""

    content: str = Field(min_length=1, max_length=32_000,
                         description="What the user says; a message starting with / is a chat command (/help)")
    stream: bool = Field(default=False, description="Answer with server-sent events as the turn runs")


def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


async def _parse(request: Request, model: type[_Body], *, optional: bool = False) -> Any:
    raw = await request.body()
    if not raw.strip() and optional:
        raw = b"{}"
    if not raw.strip():
        raise InvalidRequest("the request body is empty; expected a JSON object")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise invalid_from_validation(exc) from None


def conversation_json(c: Conversation) -> dict[str, Any]:
    return {"id": c.id, "object": "conversation", "channel": c.channel, "title": c.title,
            "model": c.model or "auto", "created_at": c.created_ms // 1000, "updated_at": c.updated_ms // 1000}


def message_json(m: Message) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": m.uid, "object": "conversation.message", "conversation_id": m.conversation_id, "role": m.role,
        "kind": m.kind, "content": m.content, "created_at": m.created_ms // 1000, "model": m.model,
        "credits_charged": ucr_to_credits_float(m.credits_ucr), "request_ids": m.request_ids,
    }
    if m.tool_calls:
        body["tool_calls"] = [{"id": c["id"], "type": "function",
                               "function": {"name": c["name"], "arguments": c.get("arguments", "")}}
                              for c in m.tool_calls]
    if m.tool_call_id:
        body["tool_call_id"] = m.tool_call_id
        body["name"] = m.name
    return body


# -- conversations ------------------------------------------------------------------------------

async def create_conversation(request: Request) -> Response:
    state: AppState = request.app.state.sb
    principal = await authenticate(request, state.keys)
    body: ConversationBody = await _parse(request, ConversationBody, optional=True)
    services, uid = state.assistant.services, principal.user_id
    conv = await services.write(uid, lambda c: services.conversations.create(c, uid, channel="api", title=body.title))
    return _json(conversation_json(conv), 201)


async def list_conversations(request: Request) -> Response:
    state: AppState = request.app.state.sb
    principal = await authenticate(request, state.keys)
    limit, after = LIMIT.parse(request), AFTER_CONVERSATION.parse(request)
    assert limit is not None
    services, uid = state.assistant.services, principal.user_id
    found = await services.read(uid, lambda c: services.conversations.page(c, uid, limit=limit + 1, after=after))
    data = [conversation_json(c) for c in found[:limit]]
    return _json({"object": "list", "data": data, "has_more": len(found) > limit,
                  "last_id": data[-1]["id"] if data else None})


async def get_conversation(request: Request) -> Response:
    state: AppState = request.app.state.sb
    principal = await authenticate(request, state.keys)
    conv_id, services, uid = CONVERSATION.parse(request), state.assistant.services, principal.user_id
    conv = await services.read(uid, lambda c: services.conversations.get(c, uid, conv_id))
    return _json(conversation_json(conv))


async def delete_conversation(request: Request) -> Response:
    state: AppState = request.app.state.sb
    principal = await authenticate(request, state.keys)
    conv_id, services, uid = CONVERSATION.parse(request), state.assistant.services, principal.user_id
    await services.write(uid, lambda c: services.conversations.delete(c, uid, conv_id))
    return _json({"id": conv_id, "object": "conversation.deleted", "deleted": True})


async def list_messages(request: Request) -> Response:
    state: AppState = request.app.state.sb
    principal = await authenticate(request, state.keys)
    conv_id, limit, after = CONVERSATION.parse(request), LIMIT.parse(request), AFTER_MESSAGE.parse(request)
    assert limit is not None
    services, uid = state.assistant.services, principal.user_id
    conversations = services.conversations

    def page(conn):  # type: ignore[no-untyped-def]
        conversations.get(conn, uid, conv_id)  # 404 for another user's conversation
        after_id = conversations.message_id_of(conn, uid, conv_id, after) if after else None
        return conversations.messages(conn, uid, conv_id, after=after_id, limit=limit + 1)

    found = await services.read(uid, page)
    data = [message_json(m) for m in found[:limit]]
    return _json({"object": "list", "data": data, "has_more": len(found) > limit,
                  "last_id": data[-1]["id"] if data else None})


# -- a turn -------------------------------------------------------------------------------------

async def send_message(request: Request) -> Response:
    state: AppState = request.app.state.sb
    principal = await authenticate(request, state.keys)
    state.limits.check(principal.user_id)
    conv_id = CONVERSATION.parse(request)
    body: MessageBody = await _parse(request, MessageBody)
    assistant = state.assistant
    target = await assistant.open(principal.user_id, conv_id)
    events = assistant.send(target, body.content)
    if body.stream:
        return EventStream(_sse(events))  # type: ignore[return-value]  # an ASGI response
    async for event in events:
        if isinstance(event, TurnCompleted):
            return _json(_completed(event))
        if isinstance(event, TurnFailed):
            return _json(_failed(event), event.status)
    raise AssertionError("a turn ends with TurnCompleted or TurnFailed")


def _totals(event: TurnCompleted | TurnFailed) -> dict[str, Any]:
    totals = event.totals.json()
    return {"credits_charged": totals["credits_charged"], "credits_charged_exact": totals["credits_charged_exact"],
            "credits_remaining": totals["credits_remaining"], "models": totals["models"]}


def _completed(event: TurnCompleted) -> dict[str, Any]:
    body = {"message": message_json(event.message), **_totals(event), "stopped": event.stopped}
    if event.conversation_id:
        body["conversation_id"] = event.conversation_id
    return body


def _failed(event: TurnFailed) -> dict[str, Any]:
    kind = "insufficient_quota" if event.status == 402 else "invalid_request_error" if event.status < 500 else "server_error"
    return {"error": {"message": event.error, "type": kind, "param": None, "code": event.code},
            "message": message_json(event.message) if event.message else None, **_totals(event)}


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def _sse(events: AsyncIterator[Any]) -> AsyncIterator[bytes]:
    async for event in events:
        if isinstance(event, TextDelta):
            yield _event("text.delta", {"text": event.text})
        elif isinstance(event, ToolStarted):
            yield _event("tool.started", {"id": event.call_id, "name": event.name, "arguments": event.arguments})
        elif isinstance(event, ToolFinished):
            yield _event("tool.finished", {"id": event.call_id, "name": event.name, "outcome": event.outcome,
                                           "credits": ucr_to_credits_float(event.credits_ucr),
                                           "credits_exact": format_credits(event.credits_ucr)})
        elif isinstance(event, TurnCompleted):
            yield _event("turn.completed", _completed(event))
        elif isinstance(event, TurnFailed):
            yield _event("error", _failed(event))


# -- reminders ----------------------------------------------------------------------------------

async def list_reminders(request: Request) -> Response:
    state: AppState = request.app.state.sb
    principal = await authenticate(request, state.keys)
    services, uid = state.assistant.services, principal.user_id
    found = await services.read(uid, lambda c: services.reminders.list(c, uid))
    return _json({"object": "list", "data": [r.public() for r in found]})


async def delete_reminder(request: Request) -> Response:
    state: AppState = request.app.state.sb
    principal = await authenticate(request, state.keys)
    rid = reminder_id(REMINDER.parse(request))
    services, uid = state.assistant.services, principal.user_id
    cancelled = await services.write(uid, lambda c: services.reminders.cancel(c, uid, rid))
    return _json(cancelled.public())
