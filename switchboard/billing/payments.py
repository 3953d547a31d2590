"""Stripe's webhook events that pay for plans and packs (what goes out to Stripe: billing.checkout).

`verify_event`, `handle_event`: the signature is checked as Stripe documents (HMAC-SHA256 of
"{t}.{payload}" with the endpoint secret, within a time tolerance); the event is then
recorded once per event id and handled in the caller's transaction. Its shape is validated
first (billing.stripe_events): a malformed event is recorded and parked, never a 500 that
rolls its record back and makes Stripe send it forever.

Grants are idempotent on their own keys too, so two different events for the same thing
(e.g. two invoice.paid for one period) grant once. An event that cannot be applied yet (a
refund whose purchase has not arrived, an invoice of a subscription nobody linked yet) is
queued (billing.event_queue) with the Stripe ids it waits for, and applied in the same
transaction as the event that brings one of them: a refund that arrives before its purchase
is applied together with the purchase, whatever else is waiting.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import stripe
from pydantic import ValidationError
from sqlalchemy import Connection, insert, select
from sqlalchemy.exc import DataError, IntegrityError

from switchboard.billing import event_queue
from switchboard.billing import subscriptions as subs
from switchboard.billing.checkout import PaymentsNotConfigured, requested_pack
from switchboard.billing.ledger import SALES, Ledger, now_ms
from switchboard.billing.periods import DAY_MS
from switchboard.billing.stripe_events import (
    Charge,
    CheckoutSession,
    Invoice,
    PricedItem,
    StripeObject,
    Subscription,
    describe,
    envelope,
    user_id_of,
)
from switchboard.core.config import Settings, StripeConfig
from switchboard.core.money import credits_to_ucr
from switchboard.store.billing_schema import payment_grants
from switchboard.store.schema import grants

log = logging.getLogger(__name__)
RETRY_BATCH = 5  # due events tried again after each event received
_MAX_WAKES = 1000  # events applied in one transaction because another brought what they waited for


class BadSignature(Exception):
    """The webhook is not authentic (or not readable): answer 400."""


def grant_pack(
    conn: Connection, ledger: Ledger, settings: Settings, user_id: int, pack: str, *, source_ref: str | None = None,
    at_ms: int | None = None, reason: str | None = None,
) -> int | None:
    """A pack's credits as a top-up grant (paid for: funded by sales), expiring after
    `topup_expiry_days`. Idempotent on `source_ref`."""
    config = requested_pack(settings, pack)
    at = at_ms if at_ms is not None else now_ms()
    return ledger.grant(
        conn, user_id, credits_to_ucr(config.credits), kind="topup", reason=reason or f"pack {config.name}",
        expires_ms=at + settings.topup_expiry_days * DAY_MS, source_ref=source_ref, at_ms=at, funded_by=SALES,
    )


# -- inbound: verification ----------------------------------------------------------------------
def verify_event(payload: bytes, signature: str | None, config: StripeConfig) -> dict[str, Any]:
    """Check the Stripe-Signature header and parse the event. Raises BadSignature."""
    secret = config.webhook_secret()
    if not secret:
        raise PaymentsNotConfigured(f"webhooks are not configured: set {config.webhook_secret_env}")
    try:
        text = payload.decode("utf-8")
        stripe.WebhookSignature.verify_header(text, signature, secret, config.webhook_tolerance_s or None)
    except (stripe.SignatureVerificationError, UnicodeDecodeError, ValueError) as exc:
        raise BadSignature(str(exc).split("\n")[0]) from None
    try:
        event = json.loads(text)
    except ValueError:
        raise BadSignature("the payload is not JSON") from None
    if not isinstance(event, dict) or not isinstance(event.get("id"), str) or not isinstance(event.get("type"), str) \
            or not isinstance((event.get("data") or {}).get("object"), dict):
        raise BadSignature("the payload is not a Stripe event")
    return event


# -- inbound: handling --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Outcome:
    status: str  # processed | duplicate | pending | parked
    detail: str
    user_id: int | None = None


class _Pending(Exception):
    """Not applicable yet: it needs something a later event (or action) brings. `waits`: the
    Stripe ids whose arrival may bring it."""

    def __init__(self, reason: str, *waits: str | None) -> None:
        super().__init__(reason)
        self.waits = [w for w in waits if w]


class _Unusable(Exception):
    """Cannot be applied as it is (money received for something unknown, say): park it."""

    def __init__(self, reason: str, user_id: int | None = None) -> None:
        super().__init__(reason)
        self.user_id = user_id


# What parks an event instead of answering 500: its shape (a ValidationError is a ValueError),
# a value the database refuses, or what a handler could not use.
_PARKING = (_Unusable, ValueError, LookupError, TypeError, AttributeError, DataError, IntegrityError)


def handle_event(conn: Connection, ledger: Ledger, settings: Settings, event: dict[str, Any], at_ms: int | None = None) -> Outcome:
    """Record one verified event once per event id and apply it (with what waited for it),
    then try again a few queued events that are due; in the caller's transaction."""
    at = at_ms if at_ms is not None else now_ms()
    env = envelope(event)
    event_queue.serialize(conn)
    row = event_queue.record(conn, env, at)
    if row is None:
        return Outcome("duplicate", "already received")
    if env.problem is not None:
        log.warning("stripe event %s (%s) is malformed: %s", env.event_id, env.type, env.problem)
        event_queue.park(conn, row, env.problem, event)
        outcome = Outcome(event_queue.PARKED, env.problem)
    else:
        outcome = _apply(conn, ledger, settings, [(row, event)], at)[0]
    retry_due(conn, ledger, settings, at)
    return outcome


