"""The Gateway connection of a bot, held by exactly one server process (channels.connections).

Every `switchboard serve` process runs a keeper. The one that takes the lease connects (and
reconnects, resuming the session, for as long as the lease is its own); the others look every
`poll_interval_s` whether it is free. A holder that stops gives it up at once, leaving the
session for the next to resume; one killed is replaced as soon as the registry knows it dead
(a heartbeat or two on its own host) or its lease lapses (`gateway_lease_s`), and its successor
resumes the session from the seq last recorded: Discord replays what was sent meanwhile, and
the inbox drops what was already recorded. A holder that cannot renew its lease (the database
away, or another process took over) closes its connection before the lease ends.

Each MESSAGE_CREATE goes to the channel layer's intake (one fast write, never a model call),
in order; the events it ignores (not addressed, a bot's) cost nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from switchboard.billing.accounts import now_ms
from switchboard.channels import connections
from switchboard.channels.connections import Session
from switchboard.channels.discord import interactions
from switchboard.channels.discord.adapter import INTENTS, Discord
from switchboard.channels.discord.gateway import Ending, GatewayConnection, Next

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from switchboard.channels.hub import ChannelHub

log = logging.getLogger(__name__)
T = TypeVar("T")
IDENTIFY_SPACING_S = 5.5  # Discord: one IDENTIFY per 5 seconds (max_concurrency 1)
STOPPED_RETRY_S = 300.0  # after a close that reconnecting cannot fix (a bad token): try again this much later
HOUSEKEEPING_S = 3600.0


class GatewayKeeper:
    def __init__(self, hub: ChannelHub, channel: Discord) -> None:
        self.hub = hub
        self.channel = channel
        self.lease_s = channel.config.gateway_lease_s
        self.session = Session()
        self._gateway_url: str | None = None
        self._last_identify = 0.0
        self._failures = 0

    async def _write(self, work: Callable[[Connection], T]) -> T:
        return await self.hub.runtime.runner.run(work)

    async def run(self) -> None:
        """Forever: hold the connection whenever it is free."""
        failing = False
        while True:
            me = self.hub.process_id
            taken: Session | None = None
            if me is not None:
                try:
                    taken = await self._write(lambda c: connections.take(
                        c, self.channel.name, self.channel.bot_id, me, now_ms(), int(self.lease_s * 1000)))
                    failing = False
                except Exception:  # noqa: BLE001 - the database away: asked again at the next poll
                    if not failing:
                        log.exception("discord: could not ask for the Gateway connection")
                    failing = True
            if taken is None:
                await asyncio.sleep(self.hub.config.poll_interval_s)
                continue
            log.info("discord: this process holds the Gateway connection (%s)",
                     "resuming the session" if taken.session_id else "a new session")
            self.session = taken
            try:
                await self._hold(me)  # type: ignore[arg-type]
            except Exception:  # noqa: BLE001 - a bug must not end the keeper: the lease lapses, taken again
                log.exception("discord: the Gateway keeper failed")
                await asyncio.sleep(self.lease_s)

    async def _hold(self, me: int) -> None:
        lost = asyncio.Event()
        renewing = asyncio.create_task(self._renew(me, lost))
        try:
            await self._housekeeping()
            while not lost.is_set():
                ending = await _unless(lost, self._connect())
                if ending is None:
                    break
                delay = await self._after(ending)
                if await _wait(lost, delay):
                    break
            log.warning("discord: the Gateway connection is another process's now")
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
            if not lost.is_set():  # stopping: the next holder takes over (and resumes) at once
                snapshot = _copy(self.session)
                with contextlib.suppress(Exception):
                    await self._write(lambda c: connections.release(c, self.channel.name, self.channel.bot_id, me,
                                                                    now_ms(), snapshot))

    async def _after(self, ending: Ending) -> float:
        """The wait before the next connection, and what to say about this one's end."""
        if ending.ready:
            self._failures = 0
        else:
            self._failures += 1
        if ending.next is Next.STOP:
            log.error("discord: %s; trying again in %.0f s", ending.reason, STOPPED_RETRY_S)
            await self.hub.note_error(self.channel.name, ending.reason)
            return STOPPED_RETRY_S
        if self._failures:
            log.warning("discord: %s (%d in a row)", ending.reason, self._failures)
            if self._failures >= 3:
                await self.hub.note_error(self.channel.name, f"Gateway: {ending.reason}")
        else:
            log.info("discord: %s; %s", ending.reason, ending.next.value)
        backoff = min(60.0, 2.0 ** (self._failures - 1)) * random.uniform(0.5, 1.0) if self._failures else 0.0
        return max(ending.delay_s, backoff)

    async def _connect(self) -> Ending:
        try:
            if self.channel.user_id is None:  # who "me" is in mentions (a RESUME brings no READY)
                await self.channel.start()
            s = self.session
            url = s.resume_url if s.session_id and s.resume_url and s.seq is not None else await self._identify_slot()
            if url is None:
                return Ending(Next.IDENTIFY, "could not ask Discord for the Gateway's address", False)
            return await GatewayConnection(url, self.channel.token, INTENTS, s, self._on_dispatch).run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported; tried again after a backoff
            return Ending(Next.RESUME, f"could not connect: {exc!r}", False)

    async def _identify_slot(self) -> str | None:
        """The Gateway's URL (GET /gateway/bot), once this process may identify: at most once per
        5 s, and not while the day's session starts are used up."""
        answer = await self.channel.rest.call("GET", "GET /gateway/bot", "", "/gateway/bot")
        if not answer.result.ok:
            log.warning("discord: GET /gateway/bot: %s", answer.result.error)
            return self._gateway_url
        body = answer.body
        self._gateway_url = str(body.get("url") or "") or self._gateway_url
        limit = body.get("session_start_limit") if isinstance(body.get("session_start_limit"), dict) else {}
        if limit.get("remaining") == 0 and isinstance(limit.get("reset_after"), (int, float)):
            wait = float(limit["reset_after"]) / 1000
            log.error("discord: the day's session starts are used up; the next in %.0f s", wait)
            await self.hub.note_error(self.channel.name, f"Discord's session start limit reached; next in {wait:.0f} s")
            await asyncio.sleep(wait)
        spacing = self._last_identify + IDENTIFY_SPACING_S - time.monotonic()
        if spacing > 0:
            await asyncio.sleep(spacing)
        self._last_identify = time.monotonic()
        return self._gateway_url

    async def _on_dispatch(self, kind: str, data: Any) -> None:
        if kind == "MESSAGE_CREATE" and isinstance(data, dict):
            message = self.channel.message(data)
            if message is not None:
                outcome = await self.hub.intake.accept(self.channel, message)
                log.debug("discord message %s: %s", message.external_id, outcome)
        elif kind == "READY" and isinstance(data, dict):
            self.channel.know_myself(data.get("user") or {})
            await self._record()  # the new session, for whoever resumes it next

    async def _record(self) -> bool:
        me, snapshot = self.hub.process_id, _copy(self.session)
        if me is None:
            return False
        return await self._write(lambda c: connections.renew(c, self.channel.name, self.channel.bot_id, me, now_ms(),
                                                             int(self.lease_s * 1000), snapshot))

    async def _renew(self, me: int, lost: asyncio.Event) -> None:
        """Every third of the lease: renew it and record the session. Not renewed before it
        would lapse (or found taken): the connection is given up."""
        valid_until = time.monotonic() + self.lease_s
        last_housekeeping = time.monotonic()
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                ours: bool | None = await self._record() and self.hub.process_id == me
            except Exception:  # noqa: BLE001 - tried again at the next third, while the lease lasts
                log.warning("discord: could not renew the Gateway lease", exc_info=True)
                ours = None
            if ours:
                valid_until = time.monotonic() + self.lease_s
            if ours is False or time.monotonic() > valid_until - self.lease_s / 3:
                lost.set()
                return
            if time.monotonic() - last_housekeeping > HOUSEKEEPING_S:
                last_housekeeping = time.monotonic()
                await self._housekeeping()

    async def _housekeeping(self) -> None:
        with contextlib.suppress(Exception):
            await self._write(lambda c: interactions.forget_old(c, now_ms()))


def _copy(session: Session) -> Session:
    return Session(session.session_id, session.resume_url, session.seq)


async def _unless(lost: asyncio.Event, work: Awaitable[T]) -> T | None:
    """`work`'s result, or None (and `work` cancelled) when `lost` is set first."""
    task = asyncio.ensure_future(work)
    waiting = asyncio.create_task(lost.wait())
    try:
        await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiting.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    return task.result() if task.done() and not task.cancelled() and lost.is_set() is False else None


async def _wait(lost: asyncio.Event, delay_s: float) -> bool:
    """Sleep `delay_s`; True if `lost` was set meanwhile."""
    if delay_s <= 0:
        return lost.is_set()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(lost.wait(), delay_s)
    return lost.is_set()
