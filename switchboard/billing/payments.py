"""Stripe's webhook events that pay for plans and packs (what goes out to Stripe: billing.checkout).

`verify_event`, `handle_event`: the signature is checked as Stripe documents
(HMAC-SHA256 of "{t}.{payload}" with the endpoint secret, within a time tolerance), then the
event is handled in one database transaction, once per event id (`payment_events`). Grants are
idempotent on their own keys too, so two different events for the same thing (e.g. two
invoice.paid for one period) grant once. An event that cannot be matched yet (a refund whose
purchase has not arrived, an invoice of a subscription nobody linked yet) is kept as pending
and handled again after every later event, so delivery order does not matter.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import stripe
from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError

from switchboard.billing import subscriptions as subs
from switchboard.billing.checkout import PaymentsNotConfigured, requested_pack, stripe_id
from switchboard.billing.ledger import SALES, Ledger, now_ms
from switchboard.billing.periods import DAY_MS
from switchboard.core.config import Settings, StripeConfig
from switchboard.core.money import credits_to_ucr
from switchboard.store.billing_schema import payment_events, payment_grants
from switchboard.store.schema import grants

log = logging.getLogger(__name__)
PENDING_RETRY_LIMIT = 50


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
    status: str  # processed | duplicate | pending | failed
    detail: str
    user_id: int | None = None


def _created_ms(event: dict[str, Any], at: int) -> int:
    """When Stripe created the event (whole seconds), in ms; `at` when it does not say."""
    return int(event.get("created") or at // 1000) * 1000


class _Pending(Exception):
    """Not handled yet: it needs something a later event brings."""


def handle_event(conn: Connection, ledger: Ledger, settings: Settings, event: dict[str, Any], at_ms: int | None = None) -> Outcome:
    """Handle one verified event, once per event id, in the caller's transaction."""
    at = at_ms if at_ms is not None else now_ms()
    created = _created_ms(event, at)
    try:
        with conn.begin_nested():
            conn.execute(insert(payment_events).values(
                event_id=event["id"], type=event["type"], created_ms=created, received_ms=at,
            ))
    except IntegrityError:
        return Outcome("duplicate", "already received")
    outcome = _process(conn, ledger, settings, event, at)
    if outcome.status == "processed":
        _retry_pending(conn, ledger, settings, at)
    return outcome


def _process(conn: Connection, ledger: Ledger, settings: Settings, event: dict[str, Any], at: int) -> Outcome:
    try:
        with conn.begin_nested():
            user_id, detail = _dispatch(conn, ledger, settings, event, at)
    except _Pending as why:
        conn.execute(update(payment_events).where(payment_events.c.event_id == event["id"]).values(
            outcome=f"pending: {why}", payload=json.dumps(event)))
        return Outcome("pending", str(why))
    except (ValueError, LookupError, TypeError, AttributeError) as exc:  # a malformed or unusable event: kept, not retried
        log.warning("stripe event %s (%s) could not be handled: %r", event["id"], event["type"], exc)
        conn.execute(update(payment_events).where(payment_events.c.event_id == event["id"]).values(
            processed_ms=at, outcome=f"failed: {exc!r}"[:1000], payload=json.dumps(event)))
        return Outcome("failed", repr(exc))
    conn.execute(update(payment_events).where(payment_events.c.event_id == event["id"]).values(
        processed_ms=at, user_id=user_id, outcome=detail, payload=None))
    return Outcome("processed", detail, user_id)


def _retry_pending(conn: Connection, ledger: Ledger, settings: Settings, at: int) -> None:
    """Handle again the events that were waiting for something; loop while any succeeds."""
    progress = True
    while progress:
        progress = False
        rows = conn.execute(
            select(payment_events.c.payload).where(payment_events.c.processed_ms.is_(None), payment_events.c.payload.is_not(None))
            .order_by(payment_events.c.created_ms, payment_events.c.id).limit(PENDING_RETRY_LIMIT)
        ).all()
        for (payload,) in rows:
            if _process(conn, ledger, settings, json.loads(payload), at).status == "processed":
                progress = True