def retry_due(conn: Connection, ledger: Ledger, settings: Settings, at: int, limit: int = RETRY_BATCH) -> list[Outcome]:
    """Try again up to `limit` queued events whose next try is due."""
    event_queue.serialize(conn)
    return _apply(conn, ledger, settings, event_queue.due(conn, at, limit), at)


def retry(conn: Connection, ledger: Ledger, settings: Settings, ref: str, at_ms: int | None = None) -> Outcome | None:
    """An operator's retry of one pending or parked event (row id or Stripe event id), now;
    None if there is no such event left to apply."""
    at = at_ms if at_ms is not None else now_ms()
    event_queue.serialize(conn)
    found = event_queue.requeue(conn, ref, at)
    return None if found is None else _apply(conn, ledger, settings, [found], at)[0]


def _apply(conn: Connection, ledger: Ledger, settings: Settings, rows: list[tuple[int, dict[str, Any]]],
           at: int) -> list[Outcome]:
    """Try each recorded event; each one applied wakes the events waiting for an id it
    mentions, tried next in the same transaction. The outcomes of `rows`, in order."""
    todo = deque(rows)
    queued = {row for row, _ in rows}
    outcomes: list[Outcome] = []
    wakes = 0
    while todo:
        row, event = todo.popleft()
        queued.discard(row)
        outcome, mentions = _attempt(conn, ledger, settings, row, event, at)
        if len(outcomes) < len(rows):
            outcomes.append(outcome)
        if outcome.status != event_queue.PROCESSED:
            continue
        for woken in event_queue.waiting_on(conn, mentions):
            if woken[0] not in queued and wakes < _MAX_WAKES:
                wakes += 1
                queued.add(woken[0])
                todo.append(woken)
    return outcomes


def _attempt(conn: Connection, ledger: Ledger, settings: Settings, row: int, event: dict[str, Any],
             at: int) -> tuple[Outcome, list[str | None]]:
    """Apply one recorded event in a savepoint: applied, left pending, or parked."""
    try:
        with conn.begin_nested():
            user_id, detail, mentions = _dispatch(_Context(conn, ledger, settings, at), event)
    except _Pending as why:
        status = event_queue.waiting(conn, row, str(why), why.waits, event, at)
        return Outcome(status, str(why)), []
    except _PARKING as exc:
        reason = describe(exc) if isinstance(exc, ValidationError) else str(exc) if isinstance(exc, _Unusable) \
            else repr(exc).split("\n")[0]
        log.warning("stripe event %s (%s) parked: %s", event.get("id"), event.get("type"), reason)
        event_queue.park(conn, row, reason, event, exc.user_id if isinstance(exc, _Unusable) else None)
        return Outcome(event_queue.PARKED, reason), []
    event_queue.applied(conn, row, user_id, detail, at)
    return Outcome(event_queue.PROCESSED, detail, user_id), mentions


