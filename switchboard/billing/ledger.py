"""The credit ledger: grants, holds, settlement, expiry. Pure database work on one Connection.

Holds and settlements (the hot path) are billing.holds, a batch at a time; this module keeps
the rest and the rules both share (`_bring_up_to_date`).

Every method runs inside a caller's transaction (see store.runner) and first locks the user's
wallet row, so check-and-reserve is atomic under any concurrency, in one process or many. Domain
outcomes (not enough credits, already settled) are returned, not raised, so that one refused
request does not abort a group-committed batch.

Double entry: every change is one transaction (`txn_id`) of entries that sum to zero, between
a user's `wallet` (credits held), the user's `receivables` (credits owed: usage beyond the
balance) and the system accounts `sales` (credits paid for), `promotions` (credits given),
`revenue` (credits spent on inference), `breakage` (credits expired) and `refunds`, and
`operator_losses` (inference the operator paid for and did not charge, funded by `promotions`).

A request is never charged more than its hold, nor more than the user's grants hold: inference
never makes debt (receivables come only from refunds of credits already spent). What a vendor
billed beyond that is booked to `operator_losses` (see billing.holds).

Invariants (checked by `verify`):
  SUM(amount_ucr) of every transaction = 0                      (entries are immutable)
  wallet.balance_ucr = SUM(wallet and receivables entries of the user)
  SUM(wallet entries of the user) = SUM(grants.remaining_ucr)
  wallet.debt_ucr    = -SUM(receivables entries of the user)
  wallet.held_ucr    = SUM(active holds.amount_ucr)
  holds.charged_ucr <= holds.amount_ucr                          (never charged beyond the hold)
  available          = balance - held                           (never reserved below zero)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, func, insert, select, update

from switchboard.billing import holds as hot_path
from switchboard.billing.accounts import (
    BREAKAGE, LOCK_WALLETS, OPERATOR_LOSSES, PROMOTIONS, RECEIVABLES, REFUNDS, SALES, USER_ACCOUNTS, WALLET,
    WALLET_COLUMNS, now_ms, record, save_wallet,
)
from switchboard.billing.holds import HoldOp, HoldResult, SettleOp, SettleResult
from switchboard.billing.periods import period_bounds
from switchboard.store import rawsql
from switchboard.store.schema import grants, holds, ledger_entries, wallets

__all__ = [
    "BREAKAGE", "OPERATOR_LOSSES", "PROMOTIONS", "RECEIVABLES", "REFUNDS", "SALES", "USER_ACCOUNTS", "WALLET",
    "Balance", "Debit", "HoldOp", "HoldResult", "Ledger", "Mismatch", "SettleOp", "SettleResult", "now_ms",
]

# Raw SQL where it runs inside a hold or settlement (expiry, a new period): see store.rawsql.
_EXPIRED_GRANTS = "SELECT id, remaining_ucr FROM grants WHERE user_id = :uid AND remaining_ucr > 0 AND expires_ms <= :at"
_SET_REMAINING = "UPDATE grants SET remaining_ucr = :remaining WHERE id = :gid"
_NEXT_EXPIRY = (
    "SELECT MIN(expires_ms) FROM grants WHERE user_id = :uid AND remaining_ucr > 0 AND expires_ms IS NOT NULL"
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
class Debit:
    """What `Ledger.debit` did: `ok` False when the amount was more than was available."""

    ok: bool
    debited_ucr: int
    available_ucr: int  # after the debit (before it, when refused)


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
        row = rawsql.fetch_one(conn, *rawsql.select_in(LOCK_WALLETS, users=[user_id]))
        if row is None:
            raise LookupError(f"user {user_id} has no wallet")
        wallet = dict(zip(WALLET_COLUMNS, row))
        self._bring_up_to_date(conn, wallet, at)
        return wallet

    def _bring_up_to_date(
        self, conn: Connection, wallet: dict[str, Any], at: int, before: Callable[[], None] | None = None,
    ) -> bool:
        """Expire grants past their time, start a new period when one is due. `before` runs
        first when there is anything to do (a batch sends its pending writes: billing.holds).
        True when anything changed (the user's grants read earlier may then be stale)."""
        expire = wallet["next_expiry_ms"] is not None and wallet["next_expiry_ms"] <= at
        roll = at >= wallet["period_end_ms"]
        if not (expire or roll):
            return False
        if before is not None:
            before()
        if expire:
            self._expire(conn, wallet, at)
        if roll:
            self._roll_period(conn, wallet, at)
        return True

    def _roll_period(self, conn: Connection, wallet: dict[str, Any], at: int) -> None:
        user_id = wallet["user_id"]
        plan, billed_by_stripe = rawsql.fetch_one(conn, _PLAN_AND_BILLING, {"uid": user_id})
        start, end = period_bounds(wallet["period_start_ms"], at)
        wallet["period_start_ms"], wallet["period_end_ms"] = start, end
        if not billed_by_stripe:  # those renew on invoice.paid
            self._grant_allowance(conn, user_id, plan, start, end, at, wallet)
        save_wallet(conn, wallet, at)

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
        record(conn, user_id, "grant", at, [(funded_by, -amount_ucr, grant_id, reason),
                                            (WALLET, amount_ucr - repay, grant_id, reason),
                                            (RECEIVABLES, repay, grant_id, reason)])
        wallet["debt_ucr"] -= repay
        wallet["balance_ucr"] += amount_ucr
        if kind == "allowance":  # a new period's allowance: the base of this period's alerts
            wallet["period_allowance_ucr"] = amount_ucr
            wallet["alert_level"] = 0
        if expires_ms is not None and amount_ucr > repay:
            current = wallet["next_expiry_ms"]
            wallet["next_expiry_ms"] = expires_ms if current is None else min(current, expires_ms)
        if _wallet is None:
            save_wallet(conn, wallet, at)
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
        record(conn, user_id, "refund", at, [
            (account, value, grant_id, reason)
            for account, value in ((WALLET, -from_wallet), (BREAKAGE, -from_breakage), (RECEIVABLES, -to_debt), (REFUNDS, amount))
        ], request_id=source_ref)
        wallet["balance_ucr"] -= from_wallet + to_debt
        wallet["debt_ucr"] += to_debt
        if from_wallet == grant.remaining_ucr and grant.expires_ms is not None:
            wallet["next_expiry_ms"] = self._next_expiry(conn, user_id)
        save_wallet(conn, wallet, at)
        return amount

    def debit(
        self, conn: Connection, user_id: int, amount_ucr: int, *, reason: str, at_ms: int | None = None,
    ) -> Debit:
        """Take `amount_ucr` of unspent credit back (an operator reversing a mistaken grant):
        out of the newest grants first, each part back to the account that funded its grant
        (`promotions` for given credit, `sales` for paid-for credit: this is not a refund of
        money). Never below what is available: credit already spent or held is not taken, and
        no debt is made. Returns the outcome; nothing is written when it is refused."""
        if amount_ucr <= 0:
            raise ValueError("a debit must be positive")
        at = at_ms if at_ms is not None else now_ms()
        wallet = self._lock(conn, user_id, at)
        available = wallet["balance_ucr"] - wallet["held_ucr"]
        if amount_ucr > available:
            return Debit(False, 0, max(0, available))
        live = conn.execute(
            select(grants.c.id, grants.c.remaining_ucr, grants.c.expires_ms)
            .where(grants.c.user_id == user_id, grants.c.remaining_ucr > 0)
            .order_by(grants.c.id.desc())
        ).all()
        funders = dict(conn.execute(
            select(ledger_entries.c.grant_id, ledger_entries.c.account).where(
                ledger_entries.c.user_id == user_id, ledger_entries.c.kind == "grant",
                ledger_entries.c.account.in_((SALES, PROMOTIONS)),
                ledger_entries.c.grant_id.in_([g.id for g in live]),
            )
        ).all())
        legs: list[Any] = []
        left = amount_ucr
        for grant_id, remaining, _expires in live:
            if left == 0:
                break
            take = min(left, remaining)
            conn.execute(update(grants).where(grants.c.id == grant_id).values(remaining_ucr=remaining - take))
            legs += [(WALLET, -take, grant_id, reason), (funders.get(grant_id, PROMOTIONS), take, grant_id, reason)]
            left -= take
        assert left == 0, "the grants hold less than the wallet's balance"
        record(conn, user_id, "debit", at, legs)
        wallet["balance_ucr"] -= amount_ucr
        wallet["next_expiry_ms"] = self._next_expiry(conn, user_id)
        save_wallet(conn, wallet, at)
        return Debit(True, amount_ucr, available - amount_ucr)

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
            record(conn, user_id, "expiry", at, [(WALLET, -remaining, grant_id, "grant expired"),
                                                 (BREAKAGE, remaining, grant_id, "grant expired")])
            wallet["balance_ucr"] -= remaining
        wallet["next_expiry_ms"] = self._next_expiry(conn, user_id)
        save_wallet(conn, wallet, at)

    @staticmethod
    def _next_expiry(conn: Connection, user_id: int) -> int | None:
        row = rawsql.fetch_one(conn, _NEXT_EXPIRY, {"uid": user_id})
        return None if row is None or row[0] is None else int(row[0])

    # -- holds (billing.holds) ------------------------------------------------------------
    def place_hold(
        self, conn: Connection, user_id: int, request_id: str, amount_ucr: int, model: str,
        at_ms: int | None = None, min_amount_ucr: int | None = None,
    ) -> HoldResult:
        """Reserve `amount_ucr` if available: the check and the reservation are one atomic step.

        With `min_amount_ucr`, a smaller hold is accepted: everything available, if that is at
        least the minimum (the caller then shrinks the request to fit what was held).
        """
        (result,) = self.apply(conn, [HoldOp(self, user_id, request_id, amount_ucr, model, min_amount_ucr, at_ms)])
        assert isinstance(result, HoldResult)
        return result

    def settle(
        self, conn: Connection, user_id: int, hold_id: int, charge_ucr: int, usage: dict[str, Any] | None,
        at_ms: int | None = None, loss_ucr: int = 0,
    ) -> SettleResult:
        """Charge the actual cost, release the rest of the hold and write the usage record.

        Exactly once per hold: a second call changes nothing and reports `already_resolved`.
        The charge is at most the hold and at most what the grants hold; the rest of it, and
        `loss_ucr` (a cost the user is not charged at all), go to `operator_losses`. A zero
        charge voids the hold.
        """
        (result,) = self.apply(conn, [SettleOp(self, user_id, hold_id, charge_ucr, usage, at_ms, loss_ucr)])
        assert isinstance(result, SettleResult)
        return result

    def apply(self, conn: Connection, ops: list[HoldOp | SettleOp]) -> list[HoldResult | SettleResult]:
        """Holds and settlements in order, as one batch (store.runner hands them over this way)."""
        return hot_path.apply(self, conn, ops)

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
        over = conn.execute(
            select(holds.c.user_id, holds.c.id, holds.c.amount_ucr, holds.c.charged_ucr)
            .where(holds.c.status == "settled", holds.c.charged_ucr > holds.c.amount_ucr)
        ).all()
        mismatches.extend(
            Mismatch(uid, f"hold {hold_id} charged beyond its amount", int(charged), int(amount))
            for uid, hold_id, amount, charged in over
        )
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

    def operator_losses(self, conn: Connection) -> tuple[int, int]:
        """(credits, requests) of inference the operator paid for and did not charge."""
        total, count = conn.execute(
            select(func.coalesce(func.sum(ledger_entries.c.amount_ucr), 0), func.count(ledger_entries.c.id))
            .where(ledger_entries.c.account == OPERATOR_LOSSES)
        ).one()
        return int(total), int(count)

    def account_balances(self, conn: Connection) -> dict[str, int]:
        """Every account's balance (user accounts summed over users); they add up to zero."""
        return {
            account: int(total)
            for account, total in conn.execute(
                select(ledger_entries.c.account, func.sum(ledger_entries.c.amount_ucr)).group_by(ledger_entries.c.account)
            ).all()
        }
