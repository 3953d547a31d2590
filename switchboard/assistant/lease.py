"""One turn at a time per conversation, across server processes.

Within a process, turns of one conversation queue on an asyncio.Lock. Across processes, the
conversation row carries a lease (`busy_until_ms`, `busy_by`), taken with a guarded UPDATE that
succeeds only if no other owner holds an unexpired lease, renewed while the turn runs, and
released at its end. A process that dies mid-turn leaves a lease that expires after `lease_s`,
so the conversation is never stuck for longer. A second message waits for the first turn
(polling the lease) rather than being refused, up to `wait_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator

from sqlalchemy import Engine, or_, update

from switchboard.core.errors import SwitchboardError
from switchboard.store.assistant_schema import conversations

log = logging.getLogger(__name__)


class ConversationBusy(SwitchboardError):
    status = 409
    type = "invalid_request_error"
    code = "conversation_busy"


class ConversationLeases:
    def __init__(self, engine: Engine, *, lease_s: float = 60.0, poll_s: float = 0.05, wait_s: float = 300.0) -> None:
        self.engine = engine
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.wait_s = wait_s
        self.owner = f"{socket.gethostname()[:30]}:{os.getpid()}:{secrets.token_hex(4)}"
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}  # conversation -> (lock, users of it)

    def _claim(self, conv_id: str) -> bool:
        now = int(time.time() * 1000)
        with self.engine.begin() as conn:
            result = conn.execute(
                update(conversations)
                .where(conversations.c.id == conv_id,
                       or_(conversations.c.busy_until_ms.is_(None), conversations.c.busy_until_ms < now,
                           conversations.c.busy_by == self.owner))
                .values(busy_until_ms=now + int(self.lease_s * 1000), busy_by=self.owner)
            )
            return result.rowcount == 1

    def _release(self, conv_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(conversations)
                         .where(conversations.c.id == conv_id, conversations.c.busy_by == self.owner)
                         .values(busy_until_ms=None, busy_by=None))

    async def _renew(self, conv_id: str) -> None:
        """Renew every third of the lease: a failed renewal (a database hiccup) is tried again at
        the next, two more chances before the lease lapses, and never ends the turn."""
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                if not await asyncio.to_thread(self._claim, conv_id):
                    log.warning("the lease on conversation %s lapsed mid-turn and was taken by another process", conv_id)
            except Exception:  # noqa: BLE001 - see the docstring
                log.exception("could not renew the lease on conversation %s", conv_id)

    @contextlib.asynccontextmanager
    async def hold(self, conv_id: str) -> AsyncIterator[bool]:
        """Run the block as the conversation's only turn; ConversationBusy after `wait_s`. The
        block gets whether it had to wait (another turn ran first, so what it read before may
        have changed)."""
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
                while not await asyncio.to_thread(self._claim, conv_id):
                    waited = True
                    if time.monotonic() > deadline:
                        raise ConversationBusy("Another message to this conversation is still being answered "
                                               "(by another server); try again in a moment.")
                    await asyncio.sleep(self.poll_s)
                renew = asyncio.create_task(self._renew(conv_id))
                try:
                    yield waited
                finally:
                    renew.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await renew
                    await asyncio.shield(asyncio.to_thread(self._release, conv_id))
            finally:
                lock.release()
        finally:
            lock_now, users_now = self._locks[conv_id]
            if users_now <= 1:
                del self._locks[conv_id]
            else:
                self._locks[conv_id] = (lock_now, users_now - 1)
