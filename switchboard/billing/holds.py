"""Holds and settlements, a batch at a time: the ledger's hot path (two per API request).

Why a batch: the runner (store.runner) commits the holds and settlements of many requests in
one transaction. Run one by one, each of them waits for the database several times (lock the
wallet, look for the hold, insert it and read its id...), and on PostgreSQL those round trips,
each statement's overhead and each wallet row rewritten once per request were most of what a
request cost. `apply` instead reads everything a batch needs in one round trip, runs the
operations in memory in order, and writes the result as one statement per table: one update
of each wallet touched, one insert of all new holds, of all entries, of all usage records.
An operation run alone (`Ledger.place_hold`, `Ledger.settle`) is a batch of one: the same code.

Correctness under concurrency: every wallet of the batch is locked first, in one statement, in
user order (the lock order of every process). Everything else is read after that lock, as
statements of their own: under PostgreSQL's READ COMMITTED a statement that waited for a lock
still sees other rows as they were when it started. Within the batch the wallets, grants and
holds in memory are the truth: before anything reads them from the database (the rare paths:
grants to expire, a new period, spending caps, grants to read again), the pending writes go
out first (`_Batch.flush`), in the same transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection

from switchboard.billing.accounts import (
    BURN_ORDER, ENTRY_COLUMNS, LOCK_WALLETS, OPERATOR_LOSSES, PROMOTIONS, REVENUE, SAVED_WALLET_COLUMNS, WALLET,
    WALLET_COLUMNS, Leg, entry_rows, now_ms, saved_wallet,
)
from switchboard.billing.limits import CapRefusal, check_caps, raise_alerts
from switchboard.store import rawsql
from switchboard.store.runner import BatchedWork
from switchboard.store.schema import grants, holds, ledger_entries, usage_records, wallets

if TYPE_CHECKING:
    from switchboard.billing.ledger import Ledger

# One exact lookup in the unique index per (user, request) (rawsql.select_each), whatever
# PostgreSQL knows of the user: with lists of users and of requests, or (user, request) IN
# (...), a user it had no statistics for yet (new, or busy since the last ANALYZE) got a plan
# that read all of that user's holds.
_HOLD_BY_REQUEST = "SELECT user_id, request_id, id FROM holds WHERE user_id = :uid AND request_id = :rid"
_HOLDS_BY_ID = "SELECT id, user_id, status, amount_ucr, request_id, charged_ucr FROM holds WHERE id IN ({holds})"
_LIVE_GRANTS = (
    "SELECT user_id, id, remaining_ucr, expires_ms FROM grants WHERE user_id IN ({users}) AND remaining_ucr > 0 "
    f"ORDER BY user_id, {BURN_ORDER}"
)
_HOLD_COLUMNS = ("id", "user_id", "request_id", "amount_ucr", "status", "model", "created_ms", "expires_ms", "process_id")
_RESOLVED_COLUMNS = ("status", "resolved_ms", "charged_ucr")
_BURNED_COLUMNS = ("remaining_ucr",)
USAGE_COLUMNS = tuple(c.name for c in usage_records.columns if c.name != "id")


@dataclass(frozen=True, slots=True)
class HoldResult:
    ok: bool
    hold_id: int | None
    available_ucr: int  # after the hold when ok; what there was when refused
    needed_ucr: int  # what was held when ok; the least that would have done when refused
    duplicate: bool = False  # this request id already has a hold
    cap: CapRefusal | None = None  # refused by a spending cap rather than the balance


@dataclass(frozen=True, slots=True)
class SettleResult:
    charged_ucr: int
    available_ucr: int
    already_resolved: bool = False
    loss_ucr: int = 0  # booked to operator_losses: the cost not charged to the user


@dataclass(slots=True)
class _LedgerOp(BatchedWork):
    """An operation that `ledger.apply` runs, with the others of its batch."""

    ledger: Ledger

    def together(self) -> Callable[[Connection, list[Any]], list[Any]]:
        return self.ledger.apply


@dataclass(slots=True)
class HoldOp(_LedgerOp):
    """Reserve `amount_ucr` of the user's credits (see `Ledger.place_hold`)."""

    user_id: int
    request_id: str
    amount_ucr: int
    model: str
    min_amount_ucr: int | None = None
    at_ms: int | None = None
    process_id: int | None = None  # the server process serving it (inference.heartbeat)


@dataclass(slots=True)
class SettleOp(_LedgerOp):
    """Charge a hold and write its usage record (see `Ledger.settle`): `charge_ucr` is the
    request's cost to the user (never charged beyond the hold), `loss_ucr` what the vendor billed
    on top that the user is not charged (an answer that failed before it was delivered)."""

    user_id: int
    hold_id: int
    charge_ucr: int
    usage: dict[str, Any] | None
    at_ms: int | None = None
    loss_ucr: int = 0


def apply(ledger: Ledger, conn: Connection, ops: list[HoldOp | SettleOp]) -> list[HoldResult | SettleResult]:
    """Run `ops` in order, as if one by one; their results in the same order."""
    with rawsql.pipeline(conn):
        batch = _Batch(ledger, conn, ops)
        results = [batch.hold(op) if isinstance(op, HoldOp) else batch.settle(op) for op in ops]
        batch.flush()
        return results


