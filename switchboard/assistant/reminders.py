"""Reminders: set, listed, cancelled, and delivered at their time, exactly once.

A reminder is a row with its next run time. Delivering a run is one transaction: a guarded
UPDATE moves `next_run_ms` on (or marks a one-off done) only if it still holds the time that was
found due, and the reminder's message is written into its conversation in the same
transaction. However many server processes look at the same due row, one UPDATE matches and
one message is written; the others change nothing. A run found long after its time (every server
was down) is delivered once, marked late; a recurring reminder then moves to its next time
after now, not through every run it missed.

Delivery into a channel (Telegram...) is the channels' business: they read the message the
scheduler wrote (`on_delivered` hooks let them enqueue it in the same process).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, Engine, select, update

from switchboard.assistant.conversations import Conversations, Message
from switchboard.assistant.when import Schedule, next_run
from switchboard.billing.accounts import now_ms
from switchboard.core.errors import NotFound
from switchboard.crypto import Binding, KeyRing
from switchboard.store.assistant_schema import reminders
from switchboard.store.db import read

log = logging.getLogger(__name__)

LATE_AFTER_MS = 60_000  # a run delivered more than a minute after its time says it is late
_BATCH = 100


@dataclass(slots=True)
class Reminder:
    id: int
    user_id: int
    conversation_id: str
    text: str
    recurrence: str | None
    description: str | None
    time_zone: str
    next_run_ms: int
    status: str
    runs: int

    def public(self) -> dict[str, Any]:
        return {
            "id": f"rem_{self.id}", "object": "reminder", "text": self.text,
            "next_run_at": _iso(self.next_run_ms) if self.status == "active" else None,
            "recurrence": self.recurrence, "conversation_id": self.conversation_id, "status": self.status,
            "time_zone": self.time_zone, "runs": self.runs,
        }


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat().replace("+00:00", "Z")


def reminder_id(text: str) -> int:
    """The row id of a public reminder id ("rem_12" or "12"); NotFound for anything else."""
    digits = text.removeprefix("rem_")
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 18:
        raise NotFound(f"No reminder found with id '{text}'.", param="reminder_id")
    return int(digits)


class Reminders:
    def __init__(self, keyring: KeyRing, conversations: Conversations) -> None:
        self.keyring = keyring
        self.conversations = conversations

    def _binding(self, user_id: int, reminder_id: int) -> Binding:
        return Binding(user_id, "reminders", reminder_id, "text")

    def create(self, conn: Connection, user_id: int, conv_id: str, text: str, schedule: Schedule,
               time_zone: str) -> Reminder:
        at = now_ms()
        # The row id is the ciphertext's binding, so the row is written first with a placeholder.
        row_id = int(conn.execute(reminders.insert().values(
            user_id=user_id, conversation_id=conv_id, text_ct=b"", recurrence=schedule.recurrence,
            time_zone=time_zone, next_run_ms=int(schedule.first_run.timestamp() * 1000), status="active",
            runs=0, created_ms=at,
        )).inserted_primary_key[0])
        sealed = self.keyring.encrypt(self._binding(user_id, row_id), text.encode("utf-8"))
        conn.execute(update(reminders).where(reminders.c.id == row_id).values(text_ct=sealed))
        return Reminder(row_id, user_id, conv_id, text, schedule.recurrence, schedule.description or None, time_zone,
                        int(schedule.first_run.timestamp() * 1000), "active", 0)

    def _reminder(self, row: Any) -> Reminder:
        text = self.keyring.decrypt(self._binding(int(row.user_id), int(row.id)), bytes(row.text_ct)).decode("utf-8")
        return Reminder(int(row.id), int(row.user_id), row.conversation_id, text, row.recurrence, None,
                        row.time_zone, int(row.next_run_ms), row.status, int(row.runs))

    def list(self, conn: Connection, user_id: int, *, include_done: bool = False) -> list[Reminder]:
        query = select(reminders).where(reminders.c.user_id == user_id)
        if not include_done:
            query = query.where(reminders.c.status == "active")
        rows = conn.execute(query.order_by(reminders.c.next_run_ms, reminders.c.id)).all()
        return [self._reminder(row) for row in rows]

    def get(self, conn: Connection, user_id: int, rid: int) -> Reminder:
        row = conn.execute(select(reminders).where(reminders.c.id == rid, reminders.c.user_id == user_id)).first()
        if row is None:
            raise NotFound(f"No reminder found with id 'rem_{rid}'.", param="reminder_id")
        return self._reminder(row)

    def cancel(self, conn: Connection, user_id: int, rid: int) -> Reminder:
        reminder = self.get(conn, user_id, rid)
        if reminder.status == "active":
            conn.execute(update(reminders).where(reminders.c.id == rid, reminders.c.user_id == user_id,
                                                 reminders.c.status == "active").values(status="cancelled"))
            reminder.status = "cancelled"
        return reminder

    # -- delivery ---------------------------------------------------------------------------
    def due(self, conn: Connection, at: int) -> list[tuple[int, int, int]]:
        """(id, user id, next run) of the active reminders due at `at`, oldest first."""
        rows = conn.execute(select(reminders.c.id, reminders.c.user_id, reminders.c.next_run_ms)
                            .where(reminders.c.status == "active", reminders.c.next_run_ms <= at)
                            .order_by(reminders.c.next_run_ms).limit(_BATCH)).all()
        return [(int(r.id), int(r.user_id), int(r.next_run_ms)) for r in rows]

    def deliver(self, conn: Connection, rid: int, due_ms: int, at: int) -> Message | None:
        """Deliver the run of reminder `rid` due at `due_ms`, if nobody did: its message, or None."""
        row = conn.execute(select(reminders).where(reminders.c.id == rid)).first()
        if row is None or row.status != "active" or int(row.next_run_ms) != due_ms:
            return None
        if row.recurrence:
            after = datetime.fromtimestamp(max(at, due_ms) / 1000, timezone.utc)
            following = int(next_run(row.recurrence, row.time_zone, after).timestamp() * 1000)
            values: dict[str, Any] = {"next_run_ms": following}
        else:
            values = {"status": "done"}
        claimed = conn.execute(update(reminders)
                               .where(reminders.c.id == rid, reminders.c.status == "active",
                                      reminders.c.next_run_ms == due_ms)
                               .values(runs=reminders.c.runs + 1, last_run_ms=at, **values)).rowcount
        if claimed != 1:
            return None  # another process delivered it a moment ago
        reminder = self._reminder(row)
        late = at - due_ms > LATE_AFTER_MS
        content = f"⏰ Reminder: {reminder.text}"
        if late:
            content += f" (late: this was due at {_iso(due_ms)}, while the service was down)"
        return self.conversations.add_message(conn, reminder.user_id, reminder.conversation_id, role="assistant",
                                              kind="reminder", content=content, at=at)


Delivered = Callable[[Message], Awaitable[None]]


class Scheduler:
    """Every `interval_s`, delivers the reminders that are due. Runs in every server process."""

    def __init__(self, engine: Engine, reminders_: Reminders, run: Callable[..., Awaitable[Any]], *,
                 interval_s: float = 1.0, clock: Callable[[], int] = now_ms) -> None:
        self.engine = engine
        self.reminders = reminders_
        self._run = run  # runner.run: the write, on the ledger's writer (order_key = user)
        self.interval_s = interval_s
        self.clock = clock
        self.on_delivered: list[Delivered] = []

    async def tick(self) -> int:
        """Deliver what is due now; how many this process delivered."""
        at = self.clock()

        def find(conn: Connection) -> list[tuple[int, int, int]]:
            return self.reminders.due(conn, at)

        due = await asyncio.to_thread(read, self.engine, find)
        delivered = 0
        for rid, user_id, due_ms in due:
            await self.reminders.keyring.prepare(user_id)
            message = await self._run(lambda conn, rid=rid, due_ms=due_ms: self.reminders.deliver(conn, rid, due_ms, at),
                                      order_key=user_id)
            if message is None:
                continue
            delivered += 1
            for hook in self.on_delivered:
                try:
                    await hook(message)
                except Exception:  # noqa: BLE001 - a channel's failure must not stop the others
                    log.exception("reminder delivery hook failed")
        return delivered

    async def run_forever(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - retried at the next tick
                log.exception("reminder scheduler tick failed")
            await asyncio.sleep(self.interval_s)
