"""Importing a history: one message per JSON line, each becoming a memory of the user.

    {"role": "user"|"assistant", "name": "...", "content": "...", "source_id": "...",
     "created_at": "ISO 8601 or null"}

Every line, user and assistant alike, becomes an episodic memory keeping its `name`,
`source_id` and time (a time without a zone is UTC; null: the time of the import). The lines of
one import are one thread, in order, so that a hit brings its neighbouring turns. Lines are
checked first (a bad line is an error naming it, and nothing is kept), then embedded and
written in batches.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from switchboard.core.errors import InvalidRequest
from switchboard.memory.service import MemoryService, Remembered, now_ms

BATCH = 256
MAX_CONTENT = 32_000


class ImportLine(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["user", "assistant"]
    name: str | None = Field(default=None, max_length=100)
    content: str = Field(min_length=1, max_length=MAX_CONTENT)
    source_id: str | None = Field(default=None, max_length=200)
    created_at: str | None = None


def parse_time(value: str | None, default_ms: int) -> int:
    """ISO 8601 to epoch ms (no zone: UTC); None: `default_ms`."""
    if value is None:
        return default_ms
    try:
        at = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"created_at {value!r} is not an ISO 8601 time") from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    return int(at.timestamp() * 1000)


def parse_lines(lines: Iterable[str], *, start_ms: int | None = None) -> list[Remembered]:
    """Every non-blank line as a memory to keep; InvalidRequest naming the first bad line."""
    at = now_ms() if start_ms is None else start_ms
    thread = f"import_{secrets.token_hex(8)}"
    items: list[Remembered] = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            line = ImportLine.model_validate(json.loads(raw))
            created = parse_time(line.created_at, at)
        except (ValueError, ValidationError) as exc:
            detail = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
            raise InvalidRequest(f"line {number}: {detail}", param="messages") from None
        items.append(from_line(line, created, thread))
    return items


def from_line(line: ImportLine, created_ms: int, thread: str) -> Remembered:
    meta = {"role": line.role, "name": line.name, "source_ids": [line.source_id] if line.source_id else [],
            "thread": thread, "origin": "import"}
    return Remembered("message", line.content, created_ms, meta)


@dataclass(slots=True)
class Imported:
    kept: int  # memories kept now
    skipped: int  # lines whose source_id the user's memory already holds (imported before)
    fresh: list[Remembered]  # the lines kept now (facts are extracted from these alone)


async def import_items(memory: MemoryService, user_id: int, items: list[Remembered], *,
                       progress: Callable[[int], None] | None = None) -> Imported:
    """Keep `items` in batches (MemoryOff when the user's memory is off). A line whose
    `source_id` the user's memory already holds is skipped: importing the same history twice
    (a retried upload, an export imported again) keeps each message once. Lines without a
    `source_id` cannot be told apart, and are always kept."""
    index = await asyncio.to_thread(memory.index_sync, user_id)
    known = index.source_ids()
    fresh: list[Remembered] = []
    for item in items:
        ids = item.meta.get("source_ids") or []
        if ids and all(i in known for i in ids):
            continue
        known.update(ids)
        fresh.append(item)
    skipped = len(items) - len(fresh)
    if progress is not None and skipped:
        progress(skipped)
    kept = 0
    for start in range(0, len(fresh), BATCH):
        batch = fresh[start:start + BATCH]
        kept += len(await memory.keep(user_id, batch))
        if progress is not None:
            progress(len(batch))
    return Imported(kept, skipped, fresh)
