"""Paid subscriptions: state per user and its lifecycle, inside the caller's transaction.

Policies (docs/billing.md explains them for users):
- A paid period's allowance is granted when its invoice is paid (`period_paid`), once per
  period: source_ref `allowance:{user}:{period start}`, the ledger's own allowance key, with
  the period boundaries taken from Stripe. While a user has a live subscription the ledger's
  lazy period roll grants nothing (ledger._PLAN_AND_BILLING), so Stripe's boundaries and
  the wallet's agree and a renewal can only come from a paid invoice.
- Upgrade: immediate. The plan changes now and the user gets the difference between the new
  and the old plan's allowance, prorated to the part of the current period that is left (as
  Stripe prorates the price), expiring with the period. Once per period and plan.
- Downgrade: at the next period. The plan (and the credits) stay until the period ends; the
  next paid invoice starts the lower plan.
- Cancel at period end: the plan stays until the period ends; Stripe then deletes the
  subscription and the user reverts to the free plan (`end`). Credits already granted stay
  until they expire.
- Payment failure: `past_due`. Remaining credits can still be spent; no new allowance is
  granted until an invoice is paid (`period_paid` then reactivates).
- Reactivation: a paid invoice (past_due -> active), or a new checkout after cancellation.
- Changes asked for through the API or the CLI (billing.plan_changes) go to Stripe first and
  are then applied here as its webhook would apply them (`mirror_stripe`, `change_plan`).
  The plan of a user whom Stripe does not bill is the operator's (`set_operator_plan`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, insert, select, update

from switchboard.billing.accounts import save_wallet
from switchboard.billing.ledger import SALES, Ledger, now_ms
from switchboard.billing.periods import period_bounds
from switchboard.core.config import Settings
from switchboard.store.billing_schema import subscriptions
from switchboard.store.schema import users

ACTIVE, PAST_DUE, CANCELED, INCOMPLETE = "active", "past_due", "canceled", "incomplete"
# What a plan change did (`change_plan`).
UPGRADED, DOWNGRADE_SCHEDULED, DOWNGRADE_CANCELLED, UNCHANGED = (
    "upgraded", "downgrade scheduled", "downgrade cancelled", "unchanged")
# Stripe's subscription statuses -> ours.
STRIPE_STATUS = {
    "active": ACTIVE, "trialing": ACTIVE, "past_due": PAST_DUE, "unpaid": PAST_DUE, "paused": PAST_DUE,
    "canceled": CANCELED, "incomplete_expired": CANCELED, "incomplete": INCOMPLETE,
}


@dataclass(frozen=True, slots=True)
class Subscription:
    user_id: int
    plan: str
    pending_plan: str | None
    status: str
    stripe_customer_id: str | None
    stripe_subscription_id: str | None
    current_period_start_ms: int | None
    current_period_end_ms: int | None
    cancel_at_period_end: bool
    last_event_ms: int | None
    updated_ms: int

    def as_json(self) -> dict[str, Any]:
        return {
            "object": "subscription", "plan": self.plan, "pending_plan": self.pending_plan, "status": self.status,
            "current_period_start_ms": self.current_period_start_ms, "current_period_end_ms": self.current_period_end_ms,
            "cancel_at_period_end": self.cancel_at_period_end,
        }


def describe(sub: Subscription | None, plan_in_force: str) -> dict[str, Any]:
    """The subscription as the API shows it; a user who never subscribed gets the same shape."""
    if sub is not None:
        return sub.as_json()
    return {"object": "subscription", "plan": plan_in_force, "pending_plan": None, "status": None,
            "current_period_start_ms": None, "current_period_end_ms": None, "cancel_at_period_end": False}


def billed_by_stripe(sub: Subscription | None) -> bool:
    """Whether Stripe bills this user now (the ledger's `_PLAN_AND_BILLING`, on a row
    already read): then the plan is Stripe's to change, not the operator's."""
    return sub is not None and sub.stripe_subscription_id is not None and sub.status != CANCELED


def _row(row: Any) -> Subscription:
    return Subscription(
        user_id=int(row.user_id), plan=row.plan, pending_plan=row.pending_plan, status=row.status,
        stripe_customer_id=row.stripe_customer_id, stripe_subscription_id=row.stripe_subscription_id,
        current_period_start_ms=row.current_period_start_ms, current_period_end_ms=row.current_period_end_ms,
        cancel_at_period_end=bool(row.cancel_at_period_end), last_event_ms=row.last_event_ms, updated_ms=row.updated_ms,
    )


def get(conn: Connection, user_id: int) -> Subscription | None:
    row = conn.execute(select(subscriptions).where(subscriptions.c.user_id == user_id)).first()
    return None if row is None else _row(row)


def find_user(conn: Connection, subscription_id: str | None = None, customer_id: str | None = None) -> int | None:
    """The user behind a Stripe subscription (preferred) or customer id."""
    for column, value in ((subscriptions.c.stripe_subscription_id, subscription_id),
                          (subscriptions.c.stripe_customer_id, customer_id)):
        if value:
            found = conn.execute(select(subscriptions.c.user_id).where(column == value)).scalar()
            if found is not None:
                return int(found)
    return None


def free_plan(settings: Settings) -> str:
    """The plan a user reverts to: 'free' if configured, else the cheapest."""
    if "free" in settings.plans:
        return "free"
    return min(settings.plans.values(), key=lambda p: p.monthly_usd).name


def user_exists(conn: Connection, user_id: int) -> bool:
    return conn.execute(select(users.c.id).where(users.c.id == user_id)).first() is not None


def plan_in_force(conn: Connection, user_id: int) -> str:
    """The plan routing and the ledger use now (`users.plan`)."""
    return str(conn.execute(select(users.c.plan).where(users.c.id == user_id)).scalar_one())


def _set_user_plan(conn: Connection, user_id: int, plan: str) -> None:
    conn.execute(update(users).where(users.c.id == user_id).values(plan=plan))


def set_operator_plan(conn: Connection, settings: Settings, user_id: int, plan: str) -> str:
    """An operator sets the plan of a user whom Stripe does not bill (a comped or manual
    account): the plan is in force now, and the ledger's own period roll grants its allowance
    from the next period on. Credits already granted stay. Returns 'assigned' or 'unchanged'."""
    settings.plan(plan)
    if billed_by_stripe(get(conn, user_id)):
        raise ValueError("this user's plan is billed by Stripe: change it through Stripe")
    if plan_in_force(conn, user_id) == plan:
        return UNCHANGED
    _set_user_plan(conn, user_id, plan)
    return "assigned"


def _upsert(conn: Connection, user_id: int, at: int, **values: Any) -> Subscription:
    if get(conn, user_id) is None:
        row = dict(plan=values.pop("plan", None), status=values.pop("status", INCOMPLETE), cancel_at_period_end=False)
        row.update(values)
        if row["plan"] is None:
            row["plan"] = plan_in_force(conn, user_id)
        conn.execute(insert(subscriptions).values(user_id=user_id, updated_ms=at, **row))
    elif values:
        conn.execute(update(subscriptions).where(subscriptions.c.user_id == user_id).values(updated_ms=at, **values))
    sub = get(conn, user_id)
    assert sub is not None
    return sub


def link(
    conn: Connection, user_id: int, plan: str | None, *, customer_id: str | None, subscription_id: str | None,
    at_ms: int | None = None,
) -> Subscription:
    """Remember which Stripe customer/subscription belongs to the user (checkout completed).
    Nothing is granted here: the paid invoice does that (`period_paid`)."""
    at = at_ms if at_ms is not None else now_ms()
    sub = get(conn, user_id)
    values: dict[str, Any] = {}
    if customer_id:
        values["stripe_customer_id"] = customer_id
    if subscription_id and (sub is None or sub.stripe_subscription_id != subscription_id):
        values["stripe_subscription_id"] = subscription_id
        if sub is not None and sub.status == CANCELED:  # a new subscription after a cancelled one
            values.update(status=INCOMPLETE, cancel_at_period_end=False, pending_plan=None)
            if plan:
                values["plan"] = plan
    if sub is None and plan:
        values["plan"] = plan
    return _upsert(conn, user_id, at, **values)


def _allowance_expiry(settings: Settings, plan: str, start: int, end: int) -> int:
    config = settings.plans.get(plan)
    if config is not None and config.rollover:
        return period_bounds(start, end)[1]  # the end of the next period: carried over once
    return end


def period_paid(
    conn: Connection, ledger: Ledger, settings: Settings, user_id: int, plan: str | None, start_ms: int, end_ms: int,
    *, customer_id: str | None = None, subscription_id: str | None = None, at_ms: int | None = None,
) -> int | None:
    """An invoice for [start_ms, end_ms) was paid: the subscription is active on `plan` (what the
    invoice paid for; else a pending downgrade; else the current plan), the wallet's period is
    Stripe's, and the period's allowance is granted, exactly once per period. Returns the grant
    id, or None when that period's allowance was granted already (or the period is over)."""
    at = at_ms if at_ms is not None else now_ms()
    wallet = ledger._lock(conn, user_id, at)  # noqa: SLF001 - the same lock as every ledger write
    sub = get(conn, user_id)
    new_period = sub is None or sub.current_period_start_ms is None or start_ms > sub.current_period_start_ms
    plan = plan or (sub.pending_plan if sub else None) or (sub.plan if sub else None)
    if plan is None or plan not in settings.plans:
        raise ValueError(f"paid invoice for unknown plan {plan!r}")
    values: dict[str, Any] = {"status": ACTIVE}
    if customer_id:
        values["stripe_customer_id"] = customer_id
    if subscription_id:
        values["stripe_subscription_id"] = subscription_id
    if new_period:
        values.update(plan=plan, pending_plan=None, current_period_start_ms=start_ms, current_period_end_ms=end_ms)
    _upsert(conn, user_id, at, **values)
    if end_ms <= at or not new_period and sub is not None and start_ms < (sub.current_period_start_ms or 0):
        return None  # an old period, paid late: nothing to use it for any more
    if new_period:
        _set_user_plan(conn, user_id, plan)
        wallet["period_start_ms"], wallet["period_end_ms"] = start_ms, end_ms
    amount = ledger.allowance_ucr_by_plan.get(plan, 0)
    grant_id = None
    if amount > 0:
        grant_id = ledger.grant(
            conn, user_id, amount, kind="allowance", reason=f"{plan} allowance", source_ref=f"allowance:{user_id}:{start_ms}",
            expires_ms=_allowance_expiry(settings, plan, start_ms, end_ms), at_ms=at, funded_by=SALES, _wallet=wallet,
        )
    save_wallet(conn, wallet, at)
    return grant_id


