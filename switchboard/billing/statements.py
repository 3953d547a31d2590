"""Monthly statements: opening balance, grants, charges, expiries, refunds, debits, closing balance, and
what the user was not charged (inference the operator paid for: a vendor that billed beyond the
hold, an answer that failed before it was delivered). That last line is not part of the balance."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, case, func, select

from switchboard.billing.ledger import OPERATOR_LOSSES, USER_ACCOUNTS
from switchboard.core.money import ucr_to_credits_float
from switchboard.store.schema import ledger_entries


def month_bounds(month: str | None) -> tuple[str, int, int]:
    """'YYYY-MM' (default: this month, UTC) to (label, start ms, end ms)."""
    now = datetime.now(timezone.utc)
    if month is None:
        year, mon = now.year, now.month
    else:
        try:
            year, mon = (int(part) for part in month.split("-"))
            datetime(year, mon, 1)
        except ValueError:
            raise ValueError(f"month must be YYYY-MM, not {month!r}") from None
    start = datetime(year, mon, 1, tzinfo=timezone.utc)
    end = datetime(year + (mon == 12), mon % 12 + 1, 1, tzinfo=timezone.utc)
    return f"{year:04d}-{mon:02d}", int(start.timestamp() * 1000), int(end.timestamp() * 1000)


@dataclass
class Statement:
    month: str
    opening_ucr: int
    grants_ucr: int
    charges_ucr: int
    expiries_ucr: int
    refunds_ucr: int
    closing_ucr: int
    charges_count: int
    grant_lines: list[dict[str, Any]] = field(default_factory=list)
    not_charged_ucr: int = 0  # inference cost the operator bore (operator_losses): never in the balance
    debits_ucr: int = 0  # credit an operator took back (`switchboard credits debit`)

    def rows(self) -> list[tuple[str, int]]:
        """(label, micro-credits) in the order a statement reads; "not charged" after the balance."""
        return [("opening balance", self.opening_ucr), ("grants", self.grants_ucr), ("charges", self.charges_ucr),
                ("expiries", self.expiries_ucr), ("refunds", self.refunds_ucr), ("debits", self.debits_ucr),
                ("closing balance", self.closing_ucr),
                ("not charged", self.not_charged_ucr)]

    def as_json(self) -> dict[str, Any]:
        """Each figure in credits and in micro-credits (exact), and the month's grants."""
        data: dict[str, Any] = {"object": "statement", "month": self.month, "charges_count": self.charges_count}
        for label, ucr in self.rows():
            key = label.replace(" balance", "").replace(" ", "_")
            data[f"{key}_credits"] = ucr_to_credits_float(ucr)
            data[f"{key}_ucr"] = ucr
        data["grants"] = [{**g, "credits": ucr_to_credits_float(g["amount_ucr"])} for g in self.grant_lines]
        return data


def statement(conn: Connection, user_id: int, month: str | None = None) -> Statement:
    label, start, end = month_bounds(month)
    mine = (ledger_entries.c.user_id == user_id) & ledger_entries.c.account.in_(USER_ACCOUNTS)
    opening = conn.execute(
        select(func.coalesce(func.sum(ledger_entries.c.amount_ucr), 0)).where(mine, ledger_entries.c.created_ms < start)
    ).scalar_one()
    by_kind = {
        kind: (int(total), int(count))
        for kind, total, count in conn.execute(
            select(ledger_entries.c.kind, func.sum(ledger_entries.c.amount_ucr), func.count(func.distinct(ledger_entries.c.txn_id)))
            .where(mine, ledger_entries.c.created_ms >= start, ledger_entries.c.created_ms < end)
            .group_by(ledger_entries.c.kind)
        ).all()
    }
    lines = conn.execute(
        select(ledger_entries.c.txn_id, func.min(ledger_entries.c.created_ms), func.sum(ledger_entries.c.amount_ucr),
               func.max(case((ledger_entries.c.memo.is_(None), ""), else_=ledger_entries.c.memo)))
        .where(mine, ledger_entries.c.kind == "grant", ledger_entries.c.created_ms >= start, ledger_entries.c.created_ms < end)
        .group_by(ledger_entries.c.txn_id)
        .order_by(func.min(ledger_entries.c.created_ms))
    ).all()
    not_charged = conn.execute(
        select(func.coalesce(func.sum(ledger_entries.c.amount_ucr), 0)).where(
            ledger_entries.c.user_id == user_id, ledger_entries.c.account == OPERATOR_LOSSES,
            ledger_entries.c.created_ms >= start, ledger_entries.c.created_ms < end,
        )
    ).scalar_one()
    get = lambda kind: by_kind.get(kind, (0, 0))[0]  # noqa: E731
    movement = sum(total for total, _ in by_kind.values())
    return Statement(
        month=label, opening_ucr=int(opening), grants_ucr=get("grant"), charges_ucr=get("charge"),
        expiries_ucr=get("expiry"), refunds_ucr=get("refund"), closing_ucr=int(opening) + movement,
        charges_count=by_kind.get("charge", (0, 0))[1], not_charged_ucr=int(not_charged), debits_ucr=get("debit"),
        grant_lines=[{"at_ms": int(at), "amount_ucr": int(amount), "reason": memo or None} for _, at, amount, memo in lines],
    )
