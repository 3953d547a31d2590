"""The HTTP application: OpenAI-compatible API plus account endpoints, errors in OpenAI's format."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from switchboard.accounts.keys import KeyCache
from switchboard.api import access_log
from switchboard.api.access_log import AccessLog
from switchboard.api.body_limit import BodyLimit
from switchboard.api.exports import ExportSlots
from switchboard.api.openapi import openapi_schema
from switchboard.api.ratelimit import FailureLimiter, TokenBuckets
from switchboard.api.routes import ENDPOINTS
from switchboard.api.sandbox_gateway import Sandboxes
from switchboard.api.state import AppState
from switchboard.core.config import Settings, load_settings
from switchboard.core.errors import InvalidRequest, SwitchboardError
from switchboard.inference.runtime import Runtime

log = logging.getLogger(__name__)
TITLE = "Switchboard"
SUMMARY = "OpenAI-compatible inference, metered and charged in credits."
VERSION = "0.1.0"


def _error(status: int, message: str, type_: str, code: str | None = None, headers: dict[str, str] | None = None) -> Response:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


async def _switchboard_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, SwitchboardError)
    return Response(orjson.dumps(exc.to_openai()), status_code=exc.status, media_type="application/json",
                    headers=exc.headers() or None)


async def _validation_error(request: Request, exc: Exception) -> Response:
    return await _switchboard_error(request, InvalidRequest(str(exc)))


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return _error(exc.status_code, str(exc.detail), kind, code, dict(exc.headers or {}))


async def _unexpected(_: Request, exc: Exception) -> Response:
    log.exception("unhandled error", exc_info=exc)
    return _error(500, "The server had an error while processing your request.", "server_error")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    limits = settings.limits

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = Runtime(settings)
        await runtime.start()
        rate = settings.rate_limit
        keys = KeyCache(runtime.engine)
        keys.start(runtime.runner.submit_nowait)  # revocations seen within a second; last use recorded
        # The sandbox backend is checked for real now: one that cannot work here stops the start.
        sandboxes = await Sandboxes.start(runtime)
        app.state.sb = state = AppState(runtime, keys, TokenBuckets(rate.requests_per_minute, rate.burst),
                                        ExportSlots(limits.exports_per_process, limits.exports_per_user), sandboxes)
        await state.assistant.start()  # every server delivers due reminders
        await state.channels.start()  # and answers and delivers the chat channels' messages
        try:
            yield
        finally:
            await state.channels.stop()
            await state.assistant.stop()
            if sandboxes is not None:
                await sandboxes.stop()
            await keys.aclose()
            await runtime.stop()

    app = FastAPI(title=TITLE, summary=SUMMARY, version=VERSION, lifespan=lifespan)
    app.add_exception_handler(SwitchboardError, _switchboard_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    # The last added is the outermost: the access log sees every answer, the body limit's 413s included.
    app.add_middleware(
        BodyLimit, default=limits.body_bytes,
        limits={"/v1/chat/completions": limits.inference_body_bytes, "/v1/messages": limits.inference_body_bytes,
                "/webhooks/stripe": limits.webhook_body_bytes, "/channels/telegram/webhook": limits.webhook_body_bytes,
                "/channels/whatsapp/webhook": limits.webhook_body_bytes,
                "/channels/discord/interactions": limits.webhook_body_bytes},
    )
    app.add_middleware(AccessLog, enabled=settings.access_log, auth_failures=FailureLimiter(limits.auth_failures_per_minute))
    # Plain Starlette routes: handlers parse their own input (see api.routes for why).
    for endpoint in ENDPOINTS:
        app.router.add_route(endpoint.path, endpoint.handler, methods=[endpoint.method])
    schema = openapi_schema(TITLE, VERSION, SUMMARY)
    app.openapi = lambda: schema  # type: ignore[method-assign]
    return app


def app_from_environment() -> FastAPI:
    """Factory for `uvicorn --factory` (several workers each build their own app)."""
    settings = load_settings()
    configure_logging(settings.log_level)
    access_log.configure(settings.access_log)
    return create_app(settings)


def configure_logging(level: str) -> None:
    """Switchboard's own log lines to stderr at the configured level: uvicorn sets up only its
    own loggers, and without this anything below WARNING would be dropped."""
    logger = logging.getLogger("switchboard")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))  # uvicorn's layout
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level.upper())
