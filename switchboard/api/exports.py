"""GET /v1/usage/export?format=csv|json: every usage record of the caller, oldest first.

An export can hold hundreds of thousands of records, so it is streamed in constant memory: a
page of records at a time, found by key (ids above the last one sent), read and rendered on a
worker thread for a few milliseconds, then sent before the next is read. How many run at once
is bounded, per process and per user (`ExportSlots`): more is a 429, so exports can neither fill
the server's memory nor take the threads that other users' requests need.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import orjson
from sqlalchemy import Engine
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from switchboard.accounts.usage import EXPORT_COLUMNS, export_page, to_csv
from switchboard.api.auth import authenticate
from switchboard.api.params import ChoiceQuery
from switchboard.core.errors import RateLimited
from switchboard.store.db import read

if TYPE_CHECKING:  # the state holds this module's ExportSlots
    from switchboard.api.state import AppState

FORMAT = ChoiceQuery("format", ("csv", "json"), "csv: a header line, then one line per record; json: {\"object\": \"list\", \"data\": [...]}.")
PAGE = 1000  # records per read: about a megabyte rendered
RETRY_AFTER_S = 5.0


class ExportSlots:
    """At most `per_process` exports at once in this process, and `per_user` for one user.
    Used from the event loop only, so plain counters suffice."""

    def __init__(self, per_process: int, per_user: int) -> None:
        self.per_process = per_process
        self.per_user = per_user
        self.running = 0
        self._by_user: dict[int, int] = {}

    def take(self, user_id: int) -> None:
        """Take a slot for `user_id` or raise RateLimited (429 with Retry-After)."""
        mine = self._by_user.get(user_id, 0)
        if mine >= self.per_user:
            raise RateLimited(f"You already have {mine} export(s) running, the most at once; retry when it has finished.",
                              RETRY_AFTER_S)
        if self.running >= self.per_process:
            raise RateLimited("The server is busy with other exports; retry in a few seconds.", RETRY_AFTER_S)
        self.running += 1
        self._by_user[user_id] = mine + 1

    def give_back(self, user_id: int) -> None:
        self.running -= 1
        mine = self._by_user.pop(user_id) - 1
        if mine:
            self._by_user[user_id] = mine


class _SlotHeld(StreamingResponse):
    """A streaming response that gives its export slot back however it ends (done, failed, or
    the client gone before the first byte, when the body iterator may never even start)."""

    def __init__(self, body: AsyncIterator[bytes], slots: ExportSlots, user_id: int, media_type: str, filename: str) -> None:
        super().__init__(body, media_type=media_type,
                         headers={"content-disposition": f'attachment; filename="{filename}"'})
        self._slots, self._user_id = slots, user_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._slots.give_back(self._user_id)


async def usage_export(request: Request) -> StreamingResponse:
    state: AppState = request.app.state.sb
    principal = await authenticate(request, state.keys)
    fmt = FORMAT.parse(request)
    state.exports.take(principal.user_id)
    try:
        engine = state.runtime.engine
        if fmt == "json":
            return _SlotHeld(_json(engine, principal.user_id), state.exports, principal.user_id, "application/json", "usage.json")
        return _SlotHeld(_csv(engine, principal.user_id), state.exports, principal.user_id, "text/csv", "usage.csv")
    except BaseException:
        state.exports.give_back(principal.user_id)
        raise


def _page(engine: Engine, user_id: int, after: int, fmt: str, first: bool) -> tuple[int, bytes]:
    """The user's records after id `after`, up to a page, rendered: (the last id, the bytes),
    empty bytes once none are left. A JSON page after the first starts with its comma."""
    rows = read(engine, lambda conn: export_page(conn, user_id, after, PAGE))
    if not rows:
        return after, b""
    for row in rows:
        del row["user_id"]
    if fmt == "csv":
        body = "".join(to_csv(rows, EXPORT_COLUMNS, header=False)).encode()
    else:
        body = (b"" if first else b",") + b",".join(orjson.dumps(row) for row in rows)
    return int(rows[-1]["id"]), body


async def _pages(engine: Engine, user_id: int, fmt: str) -> AsyncIterator[bytes]:
    """Each page in turn, read and rendered on a worker thread (a few milliseconds each)."""
    last, first = 0, True
    while True:
        last, chunk = await asyncio.to_thread(_page, engine, user_id, last, fmt, first)
        if not chunk:
            return
        first = False
        yield chunk


async def _csv(engine: Engine, user_id: int) -> AsyncIterator[bytes]:
    yield "".join(to_csv((), EXPORT_COLUMNS)).encode()
    async for chunk in _pages(engine, user_id, "csv"):
        yield chunk


async def _json(engine: Engine, user_id: int) -> AsyncIterator[bytes]:
    yield b'{"object":"list","data":['
    async for chunk in _pages(engine, user_id, "json"):
        yield chunk
    yield b"]}"
