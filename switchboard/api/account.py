"""GET /v1/models, /v1/balance, /v1/usage, /v1/usage/summary and /healthz (the export: api.exports)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import orjson
from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import Response

from switchboard.accounts.usage import list_usage, summarize
from switchboard.api import embeddings
from switchboard.api.auth import authenticate
from switchboard.api.params import ChoiceQuery, IntQuery
from switchboard.billing.ledger import now_ms
from switchboard.billing.periods import DAY_MS
from switchboard.api.state import AppState
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
            "id": spec.name, "object": "model", "created": 0, "owned_by": spec.provider, "type": "chat",
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
    memory = state.runtime.settings.memory  # the local embedding model, after the chat models (never `auto`'s)
    data.append(embeddings.model_entry(memory.embedding_model, memory.embedding_usd_per_mtok, usd_per_credit))
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


LIMIT = IntQuery("limit", 20, 1, 1000, "How many records, newest first.")
BEFORE = IntQuery("before", None, 1, 2**62, "Only records with ids below this (`next_before` of the previous page).")
BY = ChoiceQuery("by", ("day", "model"), "Totals per UTC day or per model.")
DAYS = IntQuery("days", 30, 1, 3660, "How many days back.")


async def usage(request: Request) -> Response:
    state: AppState = request.app.state.sb
    principal = await authenticate(request, state.keys)
    limit = LIMIT.parse(request)
    before = BEFORE.parse(request)
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
    by = BY.parse(request)
    days = DAYS.parse(request)
    assert days is not None
    since = now_ms() - days * DAY_MS
    engine = state.runtime.engine

    data = await asyncio.to_thread(read, engine, lambda conn: summarize(conn, principal.user_id, by, since))
    return json_response({"object": "list", "by": by, "days": days, "data": data})


async def healthz(request: Request) -> Response:
    state: AppState = request.app.state.sb
    engine = state.runtime.engine

    try:
        await asyncio.wait_for(asyncio.to_thread(read, engine, lambda conn: conn.execute(text("SELECT 1"))), timeout=5)
    except Exception as exc:  # noqa: BLE001 - health checks report, they do not raise
        return json_response({"status": "unavailable", "database": type(exc).__name__}, status=503)
    return json_response({"status": "ok", "models": list(state.runtime.catalog)})