class _Batch:
    """The batch's rows as its operations leave them, and the writes still to send."""

    def __init__(self, ledger: Ledger, conn: Connection, ops: list[HoldOp | SettleOp]) -> None:
        self.ledger, self.conn = ledger, conn
        self.changed: dict[int, int] = {}  # wallets to write: user id -> time of the last change
        self.new_holds: list[dict[str, Any]] = []
        self.resolved: dict[int, dict[str, Any]] = {}  # hold id -> its resolution
        self.burned: dict[int, dict[str, Any]] = {}  # grant id -> its new remainder
        self.entries: list[dict[str, Any]] = []
        self.usage: list[dict[str, Any]] = []

        holding = [op for op in ops if isinstance(op, HoldOp)]
        settling = [op for op in ops if isinstance(op, SettleOp)]
        # All sent before any answer is awaited: one round trip on PostgreSQL (pipeline mode).
        lock = rawsql.execute(conn, *rawsql.select_in(LOCK_WALLETS, users=sorted({op.user_id for op in ops})))
        by_request = reserved = by_id = live = None
        if holding:
            reserved = rawsql.execute(conn, *rawsql.reserve_ids(conn, holds, len(holding)))
            by_request = rawsql.execute(conn, *rawsql.select_each(_HOLD_BY_REQUEST, [
                {"uid": uid, "rid": rid} for uid, rid in sorted({(op.user_id, op.request_id) for op in holding})
            ]))
        if settling:
            by_id = rawsql.execute(conn, *rawsql.select_in(_HOLDS_BY_ID, holds=sorted({op.hold_id for op in settling})))
            live = rawsql.execute(conn, *rawsql.select_in(_LIVE_GRANTS, users=sorted({op.user_id for op in settling})))
        self.wallets: dict[int, dict[str, Any]] = {row[0]: dict(zip(WALLET_COLUMNS, row)) for row in _rows(lock)}
        self.requested: dict[tuple[int, str], int] = {(u, r): h for u, r, h in _rows(by_request)}
        # Ids for the holds this batch may place, taken with the reads: no insert waits to
        # return one (rawsql.reserve_ids).
        self.free_ids = iter([row[0] for row in _rows(reserved)])
        # hold id -> [user id, status, amount, request id, charged]
        self.holds: dict[int, list[Any]] = {row[0]: list(row[1:]) for row in _rows(by_id)}
        # user id -> live grants [id, remaining, expires] in burn order
        self.grants: dict[int, list[list[Any]]] = {op.user_id: [] for op in settling}
        for user_id, *grant in _rows(live):
            self.grants[user_id].append(grant)

    # -- the operations ---------------------------------------------------------------------
    def hold(self, op: HoldOp) -> HoldResult:
        at = op.at_ms if op.at_ms is not None else now_ms()
        wallet = self._wallet(op.user_id, at)
        available = wallet["balance_ucr"] - wallet["held_ucr"]
        existing = self.requested.get((op.user_id, op.request_id))
        if existing is not None:
            return HoldResult(False, existing, max(0, available), op.amount_ucr, duplicate=True)
        amount = op.amount_ucr
        if amount > available:
            if op.min_amount_ucr is None or available < op.min_amount_ucr:
                return HoldResult(False, None, max(0, available), op.min_amount_ucr or amount)
            amount = available
        if wallet["daily_cap_ucr"] is not None or wallet["monthly_cap_ucr"] is not None:
            self.flush()  # the caps count settled holds, read from the database
            refusal = check_caps(self.conn, wallet, amount, at)
            while refusal is not None and op.min_amount_ucr is not None:
                # A request that may be shortened is, to what the tighter cap still allows.
                room = refusal.cap_ucr - refusal.spent_ucr
                if room < op.min_amount_ucr or room >= amount:
                    break
                amount = room
                refusal = check_caps(self.conn, wallet, amount, at)
            if refusal is not None:
                needed = amount if op.min_amount_ucr is None else op.min_amount_ucr
                return HoldResult(False, None, max(0, refusal.cap_ucr - refusal.spent_ucr), needed, cap=refusal)
        wallet["held_ucr"] += amount
        self.changed[op.user_id] = at
        hold_id = self.requested[(op.user_id, op.request_id)] = next(self.free_ids)
        self.new_holds.append({
            "id": hold_id,
            "user_id": op.user_id, "request_id": op.request_id, "amount_ucr": amount, "status": "active",
            "model": op.model, "created_ms": at, "expires_ms": at + self.ledger.hold_timeout_ms,
            "process_id": op.process_id,
        })
        return HoldResult(True, hold_id, available - amount, amount)

    def settle(self, op: SettleOp) -> SettleResult:
        """Exactly once per hold. The user is charged at most the hold, and at most what their
        grants hold (inference never makes debt: a grant can expire while a request runs); the
        rest of the cost, and `loss_ucr`, is the operator's loss."""
        at = op.at_ms if op.at_ms is not None else now_ms()
        wallet = self._wallet(op.user_id, at)
        hold = self.holds.get(op.hold_id)
        if hold is None or hold[0] != op.user_id:
            raise LookupError(f"hold {op.hold_id} of user {op.user_id} does not exist")
        _, status, amount, request_id, charged = hold
        if status != "active":
            return SettleResult(charged or 0, max(0, wallet["balance_ucr"] - wallet["held_ucr"]), True)
        charge = max(0, min(op.charge_ucr, amount))
        if charge > 0:
            charge = min(charge, sum(grant[1] for grant in self._live_grants(op.user_id)))
        loss = max(0, op.charge_ucr) - charge + max(0, op.loss_ucr)
        if charge > 0:
            self._charge(wallet, charge, op.hold_id, request_id, at)
        if loss > 0:
            self.entries.extend(entry_rows(op.user_id, "loss", at, [
                (PROMOTIONS, -loss, None, None), (OPERATOR_LOSSES, loss, None, "inference cost not charged"),
            ], hold_id=op.hold_id, request_id=request_id))
        hold[1], hold[4] = ("settled" if charge > 0 else "voided"), charge
        self.resolved[op.hold_id] = {"id": op.hold_id, "status": hold[1], "resolved_ms": at, "charged_ucr": charge}
        wallet["held_ucr"] -= amount
        if charge > 0:
            raise_alerts(self.conn, wallet, at)
        self.changed[op.user_id] = at
        if op.usage is not None:
            row = {**op.usage, "user_id": op.user_id, "charged_ucr": charge, "created_ms": at}
            self.usage.append({c: row.get(c) for c in USAGE_COLUMNS})
        return SettleResult(charge, max(0, wallet["balance_ucr"] - wallet["held_ucr"]), loss_ucr=loss)

    def _charge(self, wallet: dict[str, Any], amount: int, hold_id: int, request_id: str, at: int) -> None:
        """Burn `amount` (at most what the grants hold: see `settle`) from the grants in burn order."""
        user_id = wallet["user_id"]
        live = self._live_grants(user_id)
        left = amount
        depleted_expiry = False
        legs: list[Leg] = []
        for grant in live:
            if left == 0:
                break
            grant_id, remaining, expires = grant
            take = min(remaining, left)
            grant[1] = remaining - take
            self.burned[grant_id] = {"id": grant_id, "remaining_ucr": grant[1]}
            legs.append((WALLET, -take, grant_id, None))
            left -= take
            depleted_expiry |= take == remaining and expires is not None
        live[:] = [grant for grant in live if grant[1] > 0]
        assert left == 0, "a charge is never more than the grants hold"
        legs.append((REVENUE, amount, None, None))
        self.entries.extend(entry_rows(user_id, "charge", at, legs, hold_id=hold_id, request_id=request_id))
        wallet["balance_ucr"] -= amount
        if depleted_expiry:
            wallet["next_expiry_ms"] = min((g[2] for g in live if g[2] is not None), default=None)

    # -- state --------------------------------------------------------------------------------
    def _wallet(self, user_id: int, at: int) -> dict[str, Any]:
        """The locked wallet, brought up to date: grants past their time expired, a new period
        started when one is due (rare; done by the ledger on the database, so the pending
        writes go first and the user's grants are read again afterwards)."""
        wallet = self.wallets.get(user_id)
        if wallet is None:
            raise LookupError(f"user {user_id} has no wallet")
        if self.ledger._bring_up_to_date(self.conn, wallet, at, before=self.flush):  # noqa: SLF001 - the ledger's own rule
            self.grants.pop(user_id, None)
        return wallet

    def _live_grants(self, user_id: int) -> list[list[Any]]:
        live = self.grants.get(user_id)
        if live is None:
            self.flush()
            rows = rawsql.fetch_all(self.conn, *rawsql.select_in(_LIVE_GRANTS, users=[user_id]))
            live = self.grants[user_id] = [list(row[1:]) for row in rows]
        return live

    def flush(self) -> None:
        """Send the pending writes (on PostgreSQL without waiting for them)."""
        conn = self.conn
        for table, columns, rows in (
            (holds, _HOLD_COLUMNS, self.new_holds), (ledger_entries, ENTRY_COLUMNS, self.entries),
            (usage_records, USAGE_COLUMNS, self.usage),
        ):
            if rows:
                rawsql.insert_many(conn, table, columns, rows)
        saved = [saved_wallet(self.wallets[user_id], at) for user_id, at in self.changed.items()]
        for table, key, columns, updated in (
            (grants, "id", _BURNED_COLUMNS, list(self.burned.values())),
            (holds, "id", _RESOLVED_COLUMNS, list(self.resolved.values())),
            (wallets, "user_id", SAVED_WALLET_COLUMNS, saved),
        ):
            if updated:
                rawsql.update_many(conn, table, key, columns, updated)
        self.new_holds, self.entries, self.usage, self.burned, self.resolved, self.changed = [], [], [], {}, {}, {}


def _rows(cursor: Any) -> list[Any]:
    if cursor is None:
        return []
    rows = cursor.fetchall()
    cursor.close()
    return list(rows)
