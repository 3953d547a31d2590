"""What an operator reads and changes about users (the CLI's `users`, `caps show` and
`subscription change`): listings, one user's whole picture, spending against caps, and a plan
the operator assigns, with its credits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, select

from switchboard.accounts.keys import list_keys
from switchboard.accounts.users import User, user_of_row
from switchboard.billing import subscriptions as subs
from switchboard.billing.accounts import save_wallet
from switchboard.billing.ledger import PROMOTIONS, Ledger, now_ms
from switchboard.billing.limits import cap_windows, settled_since
from switchboard.core.config import Settings
from switchboard.store.schema import api_keys, usage_records, users, wallets


def list_users(conn: Connection, ledger: Ledger, limit: int, plan: str | None = None) -> list[dict[str, Any]]:
    """Users, oldest first (at most `limit`), each with plan, balance and active keys."""
    active_keys = (
        select(func.count(api_keys.c.id))
        .where(api_keys.c.user_id == users.c.id, api_keys.c.revoked_ms.is_(None))
        .scalar_subquery()
    )
    query = select(users, active_keys.label("active_keys")).order_by(users.c.id).limit(limit)
    if plan is not None:
        query = query.where(users.c.plan == plan)
    out = []
    for row in conn.execute(query).all():
        balance = ledger.balance(conn, row.id)
        out.append({"id": row.id, "email": row.email, "plan": row.plan, "created_ms": row.created_ms,
                    "available_ucr": balance.available_ucr, "held_ucr": balance.held_ucr,
                    "active_keys": int(row.active_keys)})
    return out


def count_users(conn: Connection) -> int:
    return int(conn.execute(select(func.count(users.c.id))).scalar_one())


def caps(conn: Connection, user_id: int, at_ms: int | None = None) -> list[dict[str, Any]]:
    """Each cap (daily: the UTC day; monthly: the allowance period): its limit (None: no cap),
    what counts against it now (charged in the window plus held, as a hold checks it), and
    what is left."""
    at = at_ms if at_ms is not None else now_ms()
    wallet = dict(conn.execute(select(wallets).where(wallets.c.user_id == user_id)).mappings().one())
    out = []
    for cap, since in cap_windows(wallet, at):
        limit = wallet[f"{cap}_cap_ucr"]
        spent = settled_since(conn, user_id, since) + wallet["held_ucr"]
        out.append({"cap": cap, "window_start_ms": since, "limit_ucr": limit, "spent_ucr": spent,
                    "left_ucr": None if limit is None else max(0, limit - spent)})
    return out


def overview(conn: Connection, ledger: Ledger, user: User) -> dict[str, Any]:
    """One user: plan and subscription, balance, caps, keys, and their last request."""
    balance = ledger.balance(conn, user.id)
    sub = subs.get(conn, user.id)
    keys = list_keys(conn, user.id)
    last_request = conn.execute(
        select(usage_records.c.created_ms, usage_records.c.model)
        .where(usage_records.c.user_id == user.id).order_by(usage_records.c.id.desc()).limit(1)
    ).first()
    requests = conn.execute(select(func.count(usage_records.c.id)).where(usage_records.c.user_id == user.id)).scalar_one()
    return {
        "id": user.id, "email": user.email, "plan": user.plan, "created_ms": user.created_ms,
        "subscription": sub.as_json() if sub else None,
        "available_ucr": balance.available_ucr, "held_ucr": balance.held_ucr, "balance_ucr": balance.balance_ucr,
        "debt_ucr": balance.debt_ucr, "period_end_ms": balance.period_end_ms,
        "caps": caps(conn, user.id),
        "keys": {"active": sum(k.revoked_ms is None for k in keys), "revoked": sum(k.revoked_ms is not None for k in keys),
                 "last_used_ms": max((k.last_used_ms for k in keys if k.last_used_ms is not None), default=None)},
        "requests": int(requests),
        "last_request": None if last_request is None else {"at_ms": last_request.created_ms, "model": last_request.model},
    }


def find_by_id(conn: Connection, user_id: int) -> User | None:
    row = conn.execute(select(users).where(users.c.id == user_id)).first()
    return None if row is None else user_of_row(row)


@dataclass(frozen=True, slots=True)
class PlanAssignment:
    """An operator's plan change for a user whom Stripe does not bill."""

    change: str  # 'assigned' | 'unchanged'
    granted_ucr: int  # credits granted now (an upgrade); 0 otherwise
    period_end_ms: int  # when the next allowance (of the plan in force then) is granted

    def as_json(self) -> dict[str, Any]:
        return {"change": self.change, "granted_ucr": self.granted_ucr, "next_allowance_ms": self.period_end_ms}


def assign_plan(conn: Connection, ledger: Ledger, settings: Settings, user_id: int, plan: str) -> PlanAssignment:
    """Put a user whom Stripe does not bill on `plan`, in force now.

    A larger allowance is granted at once, as `users create --plan` does: this period's
    allowance is topped up to the new plan's (the difference, expiring with the period, a gift:
    promotions), so the user has what a new user of that plan has. A smaller one takes nothing
    back: credits already granted stay, and the new plan's allowance comes with the next period.
    Done again in the same period it grants nothing more."""
    change = subs.set_operator_plan(conn, settings, user_id, plan)
    at = now_ms()
    wallet = ledger._lock(conn, user_id, at)  # noqa: SLF001 - locked and brought up to date (a new period)
    new = ledger.allowance_ucr_by_plan.get(plan, 0)
    extra = new - wallet["period_allowance_ucr"]
    granted = 0
    if change != subs.UNCHANGED and extra > 0:
        grant_id = ledger.grant(
            conn, user_id, extra, kind="allowance", reason=f"{plan} allowance (plan assigned by the operator)",
            expires_ms=wallet["period_end_ms"], source_ref=f"operator-plan:{user_id}:{wallet['period_start_ms']}:{plan}",
            at_ms=at, funded_by=PROMOTIONS, _wallet=wallet,
        )
        granted = extra if grant_id is not None else 0
        # The period's allowance is now the new plan's: low-balance alerts are measured against it.
        wallet["period_allowance_ucr"] = new
    save_wallet(conn, wallet, at)
    return PlanAssignment(change, granted, wallet["period_end_ms"])
