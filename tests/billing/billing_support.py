"""Shared set-up for the payment and subscription tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from switchboard.accounts.users import create_user
from switchboard.billing.ledger import Ledger
from switchboard.billing.payments import Outcome, handle_event
from switchboard.core.config import Settings
from switchboard.inference.runtime import make_ledger
from switchboard.store.db import reading
from switchboard.store.runner import TransactionRunner

C = 1_000_000
DAY = 86_400_000


class World:
    """A database with one ledger and settings; events are handled as the webhook does."""

    def __init__(self, engine: Engine, tmp_path: Path, **settings: Any) -> None:
        self.engine = engine
        self.settings = Settings(data_dir=tmp_path / "data", local_model={"enabled": False}, **settings)
        self.ledger: Ledger = make_ledger(self.settings)
        self.runner = TransactionRunner(engine)

    def user(self, email: str = "u@example.com", plan: str = "free") -> int:
        return self.runner.run_sync(lambda conn: create_user(conn, self.ledger, email, plan).id)

    def send(self, event: dict[str, Any], at_ms: int | None = None) -> Outcome:
        return self.runner.run_sync(lambda conn: handle_event(conn, self.ledger, self.settings, event, at_ms))

    def write(self, work: Any) -> Any:
        return self.runner.run_sync(work)

    def read(self, work: Any) -> Any:
        with reading(self.engine) as conn:
            return work(conn)

    def available(self, uid: int, at_ms: int | None = None) -> int:
        return self.read(lambda conn: self.ledger.balance(conn, uid, at_ms).available_ucr)

    def balance(self, uid: int, at_ms: int | None = None):  # type: ignore[no-untyped-def]
        return self.read(lambda conn: self.ledger.balance(conn, uid, at_ms))

    def check(self) -> dict[str, int]:
        """The ledger's invariants hold; returns the account balances (they sum to zero)."""
        mismatches, balances = self.read(lambda conn: (self.ledger.verify(conn), self.ledger.account_balances(conn)))
        assert mismatches == []
        assert sum(balances.values()) == 0
        return balances

    def spend(self, uid: int, amount_ucr: int, request_id: str, at_ms: int | None = None) -> None:
        held = self.write(lambda c: self.ledger.place_hold(c, uid, request_id, amount_ucr, "m", at_ms=at_ms))
        assert held.ok, held
        self.write(lambda c: self.ledger.settle(c, uid, held.hold_id, amount_ucr, None, at_ms=at_ms))
