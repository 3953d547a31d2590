"""A fake OpenAI-compatible upstream on a real port, for provider and gateway tests.

It runs aiohttp.web on its own event loop in a daemon thread, so it works from plain sync
tests, from `asyncio.run`, and from the official `openai` SDK alike. Usage:

    with FakeOpenAI() as fake:
        fake.behaviour = Behaviour(text="Hi there", chunks=2, cached_tokens=3)
        ... POST {fake.url}/chat/completions ...
        assert fake.requests[-1].json["stream"] is True

`fake.enqueue(b1, b2)` scripts the next requests (then `fake.behaviour` applies again),
for retry/fallback tests. The wire format follows OpenAI's documented streaming format:
`data: {chat.completion.chunk}\\n\\n` events, a role chunk first, a finish chunk with an
empty delta, a usage chunk with `choices: []` when `stream_options.include_usage` is set
(other chunks then carry `"usage": null`), and `data: [DONE]\\n\\n`.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Self

from aiohttp import web

from tests.fakes import vendor_billing


@dataclass
class FakeToolCall:
    id: str
    name: str
    arguments: str  # JSON text; streamed in two pieces


@dataclass
class Behaviour:
    """How the fake answers one request. Every knob has a harmless default."""

    # What a successful answer says.
    text: str = "Hello from the fake upstream."
    chunks: int = 3  # the text is split into this many content chunks (at least 1 if text)
    tool_calls: list[FakeToolCall] = field(default_factory=list)
    finish_reason: str | None = None  # default: "tool_calls" when tool_calls, else "stop"
    # Usage figures; completion_tokens defaults to the number of content chunks.
    prompt_tokens: int = 11
    completion_tokens: int | None = None
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    send_usage: bool = True  # False: omit the usage chunk even when include_usage is asked for
    send_done: bool = True  # False: end the body without `data: [DONE]`
    send_finish: bool = True  # False: no finish_reason chunk
    # Timing.
    first_byte_delay_s: float = 0.0  # before the status line and headers
    chunk_delay_s: float = 0.0  # before each content chunk
    # Failures.
    status: int = 200  # non-2xx: answer with OpenAI's error JSON instead
    error_message: str = "The fake upstream failed on purpose."
    error_type: str = "server_error"
    error_code: str | None = None
    retry_after: str | None = None  # sent as Retry-After (with any status)
    fail_after_chunks: int | None = None  # abort the TCP connection after K content chunks
    garbage_after_chunks: int | None = None  # send a non-JSON data event after K content chunks
    error_event_after_chunks: int | None = None  # send `data: {"error": {...}}` after K chunks
    stall_after_chunks: int | None = None  # go silent (connection open) for stall_s after K chunks
    stall_s: float = 30.0
    ignore_stream: bool = False  # answer a streaming request with a whole chat.completion JSON
    extra_headers: dict[str, str] = field(default_factory=dict)
    # Billing like a vendor (vendor_billing.py): prompt_tokens counted over everything sent (messages,
    # tools, response_format, images) with o200k, completion_tokens over the text produced. Unset,
    # the fixed prompt_tokens / completion_tokens above are reported.
    bill_like_vendor: bool = False
    token_chunks: bool = False  # stream the text one o200k token per chunk, as OpenAI does
    honour_max_tokens: bool = False  # stop at the request's max_tokens (finish "length"); else ignore it

    def completion_count(self, pieces: int) -> int:
        """`completion_tokens`, or by default the number of content chunks (at least 1)."""
        return self.completion_tokens if self.completion_tokens is not None else max(pieces, 1)


@dataclass
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]
    json: Any  # the parsed body; None when it was empty or not JSON
    body: bytes = b""
    peer: tuple[str, int] | None = None  # the client's address: equal ports = a reused connection
    query: dict[str, str] = field(default_factory=dict)  # the URL's query string


class FakeOpenAI:
    """The fake server. Start with `with FakeOpenAI() as fake:` or `.start()` / `.stop()`.

    A vendor's fake subclasses it: `behaviour_class` (what `configure` and the default build),
    `_routes`, and the `_garbage_frame` / `_error_frame` bytes of the failure knobs."""

    behaviour_class: ClassVar[type[Behaviour]] = Behaviour

    def __init__(self, behaviour: Behaviour | None = None, *, host: str = "127.0.0.1", models: list[str] | None = None) -> None:
        self.behaviour = behaviour or self.behaviour_class()
        self.host = host
        self.models = models or ["fake-model"]
        self.requests: list[ReceivedRequest] = []
        self._queue: deque[Behaviour] = deque()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self.port = 0

    # -- public -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The API base, as clients configure it (ends in /v1)."""
        return f"http://{self.host}:{self.port}/v1"

    def enqueue(self, *behaviours: Behaviour) -> None:
        """Answer the next requests with these, in order; then fall back to `behaviour`."""
        with self._lock:
            self._queue.extend(behaviours)

    def configure(self, **changes: Any) -> Behaviour:
        """Replace the standing behaviour with a fresh one built from these fields."""
        self.behaviour = self.behaviour_class(**changes)
        return self.behaviour

    @property
    def last(self) -> ReceivedRequest:
        return self.requests[-1]

    def chat_requests(self) -> list[ReceivedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def start(self) -> Self:
        # Bind here, in the caller's thread, so the port is known before start() returns.
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((self.host, 0))
        self.port = self._sock.getsockname()[1]
        ready = threading.Event()
        errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, args=(ready, errors), name="fake-openai", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake upstream did not start")
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if self._runner is not None:
            fut = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop)
            try:
                fut.result(timeout=5)
            except Exception:  # noqa: BLE001 - best effort at teardown
                pass
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        self._loop = self._thread = self._runner = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- server -------------------------------------------------------------------------

    def _run(self, ready: threading.Event, errors: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            errors.append(exc)
            ready.set()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _serve(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        self._routes(app)
        # handler_cancellation: a client that hangs up stops the handler's sleeps at once.
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        assert self._sock is not None
        await web.SockSite(self._runner, self._sock).start()

    def _routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)

    def _next_behaviour(self) -> Behaviour:
        with self._lock:
            return self._queue.popleft() if self._queue else self.behaviour

    async def _receive(self, request: web.Request) -> tuple[Any, Behaviour]:
        """Record a request and pick its behaviour, then wait its first_byte_delay_s: (parsed body, behaviour)."""
        payload = self._record(request, await request.read())
        b = self._next_behaviour()
        if b.first_byte_delay_s:
            await asyncio.sleep(b.first_byte_delay_s)
        return payload, b

    async def _models(self, request: web.Request) -> web.Response:
        self._record(request, b"")
        now = int(time.time())
        data = [{"id": m, "object": "model", "created": now, "owned_by": "fake"} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    def _record(self, request: web.Request, body: bytes) -> Any:
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.requests.append(
            ReceivedRequest(request.method, request.path, dict(request.headers), parsed, body,
                            tuple(peer) if peer else None, dict(request.query))
        )
        return parsed

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._chat_answer(request)
        except ConnectionResetError:  # the client stopped reading (a gateway cutting at max_tokens)
            raise asyncio.CancelledError from None  # ends the handler quietly, as fail_after_chunks does

    async def _chat_answer(self, request: web.Request) -> web.StreamResponse:
        payload, b = await self._receive(request)
        headers = dict(b.extra_headers)
        if b.retry_after is not None:
            headers["Retry-After"] = b.retry_after
        if not isinstance(payload, dict):
            return _error(400, "We could not parse the JSON body of your request.", "invalid_request_error", None, headers)
        if b.status >= 300:
            return _error(b.status, b.error_message, b.error_type, b.error_code, headers)

        model = str(payload.get("model", "fake-model"))
        text, finish = b.text, b.finish_reason or ("tool_calls" if b.tool_calls else "stop")
        limit = payload.get("max_completion_tokens") or payload.get("max_tokens")
        if b.honour_max_tokens and isinstance(limit, int) and vendor_billing.tokens(text) > limit:
            text, finish = vendor_billing.head(text, limit), "length"
        pieces = vendor_billing.token_pieces(text) if b.token_chunks else _split(text, b.chunks)
        usage = _usage_json(b, len(pieces))
        if b.bill_like_vendor:
            completion = vendor_billing.tokens(text) + sum(vendor_billing.tokens(c.arguments) for c in b.tool_calls)
            usage.update(prompt_tokens=vendor_billing.prompt_tokens(payload), completion_tokens=completion)
            usage["total_tokens"] = usage["prompt_tokens"] + completion
        if text != b.text:
            b = replace(b, text=text)
        cid = f"chatcmpl-fake{len(self.requests)}"
        created = int(time.time())
        if not payload.get("stream") or b.ignore_stream:
            return web.json_response(_completion(cid, created, model, b, finish, usage), headers=headers)

        include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
        resp = web.StreamResponse(status=200, headers=headers)
        resp.content_type = "text/event-stream"
        resp.headers["Cache-Control"] = "no-cache"
        await resp.prepare(request)

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            obj: dict[str, Any] = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
            }
            if include_usage:
                obj["usage"] = None
            return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

        await resp.write(chunk({"role": "assistant", "content": "" if pieces or not b.tool_calls else None, "refusal": None}))
        sent = 0
        for piece in pieces:
            if await self._maybe_fail(request, resp, b, sent):
                return resp
            if b.chunk_delay_s:
                await asyncio.sleep(b.chunk_delay_s)
            await resp.write(chunk({"content": piece}))
            sent += 1
        for i, call in enumerate(b.tool_calls):
            if await self._maybe_fail(request, resp, b, sent):
                return resp
            half = len(call.arguments) // 2
            await resp.write(chunk({"tool_calls": [{"index": i, "id": call.id, "type": "function",
                                                     "function": {"name": call.name, "arguments": ""}}]}))
            for part in (call.arguments[:half], call.arguments[half:]):
                if b.chunk_delay_s:
                    await asyncio.sleep(b.chunk_delay_s)
                await resp.write(chunk({"tool_calls": [{"index": i, "function": {"arguments": part}}]}))
            sent += 1
        if await self._maybe_fail(request, resp, b, sent):
            return resp
        if b.send_finish:
            await resp.write(chunk({}, finish))
        if include_usage and b.send_usage:
            obj = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                   "system_fingerprint": "fp_fake", "choices": [], "usage": usage}
            await resp.write(b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n")
        if b.send_done:
            await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _maybe_fail(self, request: web.Request, resp: web.StreamResponse, b: Behaviour, sent: int) -> bool:
        """Apply the failure knobs that trigger after `sent` content chunks; True when the stream ended."""
        if b.garbage_after_chunks == sent:
            await resp.write(self._garbage_frame())
        if b.error_event_after_chunks == sent:
            await resp.write(self._error_frame(b))
            await resp.write_eof()
            return True
        if b.stall_after_chunks == sent:
            await asyncio.sleep(b.stall_s)
        if b.fail_after_chunks == sent:
            # Abort: no terminating chunk, RST instead of FIN where the OS allows.
            transport = request.transport
            if transport is not None:
                transport.abort()
            raise asyncio.CancelledError  # ends the handler without aiohttp writing anything more
        return False

    def _garbage_frame(self) -> bytes:
        """The non-JSON event of `garbage_after_chunks`, framed as this vendor frames events."""
        return b'data: {"this is": not json\n\n'

    def _error_frame(self, b: Behaviour) -> bytes:
        """The mid-stream error event of `error_event_after_chunks`."""
        err = {"error": {"message": b.error_message, "type": b.error_type, "param": None, "code": b.error_code}}
        return b"data: " + json.dumps(err).encode() + b"\n\n"


def _split(text: str, n: int) -> list[str]:
    if not text:
        return []
    n = max(1, min(n, len(text)))
    size, extra = divmod(len(text), n)
    out, pos = [], 0
    for i in range(n):
        end = pos + size + (1 if i < extra else 0)
        out.append(text[pos:end])
        pos = end
    return out


def _usage_json(b: Behaviour, pieces: int) -> dict[str, Any]:
    completion = b.completion_count(pieces)
    return {
        "prompt_tokens": b.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": b.prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": b.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": b.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _completion(cid: str, created: int, model: str, b: Behaviour, finish: str, usage: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": b.text or None, "refusal": None}
    if b.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in b.tool_calls
        ]
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": usage,
    }


def _error(status: int, message: str, type_: str, code: str | None, headers: dict[str, str]) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return web.json_response(body, status=status, headers=headers)
