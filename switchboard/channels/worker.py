"""The channel work of one server process: answer recorded messages, send queued parts, queue
reminders. Every `switchboard serve` process runs it (as each runs the reminder scheduler);
processes share the work through the database (channels.queue), each woken at once by its own
webhooks and looking every `poll_interval_s` for what others left (a process that died).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from switchboard.billing.accounts import now_ms
from switchboard.channels import inbox, outbox
from switchboard.store.db import read

if TYPE_CHECKING:
    from switchboard.channels.hub import ChannelHub

log = logging.getLogger(__name__)
REMINDER_SWEEP_S = 5.0


class Worker:
    def __init__(self, hub: ChannelHub) -> None:
        self.hub = hub
        self.inbox_event = asyncio.Event()
        self.outbox_event = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._answering: dict[int, asyncio.Task[None]] = {}
        self._sending: dict[int, asyncio.Task[None]] = {}

    def start(self) -> None:
        poll = self.hub.config.poll_interval_s
        self._loops = [
            asyncio.create_task(run_loop(self.inbox_event, poll, self._answer_waiting, "answering")),
            asyncio.create_task(run_loop(self.outbox_event, poll, self._send_due, "sending")),
            asyncio.create_task(run_loop(self.hub.reminders.event, REMINDER_SWEEP_S, self.hub.reminders.sweep,
                                         "queueing reminders")),
        ]
        self.inbox_event.set()  # what a predecessor left, at once
        self.outbox_event.set()

    async def stop(self) -> None:
        """Stop the loops and this process's turns and sends. What they held is taken over at
        once by the others (or the next start): this process is then marked stopped."""
        tasks = [*self._loops, *self._answering.values(), *self._sending.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._loops = []

    async def _answer_waiting(self) -> None:
        found = await asyncio.to_thread(read, self.hub.runtime.engine, lambda c: inbox.waiting(c, now_ms()))
        self._spawn(found, self._answering, self.hub.answerer.answer)

    async def _send_due(self) -> None:
        found = await asyncio.to_thread(read, self.hub.runtime.engine, lambda c: outbox.due(c, now_ms()))
        self._spawn(found, self._sending, self.hub.sender.deliver)

    def _spawn(self, found: list[tuple[int, int]], running: dict[int, asyncio.Task[None]],
               work: Callable[[int, int], Awaitable[None]]) -> None:
        for row_id, user_id in found:
            if row_id in running:
                continue
            if len(running) >= self.hub.config.concurrency:
                return
            task = asyncio.create_task(work(row_id, user_id))
            running[row_id] = task
            task.add_done_callback(lambda t, row_id=row_id: self._done(running, row_id, t))

    @staticmethod
    def _done(running: dict[int, asyncio.Task[None]], row_id: int, task: asyncio.Task[None]) -> None:
        running.pop(row_id, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("channels: work on %s failed", row_id, exc_info=task.exception())


async def run_loop(event: asyncio.Event, interval_s: float, step: Callable[[], Awaitable[object]], what: str) -> None:
    """Run `step` whenever `event` is set, and every `interval_s` anyway (work of other processes)."""
    failing = False
    while True:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(event.wait(), interval_s)
        event.clear()
        try:
            await step()
            failing = False
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - tried again at the next wake
            if not failing:
                log.exception("channels: %s failed", what)
            failing = True
