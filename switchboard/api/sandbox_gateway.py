"""The gateway as code in a sandbox reaches it: a Unix socket, a run's token, the metered path.

Sandboxes have no network, so this process also serves a small ASGI app on a Unix socket
(DATA_DIR/sandbox/gateway/<pid>.sock, bound into each run that was given a token at
/run/switchboard/gateway.sock). It answers POST /v1/chat/completions exactly as the public
endpoint does (same handler, same formats, streaming included), with these differences:

- the bearer is the run's token (sandbox.token), not an API key: it names the user and the
  turn, and is refused once the run ends;
- every call's hold must fit in what the token's credit limit has left (the turn's limit), or
  the call is refused with 402 credit_limit_reached before anything runs, and its charge
  counts against that limit;
- usage records say `sandbox.chat.completions`, so the user sees where the call came from;
- a run may have at most CONCURRENT_CALLS calls in flight (429 beyond), and bodies have the
  public endpoint's size limits.

Vendor keys never leave the gateway: the sandbox holds a token good for one run's model calls.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import uvicorn
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from switchboard.accounts.keys import Principal
from switchboard.api.auth import bearer_token
from switchboard.api.body_limit import BodyLimit
from switchboard.api.chat import _complete
from switchboard.api.schemas import parse_chat_body
from switchboard.core.errors import AuthenticationFailed, CreditLimitReached, RateLimited, SwitchboardError
from switchboard.core.ids import new_id
from switchboard.core.types import ChatRequest
from switchboard.inference.metered import Inference, MeteredCall
from switchboard.inference.runtime import Runtime
from switchboard.sandbox.manager import SandboxManager
from switchboard.sandbox.token import Grant, TokenRefused
from switchboard.store.db import read
from switchboard.store.schema import holds

log = logging.getLogger(__name__)
ENDPOINT = "sandbox.chat.completions"
CONCURRENT_CALLS = 4  # model calls one run may have in flight at once
SETTLED_POLL_S = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)  # waits for a background settlement to commit


class _GrantedInference:
    """What the chat handler sees as `runtime.inference`: the real one, with the grant's limit."""

    def __init__(self, inference: Inference, grant: Grant) -> None:
        self._inference = inference
        self._grant = grant
        self.calls: list[MeteredCall] = []

    async def begin(self, request: ChatRequest, **kwargs: Any) -> MeteredCall:
        call = await self._inference.begin(request, **{**kwargs, "endpoint": ENDPOINT})
        if not self._grant.reserve(call.request_id, call.hold_ucr):
            left = self._grant.left_ucr()
            await call.settle("error", "refused: beyond the credit limit of the sandbox's turn", delivered=False)
            raise CreditLimitReached(left, call.hold_ucr)
        self.calls.append(call)
        return call


