"""The ledger's books: its accounts, how a transaction's entries are written, and the wallet row.

Shared by the ledger's two halves: billing.ledger (grants, refunds, expiry, periods, checks)
and billing.holds (holds and settlements, a batch at a time).
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Connection

from switchboard.core.ids import new_id
from switchboard.store import rawsql
from switchboard.store.schema import ledger_entries, wallets

# Accounts. Per user: WALLET, RECEIVABLES. System-wide: the rest.
WALLET, RECEIVABLES = "wallet", "receivables"
SALES, PROMOTIONS, REVENUE, BREAKAGE, REFUNDS = "sales", "promotions", "revenue", "breakage", "refunds"
# Inference the operator paid for and did not charge (a vendor that billed more than the hold
# covered, an answer that failed before it was delivered): funded by promotions, like any credit
# the operator gives away, so that `revenue` stays what users were charged.
OPERATOR_LOSSES = "operator_losses"
USER_ACCOUNTS = (WALLET, RECEIVABLES)

Leg = tuple[str, int, "int | None", "str | None"]  # account, amount, grant id, memo

ENTRY_COLUMNS = (
    "txn_id", "account", "user_id", "kind", "amount_ucr", "grant_id", "hold_id", "request_id", "created_ms", "memo",
)
WALLET_COLUMNS = (
    "user_id", "balance_ucr", "held_ucr", "debt_ucr", "next_expiry_ms", "period_start_ms", "period_end_ms",
    "daily_cap_ucr", "monthly_cap_ucr", "period_allowance_ucr", "alert_level",
)
# Lock wallets (`{users}`: store.rawsql.select_in), in user order like every lock (store.runner).
LOCK_WALLETS = (
    f"SELECT {', '.join(WALLET_COLUMNS)} FROM wallets WHERE user_id IN ({{users}}) ORDER BY user_id FOR UPDATE"
)
# What saving a wallet writes (the caps are set on their own).
SAVED_WALLET_COLUMNS = (
    "balance_ucr", "held_ucr", "debt_ucr", "next_expiry_ms", "period_start_ms", "period_end_ms",
    "period_allowance_ucr", "alert_level", "updated_ms",
)
# Burn order: soonest expiry first (allowance before never-expiring top-ups), then oldest.
BURN_ORDER = "expires_ms IS NULL, expires_ms, id"


def now_ms() -> int:
    return int(time.time() * 1000)


def entry_rows(
    user_id: int, kind: str, at: int, legs: list[Leg], *, hold_id: int | None = None, request_id: str | None = None,
) -> list[dict[str, Any]]:
    """The entries of one transaction: legs that sum to zero; legs of zero are left out."""
    assert sum(leg[1] for leg in legs) == 0, legs
    txn = new_id()
    return [
        dict(txn_id=txn, account=account, user_id=user_id, kind=kind, amount_ucr=amount, grant_id=grant_id,
             hold_id=hold_id, request_id=request_id, created_ms=at, memo=memo)
        for account, amount, grant_id, memo in legs if amount
    ]


def record(
    conn: Connection, user_id: int, kind: str, at: int, legs: list[Leg], *,
    hold_id: int | None = None, request_id: str | None = None,
) -> None:
    """Write one transaction's entries now."""
    rows = entry_rows(user_id, kind, at, legs, hold_id=hold_id, request_id=request_id)
    rawsql.insert_many(conn, ledger_entries, ENTRY_COLUMNS, rows)


def saved_wallet(wallet: dict[str, Any], at: int) -> dict[str, Any]:
    """The row that saving `wallet` at `at` writes (for rawsql.update_many)."""
    return {**wallet, "updated_ms": at}


def save_wallet(conn: Connection, wallet: dict[str, Any], at: int) -> None:
    rawsql.update_many(conn, wallets, "user_id", SAVED_WALLET_COLUMNS, [saved_wallet(wallet, at)])
