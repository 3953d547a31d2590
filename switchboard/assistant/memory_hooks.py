"""The assistant's side of long-term memory (switchboard.memory): recall before a turn, and
after it, in the background (never delaying the reply), keep what was said and extract facts.

- Recall: the notes most relevant to the user's message, fitted to a token budget
  (`memory.recall_tokens`, at most an eighth of the model's window), fenced as data in the
  prompt (assistant.context.memory_message).
- Keep: the turn's user message and reply become episodic memories of the user (their
  conversation is their thread, each cites its message).
- Extract: where the plan allows it, once a conversation has been quiet for
  `memory.extraction_delay_s`, its messages since the last extraction go to a low-cost model
  (memory.extraction; metered and charged). The mark of what was extracted is kept in the
  database, so a restart delays extraction, never loses it.

A failure here is logged and never fails a turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import Connection, select

from switchboard.assistant.conversations import Message
from switchboard.assistant.profile import Profile
from switchboard.memory.extraction import Said, extract
from switchboard.memory.recall import recall
from switchboard.memory.service import MemoryService, Remembered, now_ms
from switchboard.store.conflict import insert_or_ignore
from switchboard.store.memory_schema import memory_extraction_marks

if TYPE_CHECKING:
    from switchboard.assistant.services import AssistantServices

log = logging.getLogger(__name__)
KEPT_KINDS = frozenset({"text"})  # commands, reminders and errors are not memories


class MemoryHooks:
    def __init__(self, services: AssistantServices, memory: MemoryService) -> None:
        self.services = services
        self.memory = memory
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending: dict[str, asyncio.Task[None]] = {}

    # -- before a turn ------------------------------------------------------------------------
    async def notes(self, profile: Profile, conversation_id: str, message: str, now: datetime,
                    budget_tokens: int, count: Callable[[str], int]) -> list[str]:
        """The recalled notes that fit `budget_tokens` (by `count`), most relevant first."""
        config = self.memory.config
        if not config.enabled or budget_tokens <= 0:
            return []
        try:
            found = await recall(self.memory, profile.user_id, message, now=now, time_zone=profile.time_zone,
                                 conversation_id=conversation_id, limit=config.recall_limit)
        except Exception:  # noqa: BLE001 - a turn without memories beats no turn
            log.exception("memory recall failed for user %s", profile.user_id)
            return []
        kept, used = [], 0
        for note in found:
            cost = count(note) + 2
            if used + cost > budget_tokens:
                continue
            kept.append(note)
            used += cost
        return kept

    # -- after a turn -------------------------------------------------------------------------
    def after_turn(self, profile: Profile, conversation_id: str, said: list[Message]) -> None:
        """Keep the turn's messages and schedule extraction, in the background."""
        if not self.memory.config.enabled:
            return
        self._spawn(self._keep(profile, conversation_id, said))
        plan = self.services.runtime.settings.plans.get(profile.plan)
        if plan is not None and plan.memory_extraction:
            old = self._pending.pop(conversation_id, None)
            if old is not None:
                old.cancel()
            task = self._spawn(self._extract_later(profile, conversation_id))
            self._pending[conversation_id] = task
            task.add_done_callback(lambda t: self._pending.pop(conversation_id, None)
                                   if self._pending.get(conversation_id) is t else None)

    def _spawn(self, work) -> asyncio.Task[None]:  # type: ignore[no-untyped-def]
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _keep(self, profile: Profile, conversation_id: str, said: list[Message]) -> None:
        items = []
        for m in said:
            if m.kind in KEPT_KINDS and m.role in ("user", "assistant") and m.content and m.content.strip():
                name = profile.display_name if m.role == "user" else "Assistant"
                items.append(Remembered("message", m.content, m.created_ms, {
                    "role": m.role, "name": name, "source_ids": [m.uid], "thread": conversation_id,
                    "sources": [{"conversation_id": conversation_id, "message_id": m.uid}], "origin": "conversation"}))
        try:
            await self.memory.keep(profile.user_id, items, check=False)
        except Exception:  # noqa: BLE001
            log.exception("could not keep the memories of a turn of user %s", profile.user_id)

    async def _extract_later(self, profile: Profile, conversation_id: str) -> None:
        await asyncio.sleep(self.memory.config.extraction_delay_s)
        services, uid = self.services, profile.user_id
        try:
            def since_mark(conn: Connection) -> list[Message]:
                mark = conn.execute(select(memory_extraction_marks.c.upto_message_id).where(
                    memory_extraction_marks.c.conversation_id == conversation_id)).scalar()
                return services.conversations.messages(conn, uid, conversation_id, after=mark, limit=200)

            found = await services.read(uid, since_mark)
            said = [Said(m.uid, m.role, m.content or "", m.created_ms, conversation_id) for m in found
                    if m.kind in KEPT_KINDS and m.role in ("user", "assistant") and m.content]
            if not any(s.role == "user" for s in said):
                return
            await extract(services.runtime.inference, self.memory, uid, profile.plan, said,
                          now=datetime.fromtimestamp(now_ms() / 1000).astimezone())
            upto = found[-1].id

            def mark(conn: Connection) -> None:
                at = now_ms()
                if not insert_or_ignore(conn, memory_extraction_marks, dict(
                        conversation_id=conversation_id, user_id=uid, upto_message_id=upto, updated_ms=at),
                        on=["conversation_id"]):
                    conn.execute(memory_extraction_marks.update().where(
                        memory_extraction_marks.c.conversation_id == conversation_id)
                        .values(upto_message_id=upto, updated_ms=at))

            await services.write(uid, mark)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001
            log.exception("memory extraction failed for user %s in %s", uid, conversation_id)

    # -- lifecycle ----------------------------------------------------------------------------
    async def idle(self) -> None:
        """Wait for the background work started so far (tests, a clean stop)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