@dataclass(frozen=True, slots=True)
class _Context:
    conn: Connection
    ledger: Ledger
    settings: Settings
    at: int


Handler = Callable[[_Context, Any, int], tuple[int | None, str]]  # (context, object, created ms)


def _dispatch(ctx: _Context, event: dict[str, Any]) -> tuple[int | None, str, list[str | None]]:
    """Validate the event's object for its type and apply it: (user id, what was done, the
    Stripe ids it mentions: what events waiting for them may need)."""
    env = envelope(event)
    if env.problem is not None:
        raise _Unusable(env.problem)
    handled = _HANDLERS.get(env.type)
    if handled is None:
        return None, f"ignored: {env.type}", []
    model, handler = handled
    obj = model.model_validate(event["data"]["object"])
    user_id, detail = handler(ctx, obj, env.created_ms if env.created_ms is not None else ctx.at)
    return user_id, detail, list(obj.ids())


def _known_user(conn: Connection, *candidates: object) -> int | None:
    """The first candidate (metadata user_id, client_reference_id) that is a user's id."""
    for text in candidates:
        uid = user_id_of(text)
        if uid is not None and subs.user_exists(conn, uid):
            return uid
    return None


def _record_payment(conn: Connection, user_id: int, grant_id: int | None, refs: Iterable[str | None], at: int) -> None:
    if grant_id is None:
        return
    for ref in sorted({r for r in refs if r}):
        conn.execute(insert(payment_grants).values(payment_ref=ref, grant_id=grant_id, user_id=user_id, created_ms=at))


def _checkout_completed(ctx: _Context, s: CheckoutSession, _created: int) -> tuple[int | None, str]:
    md = s.metadata
    user_id = _known_user(ctx.conn, md.get("user_id"), s.client_reference_id)
    if s.payment_status not in ("paid", "no_payment_required"):
        return user_id, "awaiting payment (async_payment_succeeded will follow)"
    if user_id is None:
        raise _Unusable("paid checkout session of no known user")
    if md.get("kind") == "pack" or s.mode == "payment":
        pack = ctx.settings.packs.get(str(md.get("pack")))
        if pack is None:
            raise _Unusable(f"paid checkout session for an unknown pack {md.get('pack')!r}", user_id)
        grant_id = grant_pack(ctx.conn, ctx.ledger, ctx.settings, user_id, pack.name, source_ref=f"stripe:checkout:{s.id}",
                              at_ms=ctx.at)
        _record_payment(ctx.conn, user_id, grant_id, [s.payment_intent, s.id], ctx.at)
        return user_id, f"pack {pack.name} granted" if grant_id else f"pack {pack.name} already granted"
    plan = md.get("plan")
    subs.link(ctx.conn, user_id, plan if plan in ctx.settings.plans else None, customer_id=s.customer,
              subscription_id=s.subscription, at_ms=ctx.at)
    return user_id, "subscription linked (its paid invoice grants the allowance)"


def _plan_of(settings: Settings, items: Iterable[PricedItem], *metadatas: dict[str, str]) -> str | None:
    """Which plan a price belongs to: configured price id, lookup_key, or metadata."""
    by_price = {v: k for k, v in settings.stripe.plan_price_ids.items()}
    for item in items:
        candidates = [by_price.get(price_id) for price_id in item.price_ids]
        if item.price is not None and not isinstance(item.price, str):
            candidates += [item.price.lookup_key, item.price.metadata.get("plan")]
        for candidate in (*candidates, item.metadata.get("plan")):
            if candidate in settings.plans:
                return candidate
    return next((md["plan"] for md in metadatas if md.get("plan") in settings.plans), None)


def _invoice_user(conn: Connection, inv: Invoice) -> int | None:
    line = inv.period_line
    return _known_user(conn, inv.details.metadata.get("user_id"), line.metadata.get("user_id") if line else None) \
        or subs.find_user(conn, inv.subscription_id, inv.customer)


