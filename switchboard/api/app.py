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
from switchboard.api import account, anthropic_messages, chat
from switchboard.api import billing
from switchboard.api.ratelimit import TokenBuckets
from switchboard.api.state import AppState
from switchboard.core.config import Settings, load_settings
from switchboard.core.errors import InvalidRequest, SwitchboardError
from switchboard.inference.runtime import Runtime

log = logging.getLogger(__name__)


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

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = Runtime(settings)
        await runtime.start()
        limits = settings.rate_limit
        app.state.sb = AppState(runtime, KeyCache(runtime.engine), TokenBuckets(limits.requests_per_minute, limits.burst))
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(
        title="Switchboard",
        summary="OpenAI-compatible inference, metered and charged in credits.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.add_exception_handler(SwitchboardError, _switchboard_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    # Plain Starlette routes: handlers parse their own input (see api.chat for why).
    app.router.add_route("/v1/chat/completions", chat.chat_completions, methods=["POST"])
    app.router.add_route("/v1/messages", anthropic_messages.messages, methods=["POST"])
    app.router.add_route("/v1/models", account.list_models, methods=["GET"])
    app.router.add_route("/v1/balance", account.balance, methods=["GET"])
    app.router.add_route("/v1/usage", account.usage, methods=["GET"])
    app.router.add_route("/v1/usage/summary", account.usage_summary, methods=["GET"])
    app.router.add_route("/v1/usage/export", account.usage_export, methods=["GET"])
    app.router.add_route("/healthz", account.healthz, methods=["GET"])
    app.router.add_route("/v1/billing/checkout", billing.checkout, methods=["POST"])
    app.router.add_route("/v1/billing/subscription", billing.subscription, methods=["GET"])
    app.router.add_route("/v1/billing/cancel", billing.cancel, methods=["POST"])
    app.router.add_route("/v1/billing/plan", billing.change_plan, methods=["POST"])
    app.router.add_route("/v1/billing/statement", billing.statement, methods=["GET"])
    app.router.add_route("/webhooks/stripe", billing.stripe_webhook, methods=["POST"])
    return app


def app_from_environment() -> FastAPI:
    """Factory for `uvicorn --factory` (several workers each build their own app)."""
    settings = load_settings()
    configure_logging(settings.log_level)
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