def plan_change_kind(sub: Subscription, new_plan: str, allowance_ucr_by_plan: Mapping[str, int]) -> str:
    """What moving `sub` to `new_plan` is: a larger allowance is an upgrade, any other plan a
    downgrade; the current plan cancels a pending downgrade (or changes nothing)."""
    if new_plan == sub.plan:
        return DOWNGRADE_CANCELLED if sub.pending_plan is not None else UNCHANGED
    old, new = allowance_ucr_by_plan.get(sub.plan, 0), allowance_ucr_by_plan.get(new_plan, 0)
    return UPGRADED if new > old else DOWNGRADE_SCHEDULED


def change_plan(
    conn: Connection, ledger: Ledger, settings: Settings, user_id: int, new_plan: str, at_ms: int | None = None,
) -> str:
    """Upgrade now (prorated difference granted) or downgrade at the next period. Returns what
    happened (`plan_change_kind`): 'upgraded', 'downgrade scheduled', 'downgrade cancelled' or
    'unchanged'. Applying the same change again grants nothing more."""
    at = at_ms if at_ms is not None else now_ms()
    settings.plan(new_plan)
    sub = get(conn, user_id)
    if sub is None:
        raise LookupError(f"user {user_id} has no subscription")
    kind = plan_change_kind(sub, new_plan, ledger.allowance_ucr_by_plan)
    if kind == DOWNGRADE_CANCELLED:
        _upsert(conn, user_id, at, pending_plan=None)
    elif kind == DOWNGRADE_SCHEDULED:
        _upsert(conn, user_id, at, pending_plan=new_plan)
    if kind != UPGRADED:
        return kind
    allowance = ledger.allowance_ucr_by_plan
    old, new = allowance.get(sub.plan, 0), allowance.get(new_plan, 0)
    wallet = ledger._lock(conn, user_id, at)  # noqa: SLF001
    _upsert(conn, user_id, at, plan=new_plan, pending_plan=None)
    if sub.status in (ACTIVE, PAST_DUE):
        _set_user_plan(conn, user_id, new_plan)
    start, end = sub.current_period_start_ms, sub.current_period_end_ms
    if sub.status == ACTIVE and start is not None and end is not None and start <= at < end:
        extra = (new - old) * (end - at) // (end - start)
        if extra > 0:
            ledger.grant(
                conn, user_id, extra, kind="allowance", reason=f"upgrade {sub.plan} -> {new_plan} (prorated)",
                source_ref=f"upgrade:{user_id}:{start}:{new_plan}", expires_ms=_allowance_expiry(settings, new_plan, start, end),
                at_ms=at, funded_by=SALES, _wallet=wallet,
            )
    save_wallet(conn, wallet, at)
    return UPGRADED


