"""The access log (one JSON object per line) and what a request's handlers tell it.

`AccessLog` is a pure ASGI middleware: Starlette's BaseHTTPMiddleware would run each request in
a task of its own and get in the way of streaming. Every request gets a `RequestInfo`, reachable
from any code that handles it through `current()` (a ContextVar: the handler and its streamed
body run in the request's task or in tasks copied from it). Authentication notes the user and
the client's failed keys, the metering notes the model, request id and charge, and the line is
written once the response is complete: time, request id, user id, client address, method,
path (never the query string), status, latency, model, credits charged. Never a key, a header
or any text of a prompt or answer.

A client that goes away (an aborted upload, a closed stream) is expected: it is one short line
(the access line, status 499 as nginx logs it; or a single INFO line when the access log is
off), not a traceback.
"""

from __future__ import annotations

import logging
import sys
import time
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from switchboard.core.money import ucr_to_credits_float

if TYPE_CHECKING:
    from switchboard.api.ratelimit import FailureLimiter
    from switchboard.inference.metered import Metering

ACCESS_LOGGER = "switchboard.access"
log = logging.getLogger(__name__)
access_log = logging.getLogger(ACCESS_LOGGER)

CLIENT_CLOSED = 499  # nginx's status for "the client closed the connection first"
_EXPECTED_DISCONNECTS = (ClientDisconnect, ConnectionError)


@dataclass(slots=True)
class RequestInfo:
    """What is known about the request being handled; filled in as it goes."""

    client: str
    auth_failures: FailureLimiter | None
    user_id: int | None = None
    request_id: str | None = None
    model: str | None = None
    charged_ucr: int | None = None


_current: ContextVar[RequestInfo | None] = ContextVar("switchboard_request", default=None)


def current() -> RequestInfo | None:
    """The request being handled, or None outside a request (a CLI, a unit test)."""
    return _current.get()


def note_metering(m: Metering) -> None:
    """The metered call's figures, for the access line (called wherever a response reports them)."""
    info = _current.get()
    if info is not None:
        info.request_id = m.request_id
        info.model = m.model
        info.charged_ucr = m.charged_ucr


class AccessLog:
    """Times each HTTP request and writes its line; turns expected disconnects into one line."""

    def __init__(self, app: ASGIApp, *, enabled: bool, auth_failures: FailureLimiter | None = None) -> None:
        self.app = app
        self.enabled = enabled
        self.auth_failures = auth_failures

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        client = scope.get("client")
        info = RequestInfo(client[0] if client else "", self.auth_failures)
        token = _current.set(info)
        status = CLIENT_CLOSED

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except _EXPECTED_DISCONNECTS:
            status = CLIENT_CLOSED  # whatever was started, the client did not get all of it
            if not self.enabled:
                log.info("client disconnected: %s %s after %.0f ms", scope["method"], scope["path"],
                         (time.perf_counter() - started) * 1000)
        except BaseException:
            status = 500
            raise
        finally:
            _current.reset(token)
            if self.enabled:
                access_log.info(_line(info, scope, status, started))


def _line(info: RequestInfo, scope: Scope, status: int, started: float) -> str:
    entry: dict[str, Any] = {
        "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "request_id": info.request_id,
        "user_id": info.user_id,
        "client": info.client,
        "method": scope["method"],
        "path": scope["path"],
        "status": status,
        "latency_ms": round((time.perf_counter() - started) * 1000, 3),
        "model": info.model,
        "credits_charged": None if info.charged_ucr is None else ucr_to_credits_float(info.charged_ucr),
    }
    return orjson.dumps(entry).decode()


def configure(enabled: bool) -> None:
    """Access lines to stdout, bare (one JSON object each), whatever the level of Switchboard's
    other logs; diagnostics stay on stderr."""
    if not enabled or access_log.handlers:
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False
