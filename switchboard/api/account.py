"""GET /v1/models, /v1/balance, /v1/usage and /healthz."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import orjson
from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import Response

from switchboard.accounts.usage import EXPORT_COLUMNS, export_rows, list_usage, summarize, to_csv
from switchboard.api.auth import authenticate
from switchboard.billing.ledger import now_ms
from switchboard.billing.periods import DAY_MS
from switchboard.api.state import AppState
from switchboard.core.errors import InvalidRequest
from switchboard.core.money import UCR_PER_CREDIT, credits_per_1k_tokens, format_credits, ucr_to_credits_float
from switchboard.store.db import read


def json_response(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


async def list_models(request: Request) -> Response:
    state: AppState = request.app.state.sb
    await authenticate(request, state.keys)
    data = []
    usd_per_credit = state.runtime.settings.usd_per_credit
    per_k = lambda usd: float(credits_per_1k_tokens(usd, usd_per_credit))  # noqa: E731
    for spec in state.runtime.catalog.values():
        data.append({
            "id": spec.name, "object": "model", "created": 0, "owned_by": spec.provider,
            "context_window": spec.context_window, "max_output_tokens": spec.max_output_tokens,
            "abilities": None if spec.abilities is None else sorted(spec.abilities),
            "pricing": {
                "input_usd_per_mtok": str(spec.input_usd_per_mtok),
                "output_usd_per_mtok": str(spec.output_usd_per_mtok),
                "cached_input_usd_per_mtok": None if spec.cached_input_usd_per_mtok is None else str(spec.cached_input_usd_per_mtok),
                "input_credits_per_1k_tokens": per_k(spec.input_usd_per_mtok),
                "output_credits_per_1k_tokens": per_k(spec.output_usd_per_mtok),
            },
        })
    return json_response({"object": "list", "data": data})


async def balance(request: Request) -> Response:
    state: AppState = request.app.state.sb
    principal = await authenticate(request, state.keys)
    runtime = state.runtime

    b = await asyncio.to_thread(read, runtime.engine, lambda conn: runtime.ledger.balance(conn, principal.user_id))
    return json_response({
        "object": "balance",
        "plan": principal.plan,
        "available_credits": ucr_to_credits_float(b.available_ucr),
        "held_credits": ucr_to_credits_float(b.held_ucr),
        "balance_credits": ucr_to_credits_float(b.balance_ucr),
        "debt_credits": ucr_to_credits_float(b.debt_ucr),
        "available": format_credits(b.available_ucr),
        "held": format_credits(b.held_ucr),
        "available_ucr": b.available_ucr,
        "held_ucr": b.held_ucr,
        "ucr_per_credit": UCR_PER_CREDIT,
        "period_end": datetime.fromtimestamp(b.period_end_ms / 1000, tz=timezone.utc).isoformat(),
    })


def _choice_param(request: Request, name: str, choices: tuple[str, str]) -> str:
    """A query parameter that must be one of two values; the first is the default."""
    value = request.query_params.get(name, choices[0])
    if value not in choices:
        raise InvalidRequest(f"'{name}' must be '{choices[0]}' or '{choices[1]}'", param=name)
    return value


def _int_param(request: Request, name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"'{name}' must be an integer", param=name) from None
    if not lo <= value <= hi:
        raise InvalidRequest(f"'{name}' must be between {lo} and {hi}", param=name)
    return value


async def usage(request: Request) -> Response:
    state: AppState = request.app.state.sb
    principal = await authenticate(request, state.keys)
    limit = _int_param(request, "limit", 20, 1, 1000)
    before = _int_param(request, "before", None, 1, 2**62)
    assert limit is not None
    engine = state.runtime.engine

    records, has_more = await asyncio.to_thread(
        read, engine, lambda conn: list_usage(conn, principal.user_id, limit, before))
    return json_response({
        "object": "list", "data": records, "has_more": has_more,
        "next_before": records[-1]["id"] if has_more and records else None,
    })


async def usage_summary(request: Request) -> Response:
    """GET /v1/usage/summary?by=day|model&days=30: the caller's totals per day or per model."""
    state: AppState = request.app.state.sb
    principal = await authenticate(request, state.keys)
    by = _choice_param(request, "by", ("day", "model"))
    days = _int_param(request, "days", 30, 1, 3660)
    assert days is not None
    since = now_ms() - days * DAY_MS
    engine = state.runtime.engine

    data = await asyncio.to_thread(read, engine, lambda conn: summarize(conn, principal.user_id, by, since))
    return json_response({"object": "list", "by": by, "days": days, "data": data})


async def usage_export(request: Request) -> Response:
    """GET /v1/usage/export?format=csv|json: every usage record of the caller, oldest first."""
    state: AppState = request.app.state.sb
    principal = await authenticate(request, state.keys)
    fmt = _choice_param(request, "format", ("csv", "json"))
    engine = state.runtime.engine

    rows = await asyncio.to_thread(read, engine, lambda conn: list(export_rows(conn, principal.user_id)))
    for row in rows:
        row.pop("user_id", None)
    if fmt == "json":
        return json_response({"object": "list", "data": rows})
    return Response("".join(to_csv(rows, EXPORT_COLUMNS)), media_type="text/csv",
                    headers={"content-disposition": 'attachment; filename="usage.csv"'})


async def healthz(request: Request) -> Response:
    state: AppState = request.app.state.sb
    engine = state.runtime.engine

    try:
        await asyncio.wait_for(asyncio.to_thread(read, engine, lambda conn: conn.execute(text("SELECT 1"))), timeout=5)
    except Exception as exc:  # noqa: BLE001 - health checks report, they do not raise
        return json_response({"status": "unavailable", "database": type(exc).__name__}, status=503)
    return json_response({"status": "ok", "models": list(state.runtime.catalog)})
