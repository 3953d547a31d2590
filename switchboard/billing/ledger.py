"""The credit ledger: grants, holds, settlement, expiry. Pure database work on one Connection.

Every method runs inside a caller's transaction (see store.runner) and first locks the user's
wallet row, so check-and-reserve is atomic under any concurrency, in one process or many. Domain
outcomes (not enough credits, already settled) are returned, not raised, so that one refused
request does not abort a group-committed batch.

Double entry: every change is one transaction (`txn_id`) of entries that sum to zero, between
a user's `wallet` (credits held), the user's `receivables` (credits owed: usage beyond the
balance) and the system accounts `sales` (credits paid for), `promotions` (credits given),
`revenue` (credits spent on inference), `breakage` (credits expired) and `refunds`.

Invariants (checked by `verify`):
  SUM(amount_ucr) of every transaction = 0                      (entries are immutable)
  wallet.balance_ucr = SUM(wallet and receivables entries of the user)
  SUM(wallet entries of the user) = SUM(grants.remaining_ucr)
  wallet.debt_ucr    = -SUM(receivables entries of the user)
  wallet.held_ucr    = SUM(active holds.amount_ucr)
  available          = balance - held                           (never reserved below zero)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, func, insert, select, update

from switchboard.billing.limits import CapRefusal, check_caps, raise_alerts
from switchboard.billing.periods import period_bounds
from switchboard.core.ids import new_id
from switchboard.store import rawsql
from switchboard.store.schema import grants, holds, ledger_entries, usage_records, wallets

# Hot-path statements (hold and settle run twice per API request): raw SQL, see store.rawsql.
_WALLET_COLUMNS = (
    "user_id", "balance_ucr", "held_ucr", "debt_ucr", "next_expiry_ms", "period_start_ms", "period_end_ms",
    "daily_cap_ucr", "monthly_cap_ucr", "period_allowance_ucr", "alert_level",
)
_LOCK_WALLET = f"SELECT {', '.join(_WALLET_COLUMNS)} FROM wallets WHERE user_id = :uid FOR UPDATE"
# Read after the lock, as statements of their own: under PostgreSQL's READ COMMITTED a statement
# that waited for the lock still sees other rows as they were when it started, so a hold or
# grant joined into the locking SELECT could be stale. In pipeline mode (store.runner) they
# still go out with the lock, one round trip in all.
_HOLD_BY_REQUEST = "SELECT id FROM holds WHERE user_id = :uid AND request_id = :rid"
# Burn order: soonest expiry first (allowance before never-expiring top-ups), then oldest.
_BURN_ORDER = "ORDER BY expires_ms IS NULL, expires_ms, id"
# The hold, and the first grant to burn: it usually covers the whole charge, and then settling
# reads no other. One row always (NULLs for what is missing).
_HOLD_AND_FIRST_GRANT = (
    "SELECT h.status, h.amount_ucr, h.request_id, h.charged_ucr, g.id, g.remaining_ucr, g.expires_ms "
    "FROM (SELECT 1 AS one) o LEFT JOIN holds h ON h.id = :hid AND h.user_id = :uid "
    f"LEFT JOIN grants g ON g.id = (SELECT id FROM grants WHERE user_id = :uid AND remaining_ucr > 0 {_BURN_ORDER} LIMIT 1)"
)
_SAVE_WALLET = (
    "UPDATE wallets SET balance_ucr = :balance_ucr, held_ucr = :held_ucr, debt_ucr = :debt_ucr, "
    "next_expiry_ms = :next_expiry_ms, period_start_ms = :period_start_ms, period_end_ms = :period_end_ms, "
    "period_allowance_ucr = :period_allowance_ucr, alert_level = :alert_level, "
    "updated_ms = :at WHERE user_id = :user_id"
)
_SET_HELD = "UPDATE wallets SET held_ucr = :held, updated_ms = :at WHERE user_id = :uid"
_INSERT_HOLD = (
    "INSERT INTO holds (user_id, request_id, amount_ucr, status, model, created_ms, expires_ms) "
    "VALUES (:uid, :rid, :amount, 'active', :model, :at, :expires) RETURNING id"
)
_RESOLVE_HOLD = "UPDATE holds SET status = :status, resolved_ms = :at, charged_ucr = :charged WHERE id = :hid"
_LIVE_GRANTS = f"SELECT id, remaining_ucr, expires_ms FROM grants WHERE user_id = :uid AND remaining_ucr > 0 {_BURN_ORDER}"
_EXPIRED_GRANTS = "SELECT id, remaining_ucr FROM grants WHERE user_id = :uid AND remaining_ucr > 0 AND expires_ms <= :at"
_SET_REMAINING = "UPDATE grants SET remaining_ucr = :remaining WHERE id = :gid"
_NEXT_EXPIRY = (
    "SELECT MIN(expires_ms) FROM grants WHERE user_id = :uid AND remaining_ucr > 0 AND expires_ms IS NOT NULL"
)
_ENTRY_COLUMNS = (
    "txn_id", "account", "user_id", "kind", "amount_ucr", "grant_id", "hold_id", "request_id", "created_ms", "memo",
)
_INSERT_GRANT = (
    "INSERT INTO grants (user_id, kind, amount_ucr, remaining_ucr, expires_ms, created_ms, reason, source_ref) "
    "VALUES (:uid, :kind, :amount, :remaining, :expires, :at, :reason, :ref) RETURNING id"
)
_GRANT_BY_REF = "SELECT id FROM grants WHERE source_ref = :ref"
# The user's plan, and whether a live Stripe subscription bills it. Such a subscription grants
# its allowances itself (billing.subscriptions, on invoice.paid): the lazy period roll then
# grants nothing, so a renewal happens exactly once and never before it is paid.
_PLAN_AND_BILLING = (
    "SELECT u.plan, EXISTS (SELECT 1 FROM subscriptions s WHERE s.user_id = u.id AND s.status <> 'canceled' "
    "AND s.stripe_subscription_id IS NOT NULL) FROM users u WHERE u.id = :uid"
)


# Accounts. Per user: WALLET, RECEIVABLES. System-wide: the rest.
WALLET, RECEIVABLES = "wallet", "receivables"
SALES, PROMOTIONS, REVENUE, BREAKAGE, REFUNDS = "sales", "promotions", "revenue", "breakage", "refunds"
USER_ACCOUNTS = (WALLET, RECEIVABLES)
_USAGE_COLUMNS = tuple(c.name for c in usage_records.columns if c.name != "id")
_INSERT_USAGE = (
    f"INSERT INTO usage_records ({', '.join(_USAGE_COLUMNS)}) VALUES ({', '.join(':' + c for c in _USAGE_COLUMNS)})"
)


def now_ms() -> int:
    return int(time.time() * 1000)


def _entries(
    user_id: int, kind: str, at: int, legs: list[tuple[str, int, int | None, str | None]], *,
    hold_id: int | None = None, request_id: str | None = None,
) -> rawsql.Statement:
    """The INSERT recording one transaction: legs of (account, amount, grant id, memo) that
    sum to zero; legs of zero are left out."""
    assert sum(leg[1] for leg in legs) == 0, legs
    txn = new_id()
    return rawsql.insert_rows("ledger_entries", _ENTRY_COLUMNS, [
        dict(txn_id=txn, account=account, user_id=user_id, kind=kind, amount_ucr=amount, grant_id=grant_id,
             hold_id=hold_id, request_id=request_id, created_ms=at, memo=memo)
        for account, amount, grant_id, memo in legs if amount
    ])


@dataclass(frozen=True, slots=True)
class Balance:
    balance_ucr: int
    held_ucr: int
    debt_ucr: int
    period_end_ms: int

    @property
    def available_ucr(self) -> int:
        return max(0, self.balance_ucr - self.held_ucr)


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


@dataclass(frozen=True, slots=True)
class Mismatch:
    user_id: int
    what: str
    cached: int
    derived: int


class Ledger:
    def __init__(
        self, allowance_ucr_by_plan: dict[str, int], hold_timeout_ms: int = 900_000,
    ) -> None:
        self.allowance_ucr_by_plan = allowance_ucr_by_plan
        self.hold_timeout_ms = hold_timeout_ms

    # -- wallets --------------------------------------------------------------------------
    def open_wallet(self, conn: Connection, user_id: int, plan: str, at_ms: int | None = None) -> None:
        """Create the wallet and grant the first period's allowance."""
        at = at_ms if at_ms is not None else now_ms()
        start, end = period_bounds(at, at)
        conn.execute(
            insert(wallets).values(
                user_id=user_id, balance_ucr=0, held_ucr=0, debt_ucr=0, next_expiry_ms=None,
                period_start_ms=start, period_end_ms=end, updated_ms=at,
                period_allowance_ucr=self.allowance_ucr_by_plan.get(plan, 0), alert_level=0,
            )
        )
        self._grant_allowance(conn, user_id, plan, start, end, at)

    def _lock(self, conn: Connection, user_id: int, at: int) -> dict[str, Any]:
        """Lock the wallet row and bring it up to date (see `_bring_up_to_date`)."""
        wallet, _ = self._lock_row(conn, user_id)
        self._bring_up_to_date(conn, wallet, at)
        return wallet

    @staticmethod
    def _lock_row(
        conn: Connection, user_id: int, *reads: tuple[str, dict[str, Any]],
    ) -> tuple[dict[str, Any], list[Any]]:
        """Lock the wallet row, then run `reads` (sql, params): the wallet and each read's
        first row (None where it found nothing). All are sent before any answer is awaited."""
        lock = rawsql.execute(conn, _LOCK_WALLET, {"uid": user_id})
        cursors = [rawsql.execute(conn, sql, params) for sql, params in reads]
        row = lock.fetchone()
        rows = [cursor.fetchone() for cursor in cursors]
        for cursor in (lock, *cursors):
            cursor.close()
        if row is None:
            raise LookupError(f"user {user_id} has no wallet")
        return dict(zip(_WALLET_COLUMNS, row)), rows

    def _bring_up_to_date(self, conn: Connection, wallet: dict[str, Any], at: int) -> bool:
        """Expire grants past their time, start a new period when one is due. True when
        anything changed (what was read with the lock may then be stale)."""
        changed = False
        if wallet["next_expiry_ms"] is not None and wallet["next_expiry_ms"] <= at:
            self._expire(conn, wallet, at)
            changed = True
        if at >= wallet["period_end_ms"]:
            self._roll_period(conn, wallet, at)
            changed = True
        return changed

    def _save(self, conn: Connection, wallet: dict[str, Any], at: int) -> None:
        rawsql.write(conn, _SAVE_WALLET, {**wallet, "at": at})

    def _roll_period(self, conn: Connection, wallet: dict[str, Any], at: int) -> None:
        user_id = wallet["user_id"]
        plan, billed_by_stripe = rawsql.fetch_one(conn, _PLAN_AND_BILLING, {"uid": user_id})
        start, end = period_bounds(wallet["period_start_ms"], at)
        wallet["period_start_ms"], wallet["period_end_ms"] = start, end
        if not billed_by_stripe:  # those renew on invoice.paid
            self._grant_allowance(conn, user_id, plan, start, end, at, wallet)
        self._save(conn, wallet, at)

    def _grant_allowance(
        self, conn: Connection, user_id: int, plan: str, start: int, end: int, at: int,
        wallet: dict[str, Any] | None = None,
    ) -> None:
        """The ledger's own allowance (new wallet, period roll): never paid for, since a plan
        Stripe bills is granted on its paid invoice instead (subscriptions.period_paid, funded
        by sales). A paid plan set by the operator is a gift: promotions."""
        amount = self.allowance_ucr_by_plan.get(plan, 0)
        if amount > 0:
            self.grant(
                conn, user_id, amount, kind="allowance", reason=f"{plan} allowance",
                expires_ms=end, source_ref=f"allowance:{user_id}:{start}", at_ms=at,
                funded_by=PROMOTIONS, _wallet=wallet,
            )

    # -- grants ---------------------------------------------------------------------------
    def grant(
        self, conn: Connection, user_id: int, amount_ucr: int, *, kind: str, reason: str | None = None,
        expires_ms: int | None = None, source_ref: str | None = None, at_ms: int | None = None,
        funded_by: str = PROMOTIONS, _wallet: dict[str, Any] | None = None,
    ) -> int | None:
        """Add credits, funded by `sales` (paid for) or `promotions` (given). Returns the grant
        id, or None when `source_ref` was already granted (idempotent)."""
        if funded_by not in (SALES, PROMOTIONS):
            raise ValueError(f"a grant is funded by sales or promotions, not {funded_by!r}")
        if amount_ucr <= 0:
            raise ValueError("a grant must be positive")
        at = at_ms if at_ms is not None else now_ms()
        wallet = _wallet if _wallet is not None else self._lock(conn, user_id, at)
        if source_ref is not None and rawsql.fetch_one(conn, _GRANT_BY_REF, {"ref": source_ref}) is not None:
            return None
        # New credit pays off any debt first (the debt was already charged as an entry).
        repay = min(wallet["debt_ucr"], amount_ucr)
        (grant_id,) = rawsql.fetch_one(conn, _INSERT_GRANT, {
            "uid": user_id, "kind": kind, "amount": amount_ucr, "remaining": amount_ucr - repay, "expires": expires_ms,
            "at": at, "reason": reason, "ref": source_ref,
        })
        # Receivables: the new credit settles what was owed first.
        rawsql.write(conn, *_entries(user_id, "grant", at, [(funded_by, -amount_ucr, grant_id, reason),
                                                            (WALLET, amount_ucr - repay, grant_id, reason),
                                                            (RECEIVABLES, repay, grant_id, reason)]))
        wallet["debt_ucr"] -= repay
        wallet["balance_ucr"] += amount_ucr
        if kind == "allowance":  # a new period's allowance: the base of this period's alerts
            wallet["period_allowance_ucr"] = amount_ucr
            wallet["alert_level"] = 0
        if expires_ms is not None and amount_ucr > repay:
            current = wallet["next_expiry_ms"]
            wallet["next_expiry_ms"] = expires_ms if current is None else min(current, expires_ms)
        if _wallet is None:
            self._save(conn, wallet, at)
        return int(grant_id)

    def reverse_grant(
        self, conn: Connection, user_id: int, grant_id: int, amount_ucr: int, *, reason: str | None = None,
        source_ref: str | None = None, at_ms: int | None = None,
    ) -> int:
        """Take back up to `amount_ucr` of a grant (a refunded payment) into `refunds`.

        What the grant still holds leaves the wallet; what already expired comes back out of
        `breakage`; what was already spent becomes debt (receivables), paid off by the next
        grant. Never more than the grant's amount in all. Idempotent on `source_ref` (kept in
        the entries' request_id). Returns the credits reversed (0 when already done)."""
        if amount_ucr <= 0:
            raise ValueError("a reversal must be positive")
        at = at_ms if at_ms is not None else now_ms()
        wallet = self._lock(conn, user_id, at)
        if source_ref is not None and conn.execute(
            select(ledger_entries.c.id).where(
                ledger_entries.c.user_id == user_id, ledger_entries.c.kind == "refund", ledger_entries.c.request_id == source_ref,
            ).limit(1)
        ).first() is not None:
            return 0
        grant = conn.execute(
            select(grants.c.amount_ucr, grants.c.remaining_ucr, grants.c.expires_ms)
            .where(grants.c.id == grant_id, grants.c.user_id == user_id)
        ).first()
        if grant is None:
            raise LookupError(f"grant {grant_id} of user {user_id} does not exist")
        amount = min(amount_ucr, grant.amount_ucr - self.reversed_ucr(conn, user_id, grant_id))
        if amount <= 0:
            return 0
        expired = int(conn.execute(
            select(func.coalesce(func.sum(ledger_entries.c.amount_ucr), 0)).where(
                ledger_entries.c.user_id == user_id, ledger_entries.c.grant_id == grant_id,
                ledger_entries.c.account == BREAKAGE,
            )
        ).scalar_one())
        from_wallet = min(amount, grant.remaining_ucr)
        from_breakage = min(amount - from_wallet, max(0, expired))
        to_debt = amount - from_wallet - from_breakage
        if from_wallet:
            conn.execute(update(grants).where(grants.c.id == grant_id).values(remaining_ucr=grant.remaining_ucr - from_wallet))
        rawsql.write(conn, *_entries(user_id, "refund", at, [
            (account, value, grant_id, reason)
            for account, value in ((WALLET, -from_wallet), (BREAKAGE, -from_breakage), (RECEIVABLES, -to_debt), (REFUNDS, amount))
        ], request_id=source_ref))
        wallet["balance_ucr"] -= from_wallet + to_debt
        wallet["debt_ucr"] += to_debt
        if from_wallet == grant.remaining_ucr and grant.expires_ms is not None:
            wallet["next_expiry_ms"] = self._next_expiry(conn, user_id)
        self._save(conn, wallet, at)
        return amount

    @staticmethod
    def reversed_ucr(conn: Connection, user_id: int, grant_id: int) -> int:
        """How much of a grant refunds have taken back so far."""
        return -int(conn.execute(
            select(func.coalesce(func.sum(ledger_entries.c.amount_ucr), 0)).where(
                ledger_entries.c.user_id == user_id, ledger_entries.c.grant_id == grant_id, ledger_entries.c.kind == "refund",
                ledger_entries.c.account.in_(USER_ACCOUNTS + (BREAKAGE,)),
            )
        ).scalar_one())

    def _expire(self, conn: Connection, wallet: dict[str, Any], at: int) -> None:
        user_id = wallet["user_id"]
        for grant_id, remaining in rawsql.fetch_all(conn, _EXPIRED_GRANTS, {"uid": user_id, "at": at}):
            rawsql.write(conn, _SET_REMAINING, {"gid": grant_id, "remaining": 0})
            rawsql.write(conn, *_entries(user_id, "expiry", at, [(WALLET, -remaining, grant_id, "grant expired"),
                                                                 (BREAKAGE, remaining, grant_id, "grant expired")]))
            wallet["balance_ucr"] -= remaining
        wallet["next_expiry_ms"] = self._next_expiry(conn, user_id)
        self._save(conn, wallet, at)

    @staticmethod
    def _next_expiry(conn: Connection, user_id: int) -> int | None:
        row = rawsql.fetch_one(conn, _NEXT_EXPIRY, {"uid": user_id})
        return None if row is None or row[0] is None else int(row[0])

    # -- holds ----------------------------------------------------------------------------
    def place_hold(
        self, conn: Connection, user_id: int, request_id: str, amount_ucr: int, model: str,
        at_ms: int | None = None, min_amount_ucr: int | None = None,
    ) -> HoldResult:
        """Reserve `amount_ucr` if available: the check and the reservation are one atomic step.

        With `min_amount_ucr`, a smaller hold is accepted: everything available, if that is at
        least the minimum (the caller then shrinks the request to fit what was held).
        """
        at = at_ms if at_ms is not None else now_ms()
        wallet, (existing,) = self._lock_row(conn, user_id, (_HOLD_BY_REQUEST, {"uid": user_id, "rid": request_id}))
        self._bring_up_to_date(conn, wallet, at)
        available = wallet["balance_ucr"] - wallet["held_ucr"]
        if existing is not None:
            return HoldResult(False, existing[0], max(0, available), amount_ucr, duplicate=True)
        if amount_ucr > available:
            if min_amount_ucr is None or available < min_amount_ucr:
                return HoldResult(False, None, max(0, available), min_amount_ucr or amount_ucr)
            amount_ucr = available
        if wallet["daily_cap_ucr"] is not None or wallet["monthly_cap_ucr"] is not None:
            refusal = check_caps(conn, wallet, amount_ucr, at)
            if refusal is not None:
                return HoldResult(False, None, max(0, refusal.cap_ucr - refusal.spent_ucr), amount_ucr, cap=refusal)
        wallet["held_ucr"] += amount_ucr
        rawsql.write(conn, _SET_HELD, {"uid": user_id, "held": wallet["held_ucr"], "at": at})
        (hold_id,) = rawsql.fetch_one(conn, _INSERT_HOLD, {
            "uid": user_id, "rid": request_id, "amount": amount_ucr, "model": model, "at": at,
            "expires": at + self.hold_timeout_ms,
        })
        return HoldResult(True, int(hold_id), available - amount_ucr, amount_ucr)

    def settle(
        self, conn: Connection, user_id: int, hold_id: int, charge_ucr: int, usage: dict[str, Any] | None,
        at_ms: int | None = None,
    ) -> SettleResult:
        """Charge the actual cost, release the rest of the hold and write the usage record.

        Exactly once per hold: a second call changes nothing and reports `already_resolved`.
        A charge above the hold is still charged in full; what the grants cannot cover is debt.
        A zero charge voids the hold.
        """
        at = at_ms if at_ms is not None else now_ms()
        wallet, (found,) = self._lock_row(conn, user_id, (_HOLD_AND_FIRST_GRANT, {"uid": user_id, "hid": hold_id}))
        status, amount, request_id, charged, *first_grant = found
        if self._bring_up_to_date(conn, wallet, at):
            first_grant = [None]  # it may have just expired: read them all
        if status is None:
            raise LookupError(f"hold {hold_id} of user {user_id} does not exist")
        if status != "active":
            return SettleResult(charged or 0, max(0, wallet["balance_ucr"] - wallet["held_ucr"]), True)
        # The writes below wait for nothing (pipeline mode on PostgreSQL, see store.runner).
        if charge_ucr > 0:
            self._charge(conn, wallet, charge_ucr, hold_id, request_id, at, first_grant)
        rawsql.write(conn, _RESOLVE_HOLD, {
            "hid": hold_id, "status": "settled" if charge_ucr > 0 else "voided", "at": at, "charged": charge_ucr,
        })
        wallet["held_ucr"] -= amount
        if charge_ucr > 0:
            raise_alerts(conn, wallet, at)
        self._save(conn, wallet, at)
        if usage is not None:
            row = {**usage, "user_id": user_id, "charged_ucr": charge_ucr, "created_ms": at}
            rawsql.write(conn, _INSERT_USAGE, {c: row.get(c) for c in _USAGE_COLUMNS})
        return SettleResult(charge_ucr, max(0, wallet["balance_ucr"] - wallet["held_ucr"]))

    def _charge(
        self, conn: Connection, wallet: dict[str, Any], amount: int, hold_id: int, request_id: str, at: int,
        first_grant: list[Any],
    ) -> None:
        """Burn `amount` from the grants in burn order. `first_grant` (id, remaining, expires),
        read with the lock, saves reading the rest when it covers all."""
        user_id = wallet["user_id"]
        if first_grant[0] is not None and first_grant[1] >= amount:
            live: list[Any] = [first_grant]
        else:
            live = rawsql.fetch_all(conn, _LIVE_GRANTS, {"uid": user_id})
        left = amount
        depleted_expiry = False
        legs: list[tuple[str, int, int | None, str | None]] = []
        for grant_id, remaining, expires in live:
            if left == 0:
                break
            take = min(remaining, left)
            rawsql.write(conn, _SET_REMAINING, {"gid": grant_id, "remaining": remaining - take})
            legs.append((WALLET, -take, grant_id, None))
            left -= take
            depleted_expiry |= take == remaining and expires is not None
        if left > 0:  # more than the grants hold: owed by the user, never dropped
            wallet["debt_ucr"] += left
            legs.append((RECEIVABLES, -left, None, "usage beyond remaining credit"))
        legs.append((REVENUE, amount, None, None))
        rawsql.write(conn, *_entries(user_id, "charge", at, legs, hold_id=hold_id, request_id=request_id))
        wallet["balance_ucr"] -= amount
        if depleted_expiry:
            wallet["next_expiry_ms"] = self._next_expiry(conn, user_id)

    # -- sweeping -------------------------------------------------------------------------
    def expired_holds(self, conn: Connection, at_ms: int | None = None, limit: int = 500) -> list[dict[str, Any]]:
        """Active holds past their time-out (their process died): user_id, id, request_id,
        model, created_ms of each."""
        at = at_ms if at_ms is not None else now_ms()
        rows = conn.execute(
            select(holds.c.user_id, holds.c.id, holds.c.request_id, holds.c.model, holds.c.created_ms)
            .where(and_(holds.c.status == "active", holds.c.expires_ms <= at))
            .order_by(holds.c.id)
            .limit(limit)
        ).mappings().all()
        return [dict(row) for row in rows]

    # -- reading --------------------------------------------------------------------------
    def balance(self, conn: Connection, user_id: int, at_ms: int | None = None) -> Balance:
        """The wallet as of now (expired grants excluded even before the next write sweeps them)."""
        at = at_ms if at_ms is not None else now_ms()
        w = conn.execute(select(wallets).where(wallets.c.user_id == user_id)).mappings().one()
        balance = w["balance_ucr"]
        if w["next_expiry_ms"] is not None and w["next_expiry_ms"] <= at:
            balance -= conn.execute(
                select(func.coalesce(func.sum(grants.c.remaining_ucr), 0)).where(
                    grants.c.user_id == user_id, grants.c.remaining_ucr > 0, grants.c.expires_ms <= at
                )
            ).scalar_one()
        return Balance(balance, w["held_ucr"], w["debt_ucr"], w["period_end_ms"])

    def set_caps(self, conn: Connection, user_id: int, daily_ucr: int | None, monthly_ucr: int | None) -> None:
        """Spending caps (None: no cap). Enforced by every later hold."""
        conn.execute(update(wallets).where(wallets.c.user_id == user_id).values(
            daily_cap_ucr=daily_ucr, monthly_cap_ucr=monthly_ucr, updated_ms=now_ms()))

    def verify(self, conn: Connection) -> list[Mismatch]:
        """Recompute every cached figure from its source of truth, and check that every
        transaction balances. `user_id` 0 marks a whole-ledger check."""
        mismatches: list[Mismatch] = []
        unbalanced = conn.execute(
            select(ledger_entries.c.txn_id, func.sum(ledger_entries.c.amount_ucr))
            .group_by(ledger_entries.c.txn_id)
            .having(func.sum(ledger_entries.c.amount_ucr) != 0)
        ).all()
        mismatches.extend(Mismatch(0, f"transaction {txn} does not balance", int(total), 0) for txn, total in unbalanced)
        sums: dict[tuple[int, str], int] = {
            (uid, account): int(total)
            for uid, account, total in conn.execute(
                select(ledger_entries.c.user_id, ledger_entries.c.account, func.sum(ledger_entries.c.amount_ucr))
                .where(ledger_entries.c.account.in_(USER_ACCOUNTS))
                .group_by(ledger_entries.c.user_id, ledger_entries.c.account)
            ).all()
        }
        grant_sums = dict(conn.execute(
            select(grants.c.user_id, func.sum(grants.c.remaining_ucr)).group_by(grants.c.user_id)
        ).all())
        held_sums = dict(conn.execute(
            select(holds.c.user_id, func.sum(holds.c.amount_ucr)).where(holds.c.status == "active").group_by(holds.c.user_id)
        ).all())
        for w in conn.execute(select(wallets)).mappings():
            uid = w["user_id"]
            wallet_sum, receivable_sum = sums.get((uid, WALLET), 0), sums.get((uid, RECEIVABLES), 0)
            checks = [
                ("wallet balance vs its entries (wallet + receivables)", w["balance_ucr"], wallet_sum + receivable_sum),
                ("wallet entries vs grants remaining", wallet_sum, int(grant_sums.get(uid) or 0)),
                ("debt vs receivables entries", w["debt_ucr"], -receivable_sum),
                ("held vs active holds", w["held_ucr"], int(held_sums.get(uid) or 0)),
            ]
            mismatches.extend(Mismatch(uid, what, cached, derived) for what, cached, derived in checks if cached != derived)
        return mismatches

    def account_balances(self, conn: Connection) -> dict[str, int]:
        """Every account's balance (user accounts summed over users); they add up to zero."""
        return {
            account: int(total)
            for account, total in conn.execute(
                select(ledger_entries.c.account, func.sum(ledger_entries.c.amount_ucr)).group_by(ledger_entries.c.account)
            ).all()
        }
