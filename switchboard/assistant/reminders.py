"""Reminders: set, listed, cancelled, and delivered at their time, exactly once.

A reminder is a row with its next run time. Delivering a run is one transaction: a guarded
UPDATE moves `next_run_ms` on (or marks a one-off done) only if it still holds the time that was
found due, and the reminder's message is written into its conversation in the same
transaction. However many server processes look at the same due row, one UPDATE matches and
one message is written; the others change nothing. A run found long after its time (every server
was down) is delivered once, marked late; a recurring reminder then moves to its next time
after now, not through every run it missed. A reminder that cannot be delivered for good (its
text no longer decrypts, its rule or zone no longer reads) is marked failed, and the user is told
one was due: it must not hold up the reminders after it, tick after tick.

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
from sqlalchemy.exc import SQLAlchemyError

from switchboard.assistant.conversations import Conversations, ContentUnreadable, Message
from switchboard.assistant.when import Schedule, next_run, zone
from switchboard.billing.accounts import now_ms
from switchboard.core.errors import NotFound
from switchboard.crypto import Binding, CryptoError, KeyRing
from switchboard.store.assistant_schema import reminders
from switchboard.store.db import read

log = logging.getLogger(__name__)

# A run delivered this long after its time says so: well past the 10 s a running server takes.
LATE_AFTER_MS = 30_000
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


def _local(ms: int, time_zone: str) -> str:
    """ "at 09:00 on Friday 27 March" in the reminder's zone (UTC if that no longer reads)."""
    try:
        tz, name = zone(time_zone), time_zone
    except ValueError:
        tz, name = timezone.utc, "UTC"
    return datetime.fromtimestamp(ms / 1000, tz).strftime("at %H:%M on %A %d %B") + f" ({name})"


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
        try:
            text = self.keyring.decrypt(self._binding(int(row.user_id), int(row.id)), bytes(row.text_ct)).decode("utf-8")
        except CryptoError as exc:
            raise ContentUnreadable.of("reminder", f"rem_{row.id}", exc) from None
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
                            .order_by(reminders.c.next_run_ms, reminders.c.id).limit(_BATCH)).all()
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
        content = f"⏰ Reminder: {reminder.text}"
        if at - due_ms > LATE_AFTER_MS:
            content += f" (late: this was due {_local(due_ms, reminder.time_zone)}, while the service was down)"
        return self.conversations.add_message(conn, reminder.user_id, reminder.conversation_id, role="assistant",
                                              kind="reminder", content=content, at=at)

    def fail(self, conn: Connection, rid: int, due_ms: int, at: int, *, tell: bool = True) -> Message | None:
        """Give up on reminder `rid` (found due at `due_ms`) for good: marked failed and, with
        `tell`, the user told that one was due and could not be read (without its text). None if
        it moved meanwhile."""
        row = conn.execute(select(reminders.c.user_id, reminders.c.conversation_id).where(reminders.c.id == rid)).first()
        claimed = conn.execute(update(reminders)
                               .where(reminders.c.id == rid, reminders.c.status == "active",
                                      reminders.c.next_run_ms == due_ms)
                               .values(status="failed", last_run_ms=at)).rowcount
        if row is None or claimed != 1 or not tell:
            return None
        return self.conversations.add_message(
            conn, int(row.user_id), row.conversation_id, role="assistant", kind="reminder", at=at,
            content=f"⏰ A reminder (rem_{rid}) was due now, but it could not be read back from storage, so I "
                    f"cannot say what it was. It has been stopped; please set it again.")


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
            message = await self._deliver(rid, user_id, due_ms, at)
            if message is None:
                continue
            delivered += 1
            for hook in self.on_delivered:
                try:
                    await hook(message)
                except Exception:  # noqa: BLE001 - a channel's failure must not stop the others
                    log.exception("reminder delivery hook failed")
        return delivered

    async def _deliver(self, rid: int, user_id: int, due_ms: int, at: int) -> Message | None:
        """Deliver one run. One that can never be delivered is failed; after a database error
        the row stays due for the next tick. Neither stops the reminders after it."""
        reminders_ = self.reminders
        for tell in (None, True, False):  # deliver; else fail it, telling the user; else fail it quietly
            try:
                if tell is not False:  # failing quietly needs no key: the user's may be what is broken
                    await reminders_.keyring.prepare(user_id)
                if tell is None:
                    return await self._run(lambda conn: reminders_.deliver(conn, rid, due_ms, at), order_key=user_id)
                return await self._run(lambda conn: reminders_.fail(conn, rid, due_ms, at, tell=bool(tell)),
                                       order_key=user_id)
            except asyncio.CancelledError:
                raise
            except SQLAlchemyError:
                log.exception("reminder rem_%s: database error; tried again at the next tick", rid)
                return None
            except Exception:  # noqa: BLE001 - unreadable text or key, a rule or zone that no longer reads
                log.exception("reminder rem_%s cannot be delivered (step %s); marking it failed", rid, tell)
        return None

    async def run_forever(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - retried at the next tick
                log.exception("reminder scheduler tick failed")
            await asyncio.sleep(self.interval_s)
