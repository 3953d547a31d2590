"""The memory tools: `remember` ("remember that my sister is called Ana"), `forget`, and
`search_memory` (the model may look further than what was recalled). Free to call.

A remembered fact cites the user's message that asked for it. Forgetting takes a memory's id
(as recalled or found: mem_...) or a description, whose closest memory is forgotten when it is
close enough, and says what was forgotten.
"""

from __future__ import annotations

from typing import Any

from switchboard.assistant.tools.registry import Tool, ToolContext, ToolFailed, ToolResult, object_schema, required_str
from switchboard.core.errors import SwitchboardError
from switchboard.memory.recall import note
from switchboard.memory.service import Remembered, now_ms

_FORGET_SIMILARITY = 0.5


async def _latest_user_message(ctx: ToolContext) -> str | None:
    services = ctx.services
    found = await services.read(ctx.user_id, lambda c: services.conversations.messages(
        c, ctx.user_id, ctx.conversation_id, limit=10, newest=True))
    return next((m.uid for m in reversed(found) if m.role == "user"), None)


async def _remember(ctx: ToolContext, arguments: dict[str, Any]) -> ToolResult:
    text = required_str(arguments, "fact")
    if len(text) > 2000:
        raise ToolFailed("the fact is too long (2000 characters at most)")
    source = await _latest_user_message(ctx)
    meta = {"origin": "tool", "source_ids": [source] if source else [],
            "sources": [{"conversation_id": ctx.conversation_id, "message_id": source}] if source else []}
    try:
        kept = await ctx.services.memory.keep(ctx.user_id, [Remembered("fact", text, now_ms(), meta)])
    except SwitchboardError as exc:
        raise ToolFailed(exc.message) from None
    return ToolResult(f"Remembered ({kept[0].uid}): {text}")


async def _forget(ctx: ToolContext, arguments: dict[str, Any]) -> ToolResult:
    what = required_str(arguments, "memory")
    memory = ctx.services.memory
    uid = what if what.startswith("mem_") and " " not in what else None
    if uid is None:
        hits = await memory.search(ctx.user_id, what, 1, now=ctx.now, time_zone=ctx.time_zone)
        if not hits or hits[0].similarity < _FORGET_SIMILARITY:
            raise ToolFailed(f"no memory is close enough to {what!r}; search_memory finds ids to forget by id")
        uid = hits[0].center.uid
    try:
        found = await memory.get(ctx.user_id, uid)
        await memory.forget(ctx.user_id, uid)
    except SwitchboardError as exc:
        raise ToolFailed(exc.message) from None
    return ToolResult(f"Forgotten ({uid}): {found.text}")


async def _search_memory(ctx: ToolContext, arguments: dict[str, Any]) -> ToolResult:
    query = required_str(arguments, "query")
    limit = arguments.get("limit", 5)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 20:
        raise ToolFailed("`limit` must be an integer from 1 to 20")
    hits = await ctx.services.memory.search(ctx.user_id, query, limit, now=ctx.now, time_zone=ctx.time_zone)
    if not hits:
        return ToolResult("Nothing in memory matches.")
    return ToolResult("\n".join(note(h, ctx.now, ctx.time_zone) for h in hits))


def memory_tools() -> list[Tool]:
    return [
        Tool("remember", "Remember a durable fact about the user for later conversations (their people, "
                         "preferences, plans, dates), when they ask you to or it clearly matters.",
             object_schema({"fact": {"type": "string", "description": "The fact, as one sentence about the user"}},
                           ["fact"]), _remember),
        Tool("forget", "Forget one of the user's memories, when they ask you to.",
             object_schema({"memory": {"type": "string", "description": "The memory's id (mem_...) or what it says"}},
                           ["memory"]), _forget),
        Tool("search_memory", "Search the user's long-term memory (earlier conversations and remembered facts) "
                              "beyond what was recalled for this message.",
             object_schema({"query": {"type": "string", "description": "What to look for"},
                            "limit": {"type": "integer", "minimum": 1, "maximum": 20}}, ["query"]),
             _search_memory),
    ]
