"""Spending caps and low-balance alerts: the checks the ledger runs under the wallet lock.

Raw SQL (store.rawsql) like the rest of the hold and settle path: on PostgreSQL it runs in
pipeline mode, where SQLAlchemy's result handling cannot.

Caps (optional, per user): a daily cap (UTC day) and a monthly one (the allowance period).
Spent = charges settled in the window + everything currently held, so concurrent requests can
never jointly pass a cap. Alerts: when available credit falls to 20%, 5% and 0% of the period's
allowance, one notification per threshold per period goes into the `notifications` outbox,
which a dispatcher delivers to the configured notifier (billing/notify.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from switchboard.billing.periods import DAY_MS
from switchboard.store import rawsql

_SENT = (
    "SELECT threshold_pct FROM notifications WHERE user_id = :uid AND kind = 'low_balance' AND period_start_ms = :start"
)
_SETTLED_SINCE = (
    "SELECT COALESCE(SUM(charged_ucr), 0) FROM holds WHERE user_id = :uid AND status = 'settled' AND resolved_ms >= :since"
)
_INSERT_NOTIFICATION = (
    "INSERT INTO notifications (user_id, kind, threshold_pct, period_start_ms, created_ms, attempts, payload) "
    "VALUES (:user_id, :kind, :threshold_pct, :period_start_ms, :created_ms, :attempts, :payload)"
)

# (alert level, threshold in percent of the period's allowance)
THRESHOLDS = ((1, 20), (2, 5), (3, 0))


@dataclass(frozen=True, slots=True)
class CapRefusal:
    cap: str  # "daily" | "monthly"
    cap_ucr: int
    spent_ucr: int  # settled in the window plus currently held


def cap_windows(wallet: dict[str, Any], at: int) -> tuple[tuple[str, int], ...]:
    """(cap, start of its window): the UTC day, and the allowance period."""
    return ("daily", at - at % DAY_MS), ("monthly", wallet["period_start_ms"])


def settled_since(conn: Connection, user_id: int, since_ms: int) -> int:
    """What the user was charged by holds settled since `since_ms` (a cap's window)."""
    (settled,) = rawsql.fetch_one(conn, _SETTLED_SINCE, {"uid": user_id, "since": since_ms})
    return int(settled)


def check_caps(conn: Connection, wallet: dict[str, Any], amount_ucr: int, at: int) -> CapRefusal | None:
    """None when the hold fits under every cap the user has (no query when there are none)."""
    for cap, since in cap_windows(wallet, at):
        limit = wallet[f"{cap}_cap_ucr"]
        if limit is None:
            continue
        spent = settled_since(conn, wallet["user_id"], since) + wallet["held_ucr"]
        if spent + amount_ucr > limit:
            return CapRefusal(cap, limit, spent)
    return None


def alert_level(wallet: dict[str, Any]) -> int:
    allowance = wallet["period_allowance_ucr"]
    if allowance <= 0:
        return 0
    available = wallet["balance_ucr"] - wallet["held_ucr"]
    level = 0
    for lvl, pct in THRESHOLDS:
        if available * 100 <= pct * allowance:
            level = lvl
    return level


def raise_alerts(conn: Connection, wallet: dict[str, Any], at: int) -> None:
    """Queue one notification for each threshold newly crossed this period (pure arithmetic
    unless one is crossed)."""
    level = alert_level(wallet)
    if level <= wallet["alert_level"]:
        return
    available = wallet["balance_ucr"] - wallet["held_ucr"]
    sent = {row[0] for row in rawsql.fetch_all(conn, _SENT, {"uid": wallet["user_id"], "start": wallet["period_start_ms"]})}
    rows = [
        {"user_id": wallet["user_id"], "kind": "low_balance", "threshold_pct": pct,
         "period_start_ms": wallet["period_start_ms"], "created_ms": at, "attempts": 0,
         "payload": json.dumps({"event": "low_balance", "threshold_pct": pct, "available_ucr": available,
                                "period_allowance_ucr": wallet["period_allowance_ucr"],
                                "period_end_ms": wallet["period_end_ms"]})}
        for lvl, pct in THRESHOLDS if wallet["alert_level"] < lvl <= level and pct not in sent
    ]
    for row in rows:
        rawsql.write(conn, _INSERT_NOTIFICATION, row)
    wallet["alert_level"] = level
