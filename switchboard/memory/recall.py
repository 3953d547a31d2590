"""What the assistant is reminded of before a turn: the memories most relevant to the incoming
message, written as short dated notes for the prompt.

Only memories that are relevant enough come back: a hit whose meaning is close to the message
(cosine similarity at least `memory.recall_min_similarity`), or one from the period the message
names ("last weekend"). Superseded facts are not in the index. Episodic memories of the
conversation itself are left out: its history (and its summary) is in the prompt already.
Each note carries its date and how long ago it was, so that the model can answer "when" and
reason about what is current; the caller fits the notes to its token budget and fences them as
data (assistant.context).
"""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from switchboard.memory.index import Hit
from switchboard.memory.service import MemoryService
from switchboard.memory.timeframe import timeframe


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError):
        return ZoneInfo("UTC")


def ago(ms: int, now: datetime) -> str:
    days = (now - datetime.fromtimestamp(ms / 1000, timezone.utc)).days
    if days <= 0:
        return "today"
    if days == 1:
        return "yesterday"
    if days < 60:
        return f"{days} days ago"
    if days < 730:
        return f"{days // 30} months ago"
    return f"{days // 365} years ago"


def when(ms: int, now: datetime, zone: str) -> str:
    local = datetime.fromtimestamp(ms / 1000, timezone.utc).astimezone(_zone(zone))
    return f"{local.strftime('%a %d %b %Y')}, {ago(ms, now)}"


def note(hit: Hit, now: datetime, zone: str) -> str:
    """One hit as a note: a fact on one line, a passage of turns with who said what."""
    center = hit.center
    if center.kind == "fact":
        return f"- {center.text} (noted {when(center.created_ms, now, zone)}; memory {center.uid})"
    lines = [f"- {when(center.created_ms, now, zone)} (memory {center.uid}):"]
    for entry in hit.entries:
        lines.append(f"  {entry.name or 'someone'}: {entry.text}")
    return "\n".join(lines)


async def recall(memory: MemoryService, user_id: int, message: str, *, now: datetime, time_zone: str,
                 conversation_id: str | None, limit: int) -> list[str]:
    """Notes for the prompt, most relevant first (the caller keeps those that fit); none when
    the user switched memory off."""
    if limit <= 0 or not message.strip():
        return []
    hits = await memory.search(user_id, message, limit, now=now, time_zone=time_zone, exclude_thread=conversation_id,
                               if_enabled=True)
    frame = timeframe(message, now, time_zone)
    floor = memory.config.recall_min_similarity
    kept = [h for h in hits if h.similarity >= floor or (frame is not None and frame.contains(h.center.created_ms))]
    return [note(h, now, time_zone) for h in kept]