def mirror_stripe(
    conn: Connection, user_id: int, stripe_status: Any, cancel_at_period_end: bool, at_ms: int | None = None,
    **values: Any,
) -> Subscription:
    """Copy what a Stripe subscription object says into ours: `cancel_at_period_end`, and the
    status where Stripe's object is the source (past_due; incomplete while still incomplete).
    `active` comes only from a paid invoice and `canceled` only from deletion, so a late or
    replayed object cannot undo either."""
    at = at_ms if at_ms is not None else now_ms()
    sub = get(conn, user_id)
    current = sub.status if sub is not None else INCOMPLETE
    status = STRIPE_STATUS.get(str(stripe_status), current)
    values["cancel_at_period_end"] = cancel_at_period_end
    if status == PAST_DUE or (status == INCOMPLETE and current == INCOMPLETE):
        values["status"] = status
    return _upsert(conn, user_id, at, **values)


def mark_past_due(conn: Connection, user_id: int, at_ms: int | None = None) -> Subscription:
    """A renewal payment failed: credits left can be spent, no new allowance until paid."""
    return _upsert(conn, user_id, at_ms if at_ms is not None else now_ms(), status=PAST_DUE)


def end(conn: Connection, ledger: Ledger, settings: Settings, user_id: int, at_ms: int | None = None) -> Subscription:
    """The subscription is over (deleted at period end, or cancelled outright): back to the
    free plan; the ledger's own period roll grants its allowance from the next period on.
    Credits already granted stay until they expire."""
    at = at_ms if at_ms is not None else now_ms()
    ledger._lock(conn, user_id, at)  # noqa: SLF001 - serialised with the user's ledger writes; saves what it brings up to date
    sub = _upsert(conn, user_id, at, status=CANCELED, pending_plan=None, cancel_at_period_end=False)
    _set_user_plan(conn, user_id, free_plan(settings))
    return sub
