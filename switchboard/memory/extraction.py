"""Durable facts from a conversation: a low-cost model reads the new messages and writes what
is worth remembering about the user (preferences, people, plans, dates).

The call is the metered path like any other (`Inference.begin`, the cheapest model the user's
plan may use: hold, settlement, usage record with endpoint `memory.extraction`), made only
where the plan allows it (`plans.<plan>.memory_extraction`). Facts are only added: the model is
shown the user's related facts, and a new fact that contradicts or updates one of them names
it, which marks the older fact superseded (kept, with when it was valid). Every fact cites the
messages it came from (only ids it was shown are kept; none named: the user's messages).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from switchboard.core.errors import SwitchboardError
from switchboard.core.ids import new_id
from switchboard.core.types import ChatMessage, ChatRequest
from switchboard.memory.service import MemoryService, Remembered, now_ms

if TYPE_CHECKING:
    from switchboard.inference.metered import Inference

log = logging.getLogger(__name__)

ENDPOINT = "memory.extraction"
MAX_FACTS = 10
MAX_FACT_CHARS = 500

INSTRUCTIONS = """You maintain the long-term memory of a personal assistant about its user.
From the NEW MESSAGES, write down the durable facts about the user worth remembering in later
conversations: who they are, people in their life (names, relations), preferences, plans and
dates, work, places, health, important events. Skip small talk, questions and passing moods.
Each fact is one short sentence about the user in the third person ("The user's sister is
called Ana."), with absolute dates where a date is known (today is {today}).
KNOWN FACTS are what is already remembered: do not repeat them. If a new fact updates or
contradicts a known fact, name the known fact's id in "replaces".
Answer with JSON only: {{"facts": [{{"text": "...", "sources": ["msg_..."], "replaces": ["mem_..."]}}]}}
("sources": the ids of the messages the fact comes from). No facts: {{"facts": []}}."""


@dataclass(frozen=True, slots=True)
class Said:
    """A message of the conversation, as extraction sees it."""

    uid: str
    role: str
    text: str
    created_ms: int
    conversation_id: str


@dataclass(frozen=True, slots=True)
class Extracted:
    facts: list[str]
    request_id: str | None
    charged_ucr: int


def prompt(messages: list[Said], known: list[tuple[str, str]], today: str) -> list[ChatMessage]:
    facts = "\n".join(f"- [{uid}] {text}" for uid, text in known) or "(none)"
    said = "\n".join(f"[{m.uid}] {'User' if m.role == 'user' else 'Assistant'}: {m.text}" for m in messages)
    return [ChatMessage("system", INSTRUCTIONS.format(today=today)),
            ChatMessage("user", f"KNOWN FACTS:\n{facts}\n\nNEW MESSAGES:\n{said}")]


def parse(text: str) -> list[dict[str, Any]]:
    """The facts of the model's answer; [] for anything that is not the JSON asked for."""
    match = re.search(r"\{.*\}", text, re.DOTALL)
    if match is None:
        return []
    try:
        value = json.loads(match.group(0))
    except ValueError:
        return []
    facts = value.get("facts") if isinstance(value, dict) else None
    if not isinstance(facts, list):
        return []
    found = []
    for fact in facts[:MAX_FACTS]:
        if isinstance(fact, dict) and isinstance(fact.get("text"), str) and fact["text"].strip():
            found.append({"text": fact["text"].strip()[:MAX_FACT_CHARS],
                          "sources": [s for s in fact.get("sources") or [] if isinstance(s, str)],
                          "replaces": [s for s in fact.get("replaces") or [] if isinstance(s, str)]})
    return found


async def extract(inference: Inference, memory: MemoryService, user_id: int, plan: str, messages: list[Said], *,
                  now: datetime, limit_ucr: int | None = None) -> Extracted:
    """Extract and keep the facts of `messages` (one metered call); the facts kept."""
    if not messages or not await memory.keeps(user_id):
        return Extracted([], None, 0)
    spoken = " ".join(m.text for m in messages if m.role == "user")
    related = await memory.search(user_id, spoken, 12) if spoken.strip() else []
    known = {h.center.uid: h.center for h in related if h.center.kind == "fact"}
    model = inference.router.cheapest(plan)
    request = ChatRequest(model=model.name, max_tokens=memory.config.extraction_max_tokens,
                          messages=prompt(messages, [(u, e.text) for u, e in known.items()], now.strftime("%d %B %Y")))
    request_id = "mem-" + new_id()
    try:
        call = await inference.begin(request, user_id=user_id, request_id=request_id, endpoint=ENDPOINT,
                                     stream=False, plan=plan, limit_ucr=limit_ucr)
        text, _, metering = await call.run_to_end()
    except SwitchboardError as exc:
        log.warning("memory extraction for user %s did not run: %s", user_id, exc.message)
        return Extracted([], None, 0)
    shown = {m.uid: m for m in messages}
    user_ids = [m.uid for m in messages if m.role == "user"]
    kept: list[str] = []
    for fact in parse(text):
        if fact["text"].lower() in {e.text.lower() for e in known.values()}:
            continue
        sources = [s for s in fact["sources"] if s in shown][:3] or user_ids[-3:]
        cited = [shown[s] for s in sources if s in shown]
        meta = {"source_ids": sources, "origin": "extraction", "request_id": request_id,
                "sources": [{"conversation_id": m.conversation_id, "message_id": m.uid} for m in cited]}
        old = [known[u].id for u in fact["replaces"] if u in known]
        at = max((m.created_ms for m in cited), default=now_ms())
        if await memory.keep(user_id, [Remembered("fact", fact["text"], at, meta)], supersedes=old, check=False):
            kept.append(fact["text"])
    return Extracted(kept, request_id, metering.charged_ucr)