def _dispatch(conn: Connection, ledger: Ledger, settings: Settings, event: dict[str, Any], at: int) -> tuple[int | None, str]:
    kind = event["type"]
    obj = event["data"]["object"]
    created = _created_ms(event, at)
    if kind in ("checkout.session.completed", "checkout.session.async_payment_succeeded"):
        return _checkout_completed(conn, ledger, settings, obj, at)
    if kind == "invoice.paid":
        return _invoice_paid(conn, ledger, settings, obj, at)
    if kind == "invoice.payment_failed":
        return _invoice_failed(conn, obj, at)
    if kind in ("customer.subscription.created", "customer.subscription.updated"):
        return _subscription_updated(conn, ledger, settings, obj, created, at)
    if kind == "customer.subscription.deleted":
        return _subscription_deleted(conn, ledger, settings, obj, at)
    if kind == "charge.refunded":
        return _charge_refunded(conn, ledger, obj, at)
    return None, f"ignored: {kind}"


def _metadata_user(conn: Connection, *metadatas: Any) -> int | None:
    for md in metadatas:
        if isinstance(md, dict) and str(md.get("user_id", "")).isdigit():
            uid = int(md["user_id"])
            if subs.user_exists(conn, uid):
                return uid
    return None


def _record_payment(conn: Connection, user_id: int, grant_id: int | None, refs: list[Any], at: int) -> None:
    if grant_id is None:
        return
    for ref in {r for r in refs if isinstance(r, str) and r}:
        conn.execute(insert(payment_grants).values(payment_ref=ref, grant_id=grant_id, user_id=user_id, created_ms=at))


def _checkout_completed(conn: Connection, ledger: Ledger, settings: Settings, s: dict[str, Any], at: int) -> tuple[int | None, str]:
    md = s.get("metadata") or {}
    user_id = _metadata_user(conn, md) or (int(s["client_reference_id"]) if str(s.get("client_reference_id", "")).isdigit()
                                           and subs.user_exists(conn, int(s["client_reference_id"])) else None)
    if user_id is None:
        return None, "ignored: checkout session without a known user"
    if s.get("payment_status") not in ("paid", "no_payment_required"):
        return user_id, "awaiting payment (async_payment_succeeded will follow)"
    if md.get("kind") == "pack" or s.get("mode") == "payment":
        pack = settings.packs.get(str(md.get("pack")))
        if pack is None:
            return user_id, f"ignored: unknown pack {md.get('pack')!r}"
        grant_id = grant_pack(conn, ledger, settings, user_id, pack.name, source_ref=f"stripe:checkout:{s['id']}", at_ms=at)
        _record_payment(conn, user_id, grant_id, [s.get("payment_intent"), s["id"]], at)
        return user_id, f"pack {pack.name} granted" if grant_id else f"pack {pack.name} already granted"
    plan = md.get("plan")
    subs.link(conn, user_id, plan if plan in settings.plans else None, customer_id=stripe_id(s.get("customer")),
              subscription_id=stripe_id(s.get("subscription")), at_ms=at)
    return user_id, "subscription linked (its paid invoice grants the allowance)"


