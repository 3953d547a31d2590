"""Discord's Gateway protocol (https://discord.com/developers/docs/events/gateway): one
websocket connection, from HELLO to its close.

    <- HELLO (op 10): the heartbeat interval
    -> IDENTIFY (op 2: token, intents) for a new session, or RESUME (op 6: session, last seq)
    <- READY (session_id, resume_gateway_url), or the events missed replayed, then RESUMED
    -> HEARTBEAT (op 1, the last seq) every interval, the first after interval x a random
       jitter; each acknowledged (op 11). One still unacknowledged when the next is due means a
       dead ("zombied") connection: it is closed and the session resumed.
    <- dispatches (op 0) numbered by `s`; HEARTBEAT asked for (op 1): sent at once;
       RECONNECT (op 7): resume elsewhere; INVALID_SESSION (op 9, d: resumable): resume, or
       identify afresh after 1-5 s.

A dispatch counts as received (its `s` becomes the seq that heartbeats carry and a RESUME asks
to continue from) only once its handler returned: a handler that fails closes the connection,
and the resume replays the event. Every close of ours uses code 4000, never 1000/1001 (with
those Discord ends the session), so that the session can always be resumed, by this process or
by the next one to hold the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from switchboard.channels.connections import Session

log = logging.getLogger(__name__)

DISPATCH, HEARTBEAT, IDENTIFY, RESUME, RECONNECT, INVALID_SESSION, HELLO, HEARTBEAT_ACK = 0, 1, 2, 6, 7, 9, 10, 11
OURS = 4000  # the close code of every close of ours: the session stays resumable
MAX_PAYLOAD = 32 * 1024 * 1024  # READY lists every server the bot is in
# Close codes after which reconnecting cannot help (a person must fix something).
FATAL = {4004: "Discord refused the bot token (4004 Authentication failed)",
         4010: "invalid shard (4010)", 4011: "Discord requires sharding for this many servers (4011)",
         4012: "invalid Gateway API version (4012)", 4013: "invalid intents (4013)",
         4014: "Discord refused the intents (4014 Disallowed intents)"}
NEW_SESSION = {4007, 4009}  # an invalid seq, a session timed out: identify afresh
INVALID_SESSION_WAIT_S = (1.0, 5.0)  # Discord: wait a random 1-5 s before identifying again


class Next(enum.Enum):
    RESUME = "resume"  # reconnect and resume the session (identify if there is none)
    IDENTIFY = "identify"  # reconnect with a new session
    STOP = "stop"  # do not reconnect on your own: `reason` says what must be fixed


@dataclass(frozen=True, slots=True)
class Ending:
    next: Next
    reason: str
    ready: bool  # the connection got as far as READY or RESUMED
    delay_s: float = 0.0


Handler = Callable[[str, Any], Awaitable[None]]


def with_query(url: str) -> str:
    return url.rstrip("/") + "/?v=10&encoding=json" if "?" not in url else url


class GatewayConnection:
    """One connection: `run()` returns how it ended. `session` is updated in place (READY sets
    it, each handled dispatch moves its seq), for the caller to record and to resume."""

    def __init__(self, url: str, token: str, intents: int, session: Session, handler: Handler) -> None:
        self.url = with_query(url)
        self.token = token
        self.intents = intents
        self.session = session
        self.handler = handler
        self.ready = False
        self._acked = True
        self._ending: Ending | None = None  # set when we close the connection ourselves

    def resuming(self) -> bool:
        s = self.session
        return bool(s.session_id and s.resume_url and s.seq is not None)

    async def run(self) -> Ending:
        resume = self.resuming()
        try:
            async with connect(self.url, max_size=MAX_PAYLOAD, compression=None, ping_interval=None,
                               open_timeout=15, close_timeout=3, user_agent_header="DiscordBot (switchboard, 1)") as ws:
                try:
                    return await self._serve(ws, resume)
                except asyncio.CancelledError:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(ws.close(OURS, "moving to another process"), 3)
                    raise
        except ConnectionClosed as exc:
            return self._closed(exc)
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError, ValueError) as exc:
            return Ending(Next.RESUME if resume else Next.IDENTIFY, f"could not connect: {exc!r}", self.ready)

    async def _serve(self, ws: ClientConnection, resume: bool) -> Ending:
        hello = orjson.loads(await asyncio.wait_for(ws.recv(), 20))
        if not isinstance(hello, dict) or hello.get("op") != HELLO:
            await ws.close(OURS, "expected HELLO")
            return Ending(Next.RESUME, "the Gateway did not say HELLO first", False, 1.0)
        interval = float(hello["d"]["heartbeat_interval"]) / 1000
        beating = asyncio.create_task(self._heartbeats(ws, interval))
        try:
            if resume:
                await self._send(ws, {"op": RESUME, "d": {"token": self.token, "session_id": self.session.session_id,
                                                          "seq": self.session.seq}})
            else:
                await self._send(ws, {"op": IDENTIFY, "d": {
                    "token": self.token, "intents": self.intents,
                    "properties": {"os": sys.platform, "browser": "switchboard", "device": "switchboard"}}})
            while True:
                payload = orjson.loads(await ws.recv())
                ending = await self._receive(ws, payload)
                if ending is not None:
                    return ending
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating

    async def _receive(self, ws: ClientConnection, payload: dict[str, Any]) -> Ending | None:
        op = payload.get("op")
        if op == DISPATCH:
            return await self._dispatch(ws, payload)
        if op == HEARTBEAT:
            await self._send(ws, {"op": HEARTBEAT, "d": self.session.seq})
        elif op == HEARTBEAT_ACK:
            self._acked = True
        elif op == RECONNECT:
            return await self._close(ws, Ending(Next.RESUME, "Discord asked for a reconnect", self.ready))
        elif op == INVALID_SESSION:
            if not payload.get("d"):
                self.session.clear()
            wait = random.uniform(*INVALID_SESSION_WAIT_S)
            how = Next.RESUME if payload.get("d") else Next.IDENTIFY
            return await self._close(ws, Ending(how, f"Discord invalidated the session ({how.value} next)", self.ready,
                                                wait))
        return None

    async def _dispatch(self, ws: ClientConnection, payload: dict[str, Any]) -> Ending | None:
        kind, seq, data = payload.get("t"), payload.get("s"), payload.get("d")
        if kind == "READY" and isinstance(data, dict):
            self.session.session_id = str(data.get("session_id") or "") or None
            self.session.resume_url = str(data.get("resume_gateway_url") or "") or None
            self.ready = True
        elif kind == "RESUMED":
            self.ready = True
        try:
            await self.handler(str(kind), data)
        except Exception as exc:  # noqa: BLE001 - resumed from before this event, which comes again
            log.exception("discord: handling %s (seq %s) failed; resuming from before it", kind, seq)
            return await self._close(ws, Ending(Next.RESUME, f"handling {kind} failed: {exc!r}", self.ready, 1.0))
        if isinstance(seq, int):
            self.session.seq = seq
        return None

    async def _heartbeats(self, ws: ClientConnection, interval: float) -> None:
        await asyncio.sleep(interval * random.random())
        while True:
            if not self._acked:
                await self._close(ws, Ending(Next.RESUME, "a heartbeat was not acknowledged (a zombie connection)",
                                             self.ready))
                return
            self._acked = False
            with contextlib.suppress(ConnectionClosed):
                await self._send(ws, {"op": HEARTBEAT, "d": self.session.seq})
            await asyncio.sleep(interval)

    async def _close(self, ws: ClientConnection, ending: Ending) -> Ending:
        self._ending = self._ending or ending
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(OURS, ending.reason[:100]), 5)
        return self._ending

    def _closed(self, exc: ConnectionClosed) -> Ending:
        if self._ending is not None:  # we closed it (from the heartbeat task, say)
            return self._ending
        code = exc.rcvd.code if exc.rcvd is not None else None
        reason = f"the Gateway closed the connection ({code if code is not None else 'no close frame'})"
        if code in FATAL:
            return Ending(Next.STOP, FATAL[code], self.ready)
        if code in NEW_SESSION:
            self.session.clear()
            return Ending(Next.IDENTIFY, reason, self.ready)
        return Ending(Next.RESUME, reason, self.ready)

    @staticmethod
    async def _send(ws: ClientConnection, payload: dict[str, Any]) -> None:
        await ws.send(orjson.dumps(payload).decode())
