"""Request bodies are refused by size before they are buffered.

A pure ASGI middleware (it must not buffer or slow a streamed response). A declared
Content-Length over the path's limit is answered 413 at once, without reading a byte of the body
(the server then closes the connection); a body without one (chunked) is counted as it is read,
and the read that crosses the limit raises `RequestTooLarge`, which the handlers render like any
other error. A body with a Content-Length within the limit needs no counting: the server never
delivers more than it declared.
"""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from switchboard.api.anthropic_messages import error_json
from switchboard.core.errors import SwitchboardError

# Paths whose errors are in Anthropic's shape rather than OpenAI's.
ANTHROPIC_PATHS = frozenset({"/v1/messages"})


class RequestTooLarge(SwitchboardError):
    """A request body over its endpoint's limit (not to be confused with a prompt over the
    model's context window, 413 `context_length_exceeded`)."""

    status = 413
    type = "invalid_request_error"
    code = "request_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(f"The request body is larger than this endpoint accepts ({limit:,} bytes).")


def too_large_body(path: str, limit: int) -> bytes:
    """The 413 body in the error shape of the endpoint at `path`."""
    error = RequestTooLarge(limit)
    if path in ANTHROPIC_PATHS:
        return orjson.dumps(error_json("request_too_large", error.message, None))
    return orjson.dumps(error.to_openai())


class BodyLimit:
    """Per-path body limits (`limits`, by exact path), `default` elsewhere."""

    def __init__(self, app: ASGIApp, *, limits: dict[str, int], default: int) -> None:
        self.app = app
        self.limits = limits
        self.default = default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.get(scope["path"], self.default)
        declared = _content_length(scope)
        if declared is None:
            await self.app(scope, _counting(receive, limit), send)
        elif declared <= limit:
            await self.app(scope, receive, send)
        else:
            await _refuse(scope["path"], limit, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def _counting(receive: Receive, limit: int) -> Receive:
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise RequestTooLarge(limit)
        return message

    return counted


async def _refuse(path: str, limit: int, send: Send) -> None:
    body = too_large_body(path, limit)
    await send({
        "type": "http.response.start", "status": 413,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close")],
    })
    await send({"type": "http.response.body", "body": body})