class SandboxGateway:
    """The Unix-socket server of this process; `start` attaches it to the sandbox manager."""

    def __init__(self, runtime: Runtime, manager: SandboxManager) -> None:
        self.runtime = runtime
        self.manager = manager
        self.path: Path = manager.root / "gateway" / f"{os.getpid()}.sock"
        app = Starlette(routes=[Route("/v1/chat/completions", self.chat_completions, methods=["POST"])])
        app.add_exception_handler(SwitchboardError, _error)
        app.add_exception_handler(Exception, _unexpected)
        limits = runtime.settings.limits  # the public endpoint's body limits, refused before reading
        app.add_middleware(BodyLimit, default=limits.body_bytes,
                           limits={"/v1/chat/completions": limits.inference_body_bytes})
        self.app = app
        self._server: uvicorn.Server | None = None
        self._sock: socket.socket | None = None
        self._pending: set[asyncio.Task[None]] = set()

    async def start(self) -> "SandboxGateway":
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.path))
        # Anyone who can reach the socket may knock; only a live token gets an answer. On the
        # host it sits in a 0700 directory; sandboxes reach it through their bind mount.
        os.chmod(self.path, 0o666)
        config = uvicorn.Config(self.app, lifespan="off", log_level="warning", access_log=False)
        config.load()
        self._server = uvicorn.Server(config)
        # Started on this event loop (the runtime's), as Server._serve does it, but without its
        # main loop and signal handlers: the main server owns the process's signals.
        self._server.lifespan = config.lifespan_class(config)
        await self._server.startup(sockets=[sock])
        self._sock = sock
        self.manager.attach_gateway(self.path)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.force_exit = True
            await self._server.shutdown(sockets=[self._sock] if self._sock else None)
            self._server = None
        for task in list(self._pending):
            task.cancel()
        self.path.unlink(missing_ok=True)

    # -- the one endpoint ------------------------------------------------------------------
    async def chat_completions(self, request: Request) -> Response:
        try:
            grant = self.manager.tokens.verify(bearer_token(request))
        except TokenRefused as exc:
            raise AuthenticationFailed(str(exc)) from None
        if len(grant.reserved) >= CONCURRENT_CALLS:
            raise RateLimited(f"at most {CONCURRENT_CALLS} model calls at once from a sandbox", 1.0)
        body = parse_chat_body(await request.body())
        inference = _GrantedInference(self.runtime.inference, grant)
        principal = Principal(grant.user_id, "", grant.plan, None)  # type: ignore[arg-type]  # no API key
        # What the chat handler uses of api.state.AppState without an Idempotency-Key: the inference.
        state = SimpleNamespace(runtime=SimpleNamespace(inference=inference))
        response = await _complete(state, principal, body, new_id(), None)  # type: ignore[arg-type]
        if isinstance(response, StreamingResponse):
            response.body_iterator = self._then_account(response.body_iterator, grant, inference)
        else:
            self._account(grant, inference)
        return response

    async def _then_account(self, body: AsyncIterator[Any], grant: Grant, inference: _GrantedInference) -> AsyncIterator[Any]:
        try:
            async for chunk in body:
                yield chunk
        finally:
            self._account(grant, inference)

    def _account(self, grant: Grant, inference: _GrantedInference) -> None:
        """Count what the calls were charged against the grant (their holds until then)."""
        for call in inference.calls:
            task = asyncio.get_running_loop().create_task(self._settled(grant, call))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _settled(self, grant: Grant, call: MeteredCall) -> None:
        engine = self.runtime.engine
        query = select(holds.c.status, holds.c.charged_ucr).where(
            holds.c.user_id == call.user_id, holds.c.request_id == call.request_id)
        for wait in SETTLED_POLL_S:
            row = await asyncio.to_thread(read, engine, lambda conn: conn.execute(query).first())
            if row is not None and row.status != "active":
                grant.settle(call.request_id, int(row.charged_ucr or 0))
                return
            await asyncio.sleep(wait)
        log.warning("sandbox gateway: request %s not settled yet; its hold stays counted", call.request_id)


async def start_sandbox_gateway(runtime: Runtime, manager: SandboxManager) -> SandboxGateway:
    """Serve the gateway socket for `manager`'s sandboxes."""
    return await SandboxGateway(runtime, manager).start()


class Sandboxes:
    """Everything a server process runs for sandboxes: the manager (checked for real), its
    gateway socket and its housekeeping. `await Sandboxes.start(runtime)` in a lifespan (None
    when sandbox.backend is "none"; SandboxUnavailable when the backend cannot work here),
    `await sandboxes.stop()` at the end; `sandboxes.manager` goes to AssistantServices."""

    def __init__(self, manager: SandboxManager, gateway: SandboxGateway, housekeeping: asyncio.Task[None]) -> None:
        self.manager = manager
        self.gateway = gateway
        self._housekeeping = housekeeping

    @classmethod
    async def start(cls, runtime: Runtime) -> "Sandboxes | None":
        manager = SandboxManager.from_settings(runtime.settings)
        if manager is None:
            return None
        await asyncio.to_thread(manager.start)  # one real run: a few tens of milliseconds
        gateway = await start_sandbox_gateway(runtime, manager)
        return cls(manager, gateway, asyncio.get_running_loop().create_task(manager.maintain_forever()))

    async def stop(self) -> None:
        self._housekeeping.cancel()
        await self.gateway.stop()
        await asyncio.to_thread(self.manager.close)


async def _error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, SwitchboardError)
    return Response(orjson.dumps(exc.to_openai()), status_code=exc.status, media_type="application/json",
                    headers=exc.headers() or None)


async def _unexpected(_: Request, exc: Exception) -> Response:
    log.exception("sandbox gateway: unhandled error", exc_info=exc)
    body = {"error": {"message": "The server had an error while processing your request.", "type": "server_error",
                      "param": None, "code": None}}
    return Response(orjson.dumps(body), status_code=500, media_type="application/json")
