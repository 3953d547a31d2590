"""Plan changes a subscriber asks for (POST /v1/billing/plan) or an operator makes (CLI).

Stripe is told first, and only a change Stripe accepted is applied here, in one transaction,
exactly as the `customer.subscription.updated` webhook applies it (`subscriptions.mirror_stripe`
then `subscriptions.change_plan`), so the user sees it at once. That webhook arrives later and
finds the plan already applied: an upgrade's credit is granted once (its key is per period and
plan) and a downgrade is scheduled once. If this process dies between Stripe's answer and the
local write, the webhook applies the change instead.

What is applied is Stripe's state as of its answer, so it is stamped as the last applied
Stripe state (`last_event_ms` = now): an event Stripe created before then (say, of the
cancellation withdrawn just before an upgrade) cannot undo it by arriving late.

Stripe calls block, so these functions run off the event loop; `write` runs a unit of database
work in one transaction (the server's TransactionRunner, or the CLI's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine

from switchboard.billing import subscriptions as subs
from switchboard.billing.ledger import Ledger, now_ms
from switchboard.billing.checkout import StripeGateway, requested_plan
from switchboard.core.config import Settings
from switchboard.core.errors import NotFound, SwitchboardError
from switchboard.store.db import read

Write = Callable[[Callable[[Connection], Any]], Any]
CANCEL_SCHEDULED, CANCEL_WITHDRAWN = "cancellation scheduled", "cancellation withdrawn"


class UpgradePaymentFailed(SwitchboardError):
    """Stripe could not collect the upgrade's prorated invoice: nothing changed (yet)."""

    status = 402
    type = "invalid_request_error"
    code = "payment_failed"


class NoActiveSubscription(SwitchboardError):
    """A paid plan change needs a live Stripe subscription; a first one starts at Checkout."""

    status = 409
    type = "invalid_request_error"
    code = "no_active_subscription"


@dataclass(frozen=True, slots=True)
class PlanChange:
    change: str  # subscriptions.UPGRADED ... UNCHANGED, or CANCEL_SCHEDULED / CANCEL_WITHDRAWN
    subscription: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {**self.subscription, "change": self.change}


def _state(engine: Engine, user_id: int) -> tuple[subs.Subscription | None, str]:
    return read(engine, lambda conn: (subs.get(conn, user_id), subs.plan_in_force(conn, user_id)))


def cancel_at_period_end(engine: Engine, write: Write, settings: Settings, user_id: int) -> subs.Subscription:
    """Cancel at the end of the paid period: Stripe first, then the local flag."""
    return _cancel(write, settings, user_id, _state(engine, user_id)[0])


def _cancel(write: Write, settings: Settings, user_id: int, sub: subs.Subscription | None) -> subs.Subscription:
    if sub is None or sub.stripe_subscription_id is None or sub.status == subs.CANCELED:
        raise NotFound("you have no active subscription to cancel")
    stripe_sub = StripeGateway(settings.stripe).cancel_at_period_end(sub.stripe_subscription_id)
    return write(lambda conn: _mirror(conn, user_id, stripe_sub, now_ms()))


def request_plan_change(
    engine: Engine, write: Write, ledger: Ledger, settings: Settings, user_id: int, plan: str,
) -> PlanChange:
    """Move a subscriber to `plan`. A free plan means cancelling at the period end; a paid one
    needs a live subscription (else 409: subscribe at Checkout first); the current plan
    withdraws a pending downgrade or cancellation, or changes nothing."""
    config = requested_plan(settings, plan)
    sub, in_force = _state(engine, user_id)
    live = sub is not None and sub.stripe_subscription_id is not None and sub.status in (subs.ACTIVE, subs.PAST_DUE)
    if not live and plan == in_force:
        return PlanChange(subs.UNCHANGED, subs.describe(sub, in_force))
    if config.monthly_usd <= 0:
        return PlanChange(CANCEL_SCHEDULED, _cancel(write, settings, user_id, sub).as_json())
    if not live:
        raise NoActiveSubscription(_why_not_live(sub, plan), param="plan")
    assert sub is not None and sub.stripe_subscription_id is not None
    kind = subs.plan_change_kind(sub, plan, ledger.allowance_ucr_by_plan)
    if kind == subs.UNCHANGED and not sub.cancel_at_period_end:
        return PlanChange(kind, sub.as_json())
    gateway = StripeGateway(settings.stripe)
    if kind == subs.UNCHANGED:  # only the pending cancellation to withdraw
        stripe_sub = gateway.cancel_at_period_end(sub.stripe_subscription_id, False)
    else:
        stripe_sub = gateway.change_plan(settings, user_id, sub.stripe_subscription_id, plan,
                                         upgrade=kind == subs.UPGRADED, resume=sub.cancel_at_period_end)
    if kind == subs.UPGRADED and stripe_sub.get("pending_update"):
        write(lambda conn: _mirror(conn, user_id, stripe_sub, now_ms()))
        raise UpgradePaymentFailed(
            "the payment for the upgrade did not go through, so the plan is unchanged; once the open invoice "
            "is paid (within Stripe's pending-update window) the upgrade applies by itself", param="plan")
    updated = write(lambda conn: _apply(conn, ledger, settings, user_id, plan, stripe_sub))
    return PlanChange(CANCEL_WITHDRAWN if kind == subs.UNCHANGED else kind, updated.as_json())


def _why_not_live(sub: subs.Subscription | None, plan: str) -> str:
    if sub is not None and sub.status == subs.INCOMPLETE and sub.stripe_subscription_id is not None:
        return "your subscription's first payment has not completed yet; change the plan once it is active"
    return f'you have no active subscription to change: subscribe with POST /v1/billing/checkout {{"plan": "{plan}"}}'


def _apply(
    conn: Connection, ledger: Ledger, settings: Settings, user_id: int, plan: str, stripe_sub: dict[str, Any],
) -> subs.Subscription:
    """Stripe applied the change: its status and cancellation flag, then the plan change."""
    at = now_ms()
    _mirror(conn, user_id, stripe_sub, at)
    subs.change_plan(conn, ledger, settings, user_id, plan, at)
    sub = subs.get(conn, user_id)
    assert sub is not None
    return sub


def _mirror(conn: Connection, user_id: int, stripe_sub: dict[str, Any], at: int) -> subs.Subscription:
    """Stripe's answer, as its webhook would apply it, stamped as the newest state at `at`."""
    return subs.mirror_stripe(conn, user_id, stripe_sub.get("status"), bool(stripe_sub.get("cancel_at_period_end")), at,
                              last_event_ms=at)
