"""A server-sent event stream for answers that run to their end whatever the client does.

Starlette's StreamingResponse runs each response in a task group with a second task listening
for the client's disconnect, so that the body's generator can be cancelled: about half a
millisecond of a turn's server time here (bench.assistant). An assistant turn does not stop when
its client goes (it runs to its end and is kept, whether or not anyone reads it), so nothing needs
cancelling: this response just sends each chunk as it comes. After a disconnect uvicorn drops what
is sent; a server that raises instead (ASGI lets it raise OSError) ends the response there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.types import Receive, Scope, Send

_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # nginx: pass each event on as it comes
]


class EventStream:
    """200 with `chunks` (already encoded events) as the body, each sent as it comes."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self.chunks = chunks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
            async for chunk in self.chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the client went, and this server says so by raising
            return