def _not_current(sub: subs.Subscription | None, sub_id: str | None) -> bool:
    """Whether the event is about another subscription than the user's live one."""
    return (sub is not None and sub_id is not None and sub.stripe_subscription_id not in (None, sub_id)
            and sub.status != subs.CANCELED)


def _invoice_paid(ctx: _Context, inv: Invoice, _created: int) -> tuple[int | None, str]:
    user_id = _invoice_user(ctx.conn, inv)
    if user_id is None:
        raise _Pending("no user for this invoice's subscription yet", inv.subscription_id, inv.customer)
    if inv.billing_reason == "subscription_update":
        return _proration_paid(ctx, user_id, inv)
    if inv.billing_reason not in ("subscription_create", "subscription_cycle", "subscription", None):
        return user_id, f"no grant for a {inv.billing_reason} invoice"
    line = inv.period_line
    if line is None or line.period is None:
        return user_id, "ignored: no subscription period on the invoice"
    if _not_current(subs.get(ctx.conn, user_id), inv.subscription_id):
        return user_id, "ignored: not the user's current subscription"
    plan = _plan_of(ctx.settings, [line], inv.details.metadata)
    grant_id = subs.period_paid(
        ctx.conn, ctx.ledger, ctx.settings, user_id, plan, line.period.start * 1000, line.period.end * 1000,
        customer_id=inv.customer, subscription_id=inv.subscription_id, at_ms=ctx.at,
    )
    _record_payment(ctx.conn, user_id, grant_id, inv.payment_refs(), ctx.at)
    return user_id, "allowance granted" if grant_id else "allowance for this period already granted"


def _proration_paid(ctx: _Context, user_id: int, inv: Invoice) -> tuple[int | None, str]:
    """A plan change's prorated invoice paid for the upgrade's credits (subscriptions.change_plan,
    granted once per period and plan): linked to that grant, a refund of it reverses them."""
    if not inv.amount_paid:
        return user_id, "nothing paid on this prorated invoice"
    sub = subs.get(ctx.conn, user_id)
    start = sub.current_period_start_ms if sub is not None else None
    grant_id = None if start is None else ctx.conn.execute(
        select(grants.c.id).where(grants.c.user_id == user_id, grants.c.source_ref.like(f"upgrade:{user_id}:{start}:%"))
        .order_by(grants.c.id.desc()).limit(1)
    ).scalar()
    if grant_id is None:
        raise _Pending("no upgrade granted yet for this prorated invoice", inv.subscription_id)
    linked = set(ctx.conn.execute(select(payment_grants.c.payment_ref).where(payment_grants.c.grant_id == grant_id)).scalars())
    _record_payment(ctx.conn, user_id, int(grant_id), [r for r in inv.payment_refs() if r not in linked], ctx.at)
    return user_id, "prorated upgrade paid: its credits are refundable with it"


def _invoice_failed(ctx: _Context, inv: Invoice, _created: int) -> tuple[int | None, str]:
    user_id = _invoice_user(ctx.conn, inv)
    if user_id is None:
        raise _Pending("no user for this invoice's subscription yet", inv.subscription_id, inv.customer)
    sub = subs.get(ctx.conn, user_id)
    line = inv.period_line
    start = line.period.start * 1000 if line and line.period else None
    if sub is None or _not_current(sub, inv.subscription_id) or sub.status == subs.CANCELED:
        return user_id, "ignored: no current subscription"
    if start is not None and sub.current_period_start_ms is not None and start <= sub.current_period_start_ms:
        return user_id, "ignored: that period is already paid"
    subs.mark_past_due(ctx.conn, user_id, ctx.at)
    return user_id, "past_due"


def _subscription_user(conn: Connection, obj: Subscription) -> int:
    user_id = _known_user(conn, obj.metadata.get("user_id")) or subs.find_user(conn, obj.id, obj.customer)
    if user_id is None:
        raise _Pending("no user for this subscription yet", obj.id, obj.customer)
    return user_id


