"""Billing API: Checkout, the subscription, changing its plan or cancelling it, and the Stripe webhook."""

from __future__ import annotations

import asyncio
import logging
import weakref

import orjson
from starlette.requests import Request
from starlette.responses import Response

from switchboard.api.account import json_response
from switchboard.api.auth import authenticate
from switchboard.api.params import MonthQuery
from switchboard.api.state import AppState
from switchboard.billing import plan_changes
from switchboard.billing import subscriptions as subs
from switchboard.billing.checkout import PaymentsNotConfigured, StripeGateway
from switchboard.billing.payments import BadSignature, handle_event, verify_event
from switchboard.billing.plan_changes import Write
from switchboard.billing.statements import statement as monthly_statement
from switchboard.core.errors import InvalidRequest
from switchboard.inference.runtime import Runtime
from switchboard.store.db import read

log = logging.getLogger(__name__)
MAX_BODY = 1_000_000
MONTH = MonthQuery("month", "The month, YYYY-MM (default: this month, UTC).")


async def _json_body(request: Request) -> dict:  # type: ignore[type-arg]
    raw = await request.body()
    try:
        body = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        raise InvalidRequest("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    return body


_told: weakref.WeakSet[Runtime] = weakref.WeakSet()  # servers whose operator was told Stripe is missing


def _purchases_unavailable(runtime: Runtime, exc: PaymentsNotConfigured) -> PaymentsNotConfigured:
    """Users asking to pay on a server without Stripe get a plain 503; the operator's log names
    the setting, once per server (not on every attempt)."""
    if runtime not in _told:
        _told.add(runtime)
        log.warning("a user asked to pay, but %s (purchases answer 503 until it is set)", exc.message)
    return PaymentsNotConfigured("Purchases are not available on this server.")


async def checkout(request: Request) -> Response:
    """POST /v1/billing/checkout {"plan": "plus"} or {"pack": "2000"} -> {"id", "url"}."""
    state: AppState = request.app.state.sb
    principal = await authenticate(request, state.keys)
    body = await _json_body(request)
    plan, pack = body.get("plan"), body.get("pack")
    if (plan is None) == (pack is None) or not isinstance(plan or pack, str):
        raise InvalidRequest("send either {\"plan\": NAME} or {\"pack\": NAME}")
    runtime = state.runtime

    sub = await asyncio.to_thread(read, runtime.engine, lambda conn: subs.get(conn, principal.user_id))
    customer_id = sub.stripe_customer_id if sub else None
    gateway = StripeGateway(runtime.settings.stripe)
    try:
        session = await asyncio.to_thread(
            gateway.checkout, runtime.settings, principal.user_id, principal.email, plan=plan, pack=pack,
            customer_id=customer_id,
        )
    except PaymentsNotConfigured as exc:
        raise _purchases_unavailable(runtime, exc) from None
    return json_response({"object": "checkout.session", **session})


async def subscription(request: Request) -> Response:
    """GET /v1/billing/subscription: the plan in force and the paid subscription, if any."""
    state: AppState = request.app.state.sb
    principal = await authenticate(request, state.keys)
    runtime = state.runtime

    sub = await asyncio.to_thread(read, runtime.engine, lambda conn: subs.get(conn, principal.user_id))
    return json_response(subs.describe(sub, principal.plan))


def _write(runtime: Runtime) -> Write:
    """Database work from a worker thread, through the server's one writer (see store.runner)."""
    return lambda work: runtime.runner.submit(work).result()


async def cancel(request: Request) -> Response:
    """POST /v1/billing/cancel: cancel at the end of the paid period (Stripe, then locally)."""
    state: AppState = request.app.state.sb
    principal = await authenticate(request, state.keys)
    runtime = state.runtime

    sub = await asyncio.to_thread(
        plan_changes.cancel_at_period_end, runtime.engine, _write(runtime), runtime.settings, principal.user_id)
    return json_response(sub.as_json())


async def change_plan(request: Request) -> Response:
    """POST /v1/billing/plan {"plan": "pro"}: upgrade now, downgrade at the period end, "free"
    to cancel at the period end (Stripe, then locally): the subscription plus `change`."""
    state: AppState = request.app.state.sb
    principal = await authenticate(request, state.keys)
    body = await _json_body(request)
    plan = body.get("plan")
    if not isinstance(plan, str):
        raise InvalidRequest('send {"plan": NAME}', param="plan")
    runtime = state.runtime

    result = await asyncio.to_thread(
        plan_changes.request_plan_change, runtime.engine, _write(runtime), runtime.ledger, runtime.settings,
        principal.user_id, plan)
    return json_response(result.as_json())


async def statement(request: Request) -> Response:
    """GET /v1/billing/statement?month=YYYY-MM (default: this month, UTC): the caller's opening
    balance, grants, charges, expiries, refunds and closing balance, as in
    `switchboard ledger statement`."""
    state: AppState = request.app.state.sb
    principal = await authenticate(request, state.keys)
    month = MONTH.parse(request)
    st = await asyncio.to_thread(read, state.runtime.engine, lambda conn: monthly_statement(conn, principal.user_id, month))
    return json_response(st.as_json())


async def stripe_webhook(request: Request) -> Response:
    """POST /webhooks/stripe: 400 unless signed by Stripe and shaped like an event; otherwise
    200 once recorded, with its status: processed, duplicate, pending (applied when what it
    waits for arrives) or parked (cannot be applied: `switchboard payments pending`)."""
    state: AppState = request.app.state.sb
    runtime = state.runtime
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise InvalidRequest("payload too large")
    try:
        event = verify_event(raw, request.headers.get("stripe-signature"), runtime.settings.stripe)
    except BadSignature as exc:
        log.warning("stripe webhook refused: %s", exc)
        raise InvalidRequest(f"webhook signature verification failed: {exc}", code="invalid_signature") from None
    outcome = await runtime.runner.run(lambda conn: handle_event(conn, runtime.ledger, runtime.settings, event))
    return json_response({"received": True, "status": outcome.status, "detail": outcome.detail})
