"""The fastest reasonable OpenAI-compatible upstream, for load tests of the gateway.

A raw ASGI app (no framework: every request costs one orjson parse and a few sends of
precomputed bytes) served by uvicorn with httptools/uvloop when installed.

    python bench/mock_upstream.py --port 8081 [--chunks 4] [--delay-ms 0] [--workers 1]

POST /v1/chat/completions answers `stream: true` with a role chunk, the text in N content
chunks, a finish chunk, a usage chunk (when stream_options.include_usage) and [DONE];
otherwise a chat.completion JSON. GET /v1/models lists the one model. In-process use:
`build_app(...)` for any ASGI server, or `with BackgroundMock(port=0) as mock: mock.url`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

Scope = dict[str, Any]
Message = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]

DEFAULT_TEXT = "Hello! This is the mock upstream answering."
PROMPT_TOKENS = 12
_MAX_CACHED_MODELS = 256  # replies are precomputed per model name; beyond this, echo "mock"

_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_JSON = b"application/json"


def _split(text: str, n: int) -> list[str]:
    n = max(1, min(n, len(text)))
    size, extra = divmod(len(text), n)
    out, pos = [], 0
    for i in range(n):
        end = pos + size + (1 if i < extra else 0)
        out.append(text[pos:end])
        pos = end
    return out


class _Replies:
    """Every byte string one model's replies are made of, built once."""

    def __init__(self, model: str, text: str, chunks: int) -> None:
        pieces = _split(text, chunks)
        created = int(time.time())
        usage = {
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": len(pieces),
            "total_tokens": PROMPT_TOKENS + len(pieces),
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        }

        def event(delta: dict[str, Any], finish: str | None, with_usage_field: bool) -> bytes:
            obj: dict[str, Any] = {
                "id": "chatcmpl-mock",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            if with_usage_field:
                obj["usage"] = None
            return b"data: " + orjson.dumps(obj) + b"\n\n"

        def events(include_usage: bool) -> list[bytes]:
            out = [event({"role": "assistant", "content": ""}, None, include_usage)]
            out += [event({"content": p}, None, include_usage) for p in pieces]
            out.append(event({}, "stop", include_usage))
            if include_usage:
                tail = {"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": created,
                        "model": model, "choices": [], "usage": usage}
                out.append(b"data: " + orjson.dumps(tail) + b"\n\n")
            out[-1] += b"data: [DONE]\n\n"  # one write fewer
            return out

        self.content_chunks = len(pieces)  # events 1..content_chunks carry the text
        self.stream_with_usage = events(True)
        self.stream_without_usage = events(False)
        self.completion = orjson.dumps({
            "id": "chatcmpl-mock",
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": usage,
        })
        self.completion_headers = [(b"content-type", _JSON), (b"content-length", str(len(self.completion)).encode())]


def build_app(*, chunks: int = 4, delay_ms: float = 0.0, text: str = DEFAULT_TEXT, model: str = "mock-model") -> ASGIApp:
    """The ASGI app. `delay_ms` is slept before each content chunk (simulated decoding);
    a non-streamed answer waits chunks x delay_ms in one go."""
    cache: dict[str, _Replies] = {}
    default = _Replies(model, text, chunks)
    cache[model] = default
    delay_s = delay_ms / 1000.0
    models_body = orjson.dumps({"object": "list", "data": [{"id": model, "object": "model", "created": 0, "owned_by": "mock"}]})

    def replies_for(name: Any) -> _Replies:
        if not isinstance(name, str):
            return default
        found = cache.get(name)
        if found is None:
            if len(cache) >= _MAX_CACHED_MODELS:
                return default
            found = cache[name] = _Replies(name, text, chunks)
        return found

    async def send_json(send: Callable[[Message], Awaitable[None]], status: int, body: bytes) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", _JSON), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def app(scope: Scope, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if kind != "http":
            return
        path: str = scope["path"]
        if scope["method"] == "GET" and path.endswith("/models"):
            await send_json(send, 200, models_body)
            return
        if scope["method"] != "POST" or not path.endswith("/chat/completions"):
            await send_json(send, 404, b'{"error":{"message":"not found","type":"invalid_request_error","param":null,"code":null}}')
            return

        msg = await receive()
        body = msg.get("body", b"")
        while msg.get("more_body"):
            msg = await receive()
            body += msg.get("body", b"")
        try:
            req = orjson.loads(body)
            if type(req) is not dict:
                raise ValueError
        except ValueError:
            await send_json(send, 400, b'{"error":{"message":"invalid JSON body","type":"invalid_request_error","param":null,"code":null}}')
            return

        replies = replies_for(req.get("model"))
        if not req.get("stream"):
            if delay_s:  # the same simulated decoding time as a streamed answer
                await asyncio.sleep(delay_s * replies.content_chunks)
            await send({"type": "http.response.start", "status": 200, "headers": replies.completion_headers})
            await send({"type": "http.response.body", "body": replies.completion})
            return
        opts = req.get("stream_options")
        events = replies.stream_with_usage if opts and opts.get("include_usage") else replies.stream_without_usage
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        last = len(events) - 1
        n_content = replies.content_chunks
        for i, ev in enumerate(events):
            if delay_s and 1 <= i <= n_content:  # before each content chunk
                await asyncio.sleep(delay_s)
            await send({"type": "http.response.body", "body": ev, "more_body": i != last})

    return app


def app_from_env() -> ASGIApp:
    """Factory for uvicorn's multi-worker mode, which needs an import string."""
    return build_app(
        chunks=int(os.environ.get("MOCK_UPSTREAM_CHUNKS", "4")),
        delay_ms=float(os.environ.get("MOCK_UPSTREAM_DELAY_MS", "0")),
        text=os.environ.get("MOCK_UPSTREAM_TEXT", DEFAULT_TEXT),
    )


def _uvicorn_options(host: str, port: int) -> dict[str, Any]:
    return {
        "host": host,
        "port": port,
        "log_level": "warning",
        "access_log": False,
        "lifespan": "off",
        "http": "auto",  # httptools when installed
        "loop": "auto",  # uvloop when installed
        "backlog": 4096,
        "timeout_keep_alive": 60,
    }


class BackgroundMock:
    """The mock on a real port in a daemon thread (port=0 picks a free one)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **app_kwargs: Any) -> None:
        import socket

        import uvicorn

        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.host, self.port = host, self._sock.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(build_app(**app_kwargs), **_uvicorn_options(host, self.port)))
        self._thread = threading.Thread(target=self._run, name="mock-upstream", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def _run(self) -> None:
        # Server.run picks uvloop when installed; off the main thread it installs no signal handlers.
        self._server.run(sockets=[self._sock])

    def start(self) -> "BackgroundMock":
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("mock upstream did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> "BackgroundMock":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--chunks", type=int, default=4, help="content chunks per streamed answer")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="sleep before each content chunk")
    parser.add_argument("--text", default=DEFAULT_TEXT)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    args = parser.parse_args(argv)

    import uvicorn

    print(f"mock upstream on http://{args.host}:{args.port}/v1 (chunks={args.chunks}, delay={args.delay_ms}ms, "
          f"workers={args.workers})", flush=True)
    if args.workers > 1:
        # Workers import the app by name: make the repository root importable, pass settings by env.
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        os.environ.update(MOCK_UPSTREAM_CHUNKS=str(args.chunks), MOCK_UPSTREAM_DELAY_MS=str(args.delay_ms),
                          MOCK_UPSTREAM_TEXT=args.text)
        uvicorn.run("bench.mock_upstream:app_from_env", factory=True, workers=args.workers,
                    **_uvicorn_options(args.host, args.port))
    else:
        app = build_app(chunks=args.chunks, delay_ms=args.delay_ms, text=args.text)
        uvicorn.run(app, **_uvicorn_options(args.host, args.port))

if __name__ == "__main__":
    main()