def _subscription_updated(ctx: _Context, obj: Subscription, created: int) -> tuple[int | None, str]:
    conn = ctx.conn
    user_id = _subscription_user(conn, obj)
    sub = subs.get(conn, user_id)
    if _not_current(sub, obj.id):
        return user_id, "ignored: not the user's current subscription"
    if sub is not None and sub.last_event_ms is not None and created < sub.last_event_ms:
        return user_id, "ignored: older than the state already applied"
    if sub is not None and sub.status == subs.CANCELED and sub.stripe_subscription_id == obj.id:
        return user_id, "ignored: the subscription has ended"
    plan = _plan_of(ctx.settings, obj.items.data, obj.metadata)
    sub = subs.link(conn, user_id, plan, customer_id=obj.customer, subscription_id=obj.id, at_ms=ctx.at)
    subs.mirror_stripe(conn, user_id, obj.status, obj.cancel_at_period_end, ctx.at, last_event_ms=created)
    detail = "subscription updated"
    # A plan other than the one paid for, or the paid one again while a downgrade waits (which
    # cancels it). A change already applied locally (POST /v1/billing/plan) changes nothing here.
    if plan is not None and sub.current_period_start_ms is not None and (plan != sub.plan or sub.pending_plan is not None):
        detail += ": " + subs.change_plan(conn, ctx.ledger, ctx.settings, user_id, plan, ctx.at)
    return user_id, detail


def _subscription_deleted(ctx: _Context, obj: Subscription, _created: int) -> tuple[int | None, str]:
    user_id = _subscription_user(ctx.conn, obj)
    if _not_current(subs.get(ctx.conn, user_id), obj.id):
        return user_id, "ignored: not the user's current subscription"
    subs.link(ctx.conn, user_id, None, customer_id=obj.customer, subscription_id=obj.id, at_ms=ctx.at)
    subs.end(ctx.conn, ctx.ledger, ctx.settings, user_id, ctx.at)
    return user_id, "subscription ended: back to the free plan"


def _charge_refunded(ctx: _Context, ch: Charge, _created: int) -> tuple[int | None, str]:
    """`amount_refunded` is the charge's refunds so far, so each grant the payment bought is
    reversed up to the same share of it (later events of the same charge only add the rest)."""
    refs = [r for r in (ch.payment_intent, ch.invoice, ch.id) if r]
    found = ctx.conn.execute(
        select(payment_grants.c.grant_id, payment_grants.c.user_id, grants.c.amount_ucr)
        .join(grants, grants.c.id == payment_grants.c.grant_id)
        .where(payment_grants.c.payment_ref.in_(refs)).distinct().order_by(payment_grants.c.grant_id)
    ).all()
    if not found:
        raise _Pending("no grant bought by this payment yet", *refs)
    if ch.amount <= 0 or ch.amount_refunded <= 0:
        return int(found[0].user_id), "ignored: nothing refunded"
    total = 0
    for grant_id, user_id, granted in found:
        target = granted if ch.amount_refunded >= ch.amount else granted * ch.amount_refunded // ch.amount
        todo = target - ctx.ledger.reversed_ucr(ctx.conn, int(user_id), int(grant_id))
        if todo > 0:
            total += ctx.ledger.reverse_grant(
                ctx.conn, int(user_id), int(grant_id), todo, reason=f"refund of {ch.id}",
                source_ref=_bounded(f"refund:{ch.id}:{grant_id}:{ch.amount_refunded}"), at_ms=ctx.at,
            )
    return int(found[0].user_id), f"reversed {total} ucr"


def _bounded(key: str, limit: int = 100) -> str:
    """An idempotency key that fits its column (ledger_entries.request_id): a digest if longer."""
    return key if len(key) <= limit else "sha256:" + hashlib.sha256(key.encode()).hexdigest()


_CHECKOUT = (CheckoutSession, _checkout_completed)
_SUBSCRIPTION = (Subscription, _subscription_updated)
_HANDLERS: dict[str, tuple[type[StripeObject], Handler]] = {
    "checkout.session.completed": _CHECKOUT,
    "checkout.session.async_payment_succeeded": _CHECKOUT,
    "invoice.paid": (Invoice, _invoice_paid),
    "invoice.payment_failed": (Invoice, _invoice_failed),
    "customer.subscription.created": _SUBSCRIPTION,
    "customer.subscription.updated": _SUBSCRIPTION,
    "customer.subscription.deleted": (Subscription, _subscription_deleted),
    "charge.refunded": (Charge, _charge_refunded),
}
