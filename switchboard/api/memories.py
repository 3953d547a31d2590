"""The user's long-term memory over HTTP: list, add, correct, forget, search, import, and the
switch that turns it off. Another user's memory ids answer 404, exactly like ids that do not
exist. Nothing here calls a chat model or charges (the embedding is local); an import with
`"extract": true` is the exception: fact extraction is a metered model call, where the plan
allows it."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from switchboard.api.auth import authenticate
from switchboard.api.conversations import _parse
from switchboard.api.params import ChoiceQuery, IdQuery, IntQuery, PathId
from switchboard.api.state import AppState
from switchboard.core.errors import InvalidRequest
from switchboard.memory.extraction import Said, extract
from switchboard.memory.importer import ImportLine, from_line, import_items, parse_time
from switchboard.memory.index import Hit
from switchboard.memory.service import MemoryService, Remembered, now_ms
from switchboard.memory.store import Memory

MEMORY = PathId("memory_id", "mem", "memory")
LIMIT = IntQuery("limit", 20, 1, 100, "How many to return (1 to 100)")
AFTER = IdQuery("after", "mem", "Return the memories older than this one (the previous page's last id)")
STATUS = ChoiceQuery("status", ("all", "active"), "'active': leave out the superseded versions")
MAX_IMPORT = 1000


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MemoryBody(_Body):
    """POST /v1/memories: a fact to remember."""

    text: str = Field(min_length=1, max_length=2000, description="The fact, e.g. 'My sister is called Ana'")
    created_at: str | None = Field(default=None, max_length=40,
                                   description="When it became true (ISO 8601; no zone: UTC); default now")


class CorrectionBody(_Body):
    """PATCH /v1/memories/{memory_id}: the corrected text (the old version is kept, superseded)."""

    text: str = Field(min_length=1, max_length=2000)


class SearchBody(_Body):
    """POST /v1/memories/search."""

    query: str = Field(min_length=1, max_length=4000)
    limit: int = Field(default=10, ge=1, le=50)


class ImportMessage(_Body):
    role: Literal["user", "assistant"]
    name: str | None = Field(default=None, max_length=100)
    content: str = Field(min_length=1, max_length=32_000)
    source_id: str | None = Field(default=None, max_length=200)
    created_at: str | None = Field(default=None, max_length=40, description="ISO 8601 or null (no zone: UTC)")


class ImportBody(_Body):
    """POST /v1/memories/import: messages of a history, each becoming a memory."""

    messages: list[ImportMessage] = Field(min_length=1, max_length=MAX_IMPORT)
    extract: bool = Field(default=False, description="Also extract facts with a model (metered; where the plan allows)")


class SettingsBody(_Body):
    """PATCH /v1/memories/settings."""

    enabled: bool = Field(description="false: nothing new is kept and nothing is recalled")


def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat().replace("+00:00", "Z")


def memory_json(m: Memory, superseded_by: str | None = None) -> dict[str, Any]:
    meta = m.meta
    return {
        "id": m.uid, "object": "memory", "kind": m.kind, "text": m.text, "status": m.status,
        "role": meta.get("role"), "name": meta.get("name"), "source_ids": m.source_ids,
        "sources": meta.get("sources") or [], "origin": meta.get("origin"),
        "created_at": _iso(m.created_ms), "valid_from": _iso(m.created_ms), "valid_until": _iso(m.superseded_ms),
        "superseded_by": superseded_by,
    }


def hit_json(hit: Hit) -> dict[str, Any]:
    """A search result: one memory (a passage: the hit and the turns that complete it)."""
    text = "\n".join(f"{e.name}: {e.text}" if e.name else e.text for e in hit.entries)
    return {"id": hit.center.uid, "object": "memory.search_result", "kind": hit.center.kind, "text": text,
            "source_ids": hit.source_ids, "memory_ids": [e.uid for e in hit.entries], "score": round(hit.score, 6),
            "similarity": round(hit.similarity, 4), "created_at": _iso(hit.center.created_ms)}


async def _with_successors(memory: MemoryService, uid: int, found: list[Memory]) -> list[dict[str, Any]]:
    """Memories as JSON, each superseded one naming the public id of what replaced it."""
    wanted = {m.superseded_by for m in found if m.superseded_by is not None}
    successors = await memory.read(uid, lambda c: memory.store.by_ids(c, uid, wanted)) if wanted else {}
    return [memory_json(m, successors[m.superseded_by].uid if m.superseded_by in successors else None)
            for m in found]


def _memory(request: Request) -> tuple[AppState, MemoryService]:
    state: AppState = request.app.state.sb
    return state, state.assistant.services.memory


async def list_memories(request: Request) -> Response:
    state, memory = _memory(request)
    principal = await authenticate(request, state.keys)
    limit, after, status = LIMIT.parse(request), AFTER.parse(request), STATUS.parse(request)
    assert limit is not None
    found = await memory.page(principal.user_id, limit=limit + 1, after=after, include_superseded=status == "all")
    data = await _with_successors(memory, principal.user_id, found[:limit])
    return _json({"object": "list", "data": data, "has_more": len(found) > limit,
                  "last_id": data[-1]["id"] if data else None})


async def create_memory(request: Request) -> Response:
    state, memory = _memory(request)
    principal = await authenticate(request, state.keys)
    body: MemoryBody = await _parse(request, MemoryBody)  # type: ignore[arg-type]
    try:
        at = parse_time(body.created_at, now_ms())
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="created_at") from None
    kept = await memory.keep(principal.user_id, [Remembered("fact", body.text, at, {"origin": "api"})])
    return _json(memory_json(kept[0]), 201)


async def get_memory(request: Request) -> Response:
    state, memory = _memory(request)
    principal = await authenticate(request, state.keys)
    found = await memory.get(principal.user_id, MEMORY.parse(request))
    return _json((await _with_successors(memory, principal.user_id, [found]))[0])


async def correct_memory(request: Request) -> Response:
    state, memory = _memory(request)
    principal = await authenticate(request, state.keys)
    uid = MEMORY.parse(request)
    body: CorrectionBody = await _parse(request, CorrectionBody)  # type: ignore[arg-type]
    return _json(memory_json(await memory.correct(principal.user_id, uid, body.text)))


async def delete_memory(request: Request) -> Response:
    state, memory = _memory(request)
    principal = await authenticate(request, state.keys)
    uid = MEMORY.parse(request)
    removed = await memory.forget(principal.user_id, uid)
    return _json({"id": uid, "object": "memory.deleted", "deleted": True, "versions_deleted": removed})


async def delete_all_memories(request: Request) -> Response:
    state, memory = _memory(request)
    principal = await authenticate(request, state.keys)
    removed = await memory.forget_all(principal.user_id)
    return _json({"object": "memory.deleted", "deleted": removed})


async def search_memories(request: Request) -> Response:
    state, memory = _memory(request)
    principal = await authenticate(request, state.keys)
    state.limits.check(principal.user_id)
    body: SearchBody = await _parse(request, SearchBody)  # type: ignore[arg-type]
    hits = await memory.search(principal.user_id, body.query, body.limit)
    return _json({"object": "list", "data": [hit_json(h) for h in hits]})


async def import_memories(request: Request) -> Response:
    state, memory = _memory(request)
    principal = await authenticate(request, state.keys)
    state.limits.check(principal.user_id)
    body: ImportBody = await _parse(request, ImportBody)  # type: ignore[arg-type]
    at = now_ms()
    thread = f"import_{now_ms():x}"
    items = []
    for n, message in enumerate(body.messages):
        try:
            created = parse_time(message.created_at, at)
        except ValueError as exc:
            raise InvalidRequest(f"messages[{n}]: {exc}", param=f"messages[{n}].created_at") from None
        items.append(from_line(ImportLine.model_validate(message.model_dump()), created, thread))
    imported = await import_items(memory, principal.user_id, items)
    facts: list[str] = []
    plan = state.runtime.settings.plans.get(principal.plan)
    if body.extract and plan is not None and plan.memory_extraction:
        said = [Said(i.meta["source_ids"][0] if i.meta["source_ids"] else f"line{n}", i.meta["role"], i.text,
                     i.created_ms, thread) for n, i in enumerate(imported.fresh)]
        facts = (await extract(state.runtime.inference, memory, principal.user_id, principal.plan, said,
                               now=datetime.now(timezone.utc))).facts
    return _json({"object": "memory.import", "imported": imported.kept, "skipped": imported.skipped, "facts": facts,
                  "extracted": bool(body.extract and plan is not None and plan.memory_extraction)}, 201)


async def get_settings(request: Request) -> Response:
    state, memory = _memory(request)
    principal = await authenticate(request, state.keys)
    current = await memory.state(principal.user_id)
    return _json({"object": "memory.settings", "enabled": current.enabled and memory.config.enabled,
                  "server_enabled": memory.config.enabled})


async def patch_settings(request: Request) -> Response:
    state, memory = _memory(request)
    principal = await authenticate(request, state.keys)
    body: SettingsBody = await _parse(request, SettingsBody)  # type: ignore[arg-type]
    current = await memory.set_enabled(principal.user_id, body.enabled)
    return _json({"object": "memory.settings", "enabled": current.enabled and memory.config.enabled,
                  "server_enabled": memory.config.enabled})
