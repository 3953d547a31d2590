"""Migrations carry existing data forward, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic import command
from sqlalchemy import Engine, insert, text

from switchboard.billing.ledger import Ledger
from switchboard.store.db import make_engine
from switchboard.store.migrate import alembic_config, upgrade
from switchboard.store.schema import grants, users, wallets


def test_0002_turns_single_sided_entries_into_balanced_transactions(database_url: str) -> None:
    engine: Engine = make_engine(database_url)
    with engine.connect() as conn:
        config = alembic_config()
        config.attributes["connection"] = conn
        command.upgrade(config, "0001")
        conn.commit()
    with engine.begin() as conn:  # a user who spent 100 granted credits and 5 more (debt)
        conn.execute(insert(users).values(id=1, email="old@example.com", plan="free", created_ms=1))
        conn.execute(insert(wallets).values(user_id=1, balance_ucr=-5, held_ucr=0, debt_ucr=5, next_expiry_ms=None,
                                            period_start_ms=1, period_end_ms=2**40, updated_ms=1))
        conn.execute(insert(grants).values(id=1, user_id=1, kind="allowance", amount_ucr=100, remaining_ucr=0,
                                           expires_ms=2**40, created_ms=1))
        for kind, amount, grant_id in (("grant", 100, 1), ("charge", -100, 1), ("charge", -5, None)):
            conn.execute(text("INSERT INTO ledger_entries (user_id, kind, amount_ucr, grant_id, created_ms) "
                              "VALUES (1, :kind, :amount, :grant_id, 1)"), {"kind": kind, "amount": amount, "grant_id": grant_id})
    upgrade(engine)
    ledger = Ledger({"free": 100})
    with engine.connect() as conn:
        assert ledger.verify(conn) == []
        assert ledger.account_balances(conn) == {"wallet": 0, "receivables": -5, "promotions": -100, "revenue": 105}
    upgrade(engine)  # idempotent
    engine.dispose()
