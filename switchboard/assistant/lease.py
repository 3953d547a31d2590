"""One turn at a time per conversation, across server processes.

Within a process, turns of one conversation queue on an asyncio.Lock. Across processes, the
conversation row carries a lease (`busy_until_ms`, `busy_by`), taken with a guarded UPDATE that
succeeds only if no other owner holds an unexpired lease, renewed while the turn runs, and
released at its end. A process that dies mid-turn leaves a lease that expires after `lease_s`,
so the conversation is never stuck for longer. A second message waits for the first turn
(polling the lease) rather than being refused, up to `wait_s`.

The lease is written through the process's writer (store.runner), in the user's lane, like the
turn's other writes: the claim carries the turn's first write (the user's message) in its own
transaction, and the release rides in the turn's last write (`Held.last_write`; failing that,
it is queued without being waited for). A turn thus pays no transaction of its own for the
lease. A claim by this process succeeds whatever the row says (it is the owner; its own turns
queue on the lock), and a release clears only the lease it took (its end time), never the next
turn's, should the writer re-run it after that turn's claim.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Generic, TypeVar

from sqlalchemy import Connection, bindparam, or_, select, update

from switchboard.core.errors import NotFound, SwitchboardError
from switchboard.store.assistant_schema import conversations
from switchboard.store.runner import TransactionRunner

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


# Built once (every turn runs both): see assistant.conversations.
_CLAIM = (update(conversations)
          .where(conversations.c.id == bindparam("conv_id"),
                 or_(conversations.c.busy_until_ms.is_(None), conversations.c.busy_until_ms < bindparam("now"),
                     conversations.c.busy_by == bindparam("owner")))
          .values(busy_until_ms=bindparam("until"), busy_by=bindparam("owner")))
_EXISTS = select(conversations.c.id).where(conversations.c.id == bindparam("conv_id"))
_RELEASE = (update(conversations)
            .where(conversations.c.id == bindparam("conv_id"), conversations.c.busy_by == bindparam("owner"),
                   conversations.c.busy_until_ms == bindparam("until"))
            .values(busy_until_ms=None, busy_by=None))


class ConversationBusy(SwitchboardError):
    status = 409
    type = "invalid_request_error"
    code = "conversation_busy"


class Held(Generic[T]):
    """A lease held by a turn: whether the turn waited for it (another turn ran first, so what
    the caller read before may have changed), what the work handed to `hold` returned in the
    claim's transaction, and the lease's current end (`until`, kept by renewals)."""

    def __init__(self, leases: ConversationLeases, conv_id: str, order_key: int, until: int, waited: bool,
                 first: T | None) -> None:
        self.leases, self.conv_id, self.order_key = leases, conv_id, order_key
        self.until = until
        self.waited = waited
        self.first = first
        self.ending = asyncio.Event()  # no renewal is sent once set
        self.released = False

    async def last_write(self, write: Callable[[Callable[[Connection], R]], Awaitable[R]],
                         work: Callable[[Connection], R]) -> R:
        """Run `work`, the turn's last write, through `write` (the caller's door to the writer)
        with the lease released in its transaction; no renewal is sent once it is queued. If the
        write fails, `hold` releases the lease on its own."""
        self.ending.set()

        def work_then_release(conn: Connection) -> R:
            result = work(conn)
            self.leases.release(conn, self.conv_id, self.until)
            return result

        result = await write(work_then_release)
        self.released = True
        return result


class ConversationLeases:
    def __init__(self, runner: TransactionRunner, *, lease_s: float = 60.0, poll_s: float = 0.05,
                 wait_s: float = 300.0) -> None:
        self.runner = runner
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.wait_s = wait_s
        self.owner = f"{socket.gethostname()[:30]}:{os.getpid()}:{secrets.token_hex(4)}"
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}  # conversation -> (lock, users of it)

    def claim(self, conn: Connection, conv_id: str) -> int | None:
        """Take or renew the lease, in the caller's transaction: when it now ends (ms), or None
        if another owner holds it."""
        now = int(time.time() * 1000)
        until = now + int(self.lease_s * 1000)
        result = conn.execute(_CLAIM, {"conv_id": conv_id, "now": now, "owner": self.owner, "until": until})
        return until if result.rowcount == 1 else None

    def release(self, conn: Connection, conv_id: str, until: int) -> None:
        """Release the lease taken or last renewed with `until`: a later claim of this process
        (the next turn, whose claim may commit first if this release's batch is re-run) keeps its own."""
        conn.execute(_RELEASE, {"conv_id": conv_id, "owner": self.owner, "until": until})

    def _claim_then(self, conv_id: str, first: Callable[[Connection], T] | None
                    ) -> Callable[[Connection], tuple[int | None, T | None]]:
        def work(conn: Connection) -> tuple[int | None, T | None]:
            until = self.claim(conn, conv_id)
            if until is None:
                if conn.execute(_EXISTS, {"conv_id": conv_id}).first() is None:  # deleted meanwhile: no wait
                    raise NotFound(f"No conversation found with id '{conv_id}'.", param="conversation_id")
                return None, None
            return until, (first(conn) if first is not None else None)
        return work

    async def _renew(self, held: Held[T]) -> None:
        """Renew every third of the lease until the turn ends: a failed renewal (a database
        hiccup) is tried again at the next, two more chances before the lease lapses, and never
        ends the turn. A renewal records the lease's new end as it commits it (in the writer's
        thread), so that a release queued after it matches that end."""
        def renew(conn: Connection) -> int | None:
            until = self.claim(conn, held.conv_id)
            if until is not None:
                held.until = until
            return until

        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(held.ending.wait(), self.lease_s / 3)
                return
            try:
                if await self.runner.run(renew, order_key=held.order_key) is None:
                    log.warning("the lease on conversation %s lapsed mid-turn and was taken by another process",
                                held.conv_id)
            except Exception:  # noqa: BLE001 - see the docstring
                log.exception("could not renew the lease on conversation %s", held.conv_id)

    @contextlib.asynccontextmanager
    async def hold(self, conv_id: str, *, order_key: int = 0,
                   first: Callable[[Connection], T] | None = None) -> AsyncIterator[Held[T]]:
        """Run the block as the conversation's only turn; ConversationBusy after `wait_s`.
        `first` (database work) runs in the transaction that takes the lease, once taken;
        `order_key` is the writer lane (the user's id, as for the turn's other writes)."""
        lock, users = self._locks.get(conv_id, (asyncio.Lock(), 0))
        waited = lock.locked()
        self._locks[conv_id] = (lock, users + 1)
        deadline = time.monotonic() + self.wait_s
        try:
            try:
                await asyncio.wait_for(lock.acquire(), self.wait_s)
            except TimeoutError:
                raise ConversationBusy("Another message to this conversation is still being answered; "
                                       "try again in a moment.") from None
            try:
                claim = self._claim_then(conv_id, first)
                while (taken := await self.runner.run(claim, order_key=order_key))[0] is None:
                    waited = True
                    if time.monotonic() > deadline:
                        raise ConversationBusy("Another message to this conversation is still being answered "
                                               "(by another server); try again in a moment.")
                    await asyncio.sleep(self.poll_s)
                held = Held(self, conv_id, order_key, taken[0], waited, taken[1])
                renew = asyncio.create_task(self._renew(held))
                try:
                    yield held
                finally:
                    held.ending.set()
                    try:
                        await asyncio.shield(renew)
                    finally:
                        if not held.released:
                            self.runner.submit_nowait(lambda c: self.release(c, conv_id, held.until),
                                                      order_key=order_key)
            finally:
                lock.release()
        finally:
            lock_now, users_now = self._locks[conv_id]
            if users_now <= 1:
                del self._locks[conv_id]
            else:
                self._locks[conv_id] = (lock_now, users_now - 1)