def _invoice_subscription(inv: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The subscription id and its metadata, across API versions (top level or `parent`)."""
    details = (inv.get("parent") or {}).get("subscription_details") or inv.get("subscription_details") or {}
    sub_id = stripe_id(inv.get("subscription")) or stripe_id(details.get("subscription"))
    return sub_id, details.get("metadata") or {}


def _invoice_line(inv: dict[str, Any]) -> dict[str, Any] | None:
    """The subscription line (not a proration) that carries the paid period."""
    lines = ((inv.get("lines") or {}).get("data")) or []
    for line in lines:
        details = (line.get("parent") or {}).get("subscription_item_details") or {}
        if not (line.get("proration") or details.get("proration")) and (line.get("period") or {}).get("start"):
            return line
    return None


def _plan_of(settings: Settings, *items: Any) -> str | None:
    """Which plan a price belongs to: configured price id, lookup_key, or metadata."""
    by_price = {v: k for k, v in settings.stripe.plan_price_ids.items()}
    for item in items:
        if not isinstance(item, dict):
            continue
        price = item.get("price") or ((item.get("pricing") or {}).get("price_details") or {})
        if isinstance(price, dict):
            for candidate in (by_price.get(price.get("id") or ""), price.get("lookup_key"), (price.get("metadata") or {}).get("plan")):
                if candidate in settings.plans:
                    return candidate
        elif isinstance(price, str) and price in by_price:
            return by_price[price]
        plan = (item.get("metadata") or {}).get("plan")
        if plan in settings.plans:
            return plan
    return None


def _invoice_user(conn: Connection, inv: dict[str, Any]) -> tuple[int | None, str | None, dict[str, Any]]:
    sub_id, md = _invoice_subscription(inv)
    line = _invoice_line(inv) or {}
    user_id = _metadata_user(conn, md, line.get("metadata")) or subs.find_user(conn, sub_id, stripe_id(inv.get("customer")))
    return user_id, sub_id, md


def _not_current(sub: subs.Subscription | None, sub_id: str | None) -> bool:
    """Whether the event is about another subscription than the user's live one."""
    return (sub is not None and sub_id is not None and sub.stripe_subscription_id not in (None, sub_id)
            and sub.status != subs.CANCELED)


def _invoice_paid(conn: Connection, ledger: Ledger, settings: Settings, inv: dict[str, Any], at: int) -> tuple[int | None, str]:
    user_id, sub_id, md = _invoice_user(conn, inv)
    if user_id is None:
        raise _Pending("no user for this invoice's subscription yet")
    if inv.get("billing_reason") == "subscription_update":
        return _proration_paid(conn, user_id, inv, at)
    if inv.get("billing_reason") not in ("subscription_create", "subscription_cycle", "subscription", None):
        return user_id, f"no grant for a {inv.get('billing_reason')} invoice"
    line = _invoice_line(inv)
    if line is None:
        return user_id, "ignored: no subscription period on the invoice"
    if _not_current(subs.get(conn, user_id), sub_id):
        return user_id, "ignored: not the user's current subscription"
    plan = _plan_of(settings, line, md)
    period = line["period"]
    grant_id = subs.period_paid(
        conn, ledger, settings, user_id, plan, int(period["start"]) * 1000, int(period["end"]) * 1000,
        customer_id=stripe_id(inv.get("customer")), subscription_id=sub_id, at_ms=at,
    )
    _record_payment(conn, user_id, grant_id, _invoice_payment_refs(inv), at)
    return user_id, "allowance granted" if grant_id else "allowance for this period already granted"


def _invoice_payment_refs(inv: dict[str, Any]) -> list[str | None]:
    """Every id a refund of this invoice's payment may name (charge.refunded carries some)."""
    payments = [(p.get("payment") or {}).get("payment_intent") for p in ((inv.get("payments") or {}).get("data") or [])]
    return [inv.get("id"), stripe_id(inv.get("payment_intent")), stripe_id(inv.get("charge")), *map(stripe_id, payments)]


def _proration_paid(conn: Connection, user_id: int, inv: dict[str, Any], at: int) -> tuple[int | None, str]:
    """A plan change's prorated invoice paid for the upgrade's credits (subscriptions.change_plan,
    granted once per period and plan): linked to that grant, a refund of it reverses them."""
    if not inv.get("amount_paid"):
        return user_id, "nothing paid on this prorated invoice"
    sub = subs.get(conn, user_id)
    start = sub.current_period_start_ms if sub is not None else None
    grant_id = None if start is None else conn.execute(
        select(grants.c.id).where(grants.c.user_id == user_id, grants.c.source_ref.like(f"upgrade:{user_id}:{start}:%"))
        .order_by(grants.c.id.desc()).limit(1)
    ).scalar()
    if grant_id is None:
        raise _Pending("no upgrade granted yet for this prorated invoice")
    linked = set(conn.execute(select(payment_grants.c.payment_ref).where(payment_grants.c.grant_id == grant_id)).scalars())
    _record_payment(conn, user_id, int(grant_id), [r for r in _invoice_payment_refs(inv) if r not in linked], at)
    return user_id, "prorated upgrade paid: its credits are refundable with it"


def _invoice_failed(conn: Connection, inv: dict[str, Any], at: int) -> tuple[int | None, str]:
    user_id, sub_id, _ = _invoice_user(conn, inv)
    if user_id is None:
        raise _Pending("no user for this invoice's subscription yet")
    sub = subs.get(conn, user_id)
    line = _invoice_line(inv)
    start = int(line["period"]["start"]) * 1000 if line else None
    if sub is None or _not_current(sub, sub_id) or sub.status == subs.CANCELED:
        return user_id, "ignored: no current subscription"
    if start is not None and sub.current_period_start_ms is not None and start <= sub.current_period_start_ms:
        return user_id, "ignored: that period is already paid"
    subs.mark_past_due(conn, user_id, at)
    return user_id, "past_due"


def _subscription_updated(
    conn: Connection, ledger: Ledger, settings: Settings, obj: dict[str, Any], created: int, at: int,
) -> tuple[int | None, str]:
    sub_id = obj.get("id")
    user_id = _metadata_user(conn, obj.get("metadata")) or subs.find_user(conn, sub_id, stripe_id(obj.get("customer")))
    if user_id is None:
        raise _Pending("no user for this subscription yet")
    sub = subs.get(conn, user_id)
    if _not_current(sub, sub_id):
        return user_id, "ignored: not the user's current subscription"
    if sub is not None and sub.last_event_ms is not None and created < sub.last_event_ms:
        return user_id, "ignored: older than the state already applied"
    if sub is not None and sub.status == subs.CANCELED and sub.stripe_subscription_id == sub_id:
        return user_id, "ignored: the subscription has ended"
    items = ((obj.get("items") or {}).get("data")) or []
    plan = _plan_of(settings, *items, obj)
    sub = subs.link(conn, user_id, plan, customer_id=stripe_id(obj.get("customer")), subscription_id=sub_id, at_ms=at)
    subs.mirror_stripe(conn, user_id, obj.get("status"), bool(obj.get("cancel_at_period_end")), at, last_event_ms=created)
    detail = "subscription updated"
    # A plan other than the one paid for, or the paid one again while a downgrade waits (which
    # cancels it). A change already applied locally (POST /v1/billing/plan) changes nothing here.
    if plan is not None and sub.current_period_start_ms is not None and (plan != sub.plan or sub.pending_plan is not None):
        detail += ": " + subs.change_plan(conn, ledger, settings, user_id, plan, at)
    return user_id, detail


def _subscription_deleted(conn: Connection, ledger: Ledger, settings: Settings, obj: dict[str, Any], at: int) -> tuple[int | None, str]:
    sub_id = obj.get("id")
    user_id = _metadata_user(conn, obj.get("metadata")) or subs.find_user(conn, sub_id, stripe_id(obj.get("customer")))
    if user_id is None:
        raise _Pending("no user for this subscription yet")
    if _not_current(subs.get(conn, user_id), sub_id):
        return user_id, "ignored: not the user's current subscription"
    subs.link(conn, user_id, None, customer_id=stripe_id(obj.get("customer")), subscription_id=sub_id, at_ms=at)
    subs.end(conn, ledger, settings, user_id, at)
    return user_id, "subscription ended: back to the free plan"


def _charge_refunded(conn: Connection, ledger: Ledger, ch: dict[str, Any], at: int) -> tuple[int | None, str]:
    refs = [r for r in (stripe_id(ch.get("payment_intent")), stripe_id(ch.get("invoice")), ch.get("id")) if r]
    found = conn.execute(
        select(payment_grants.c.grant_id, payment_grants.c.user_id, grants.c.amount_ucr)
        .join(grants, grants.c.id == payment_grants.c.grant_id)
        .where(payment_grants.c.payment_ref.in_(refs)).distinct()
    ).all() if refs else []
    if not found:
        raise _Pending("no grant bought by this payment yet")
    amount, refunded = int(ch.get("amount") or 0), int(ch.get("amount_refunded") or 0)
    if amount <= 0 or refunded <= 0:
        return int(found[0].user_id), "ignored: nothing refunded"
    total = 0
    for grant_id, user_id, granted in found:
        target = granted if refunded >= amount else granted * refunded // amount
        todo = target - ledger.reversed_ucr(conn, int(user_id), int(grant_id))
        if todo > 0:
            total += ledger.reverse_grant(
                conn, int(user_id), int(grant_id), todo, reason=f"refund of {ch.get('id')}",
                source_ref=f"refund:{ch.get('id')}:{grant_id}:{refunded}", at_ms=at,
            )
    return int(found[0].user_id), f"reversed {total} ucr"
