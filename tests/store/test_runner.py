"""The group-commit runner: pipelined batches, failure isolation, and the pipeline guard
(SQLite and PostgreSQL)."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import Connection, Engine, select

from switchboard.accounts.users import create_user
from switchboard.billing.ledger import Ledger
from switchboard.store import rawsql
from switchboard.store.runner import TransactionRunner
from switchboard.store.schema import users

C = 1_000_000


def test_pipelined_batch_isolates_a_failing_unit(engine: Engine) -> None:
    """Many pipelined ledger units share one transaction; a unit whose write fails (a second
    hold for request b0, which only the server can see) fails alone, the others commit."""
    ledger = Ledger({"free": 100 * C})
    runner = TransactionRunner(engine)
    uid = runner.run_sync(lambda c: create_user(c, ledger, "batch@example.com", "free")).id

    def failing(conn: Connection) -> None:
        rawsql.write(conn, "INSERT INTO holds (user_id, request_id, amount_ucr, status, model, created_ms, expires_ms) "
                           "VALUES (:uid, 'b0', 1, 'active', 'm', 0, 0)", {"uid": uid})

    gate = threading.Event()
    runner.submit(lambda c: gate.wait(5))  # holds the runner so that the rest queue as one batch
    runner.start()
    holds = [
        runner.submit(lambda c, i=i: ledger.place_hold(c, uid, f"b{i}", C, "m"), order_key=uid, pipelined=True)
        for i in range(20)
    ]
    bad = runner.submit(failing, order_key=uid, pipelined=True)
    gate.set()
    assert all(f.result(10).ok for f in holds)
    with pytest.raises(Exception, match="(?i)unique|duplicate"):
        bad.result(10)
    runner.stop()
    assert runner.units >= 22 and runner.batches < runner.units  # they were batched
    with engine.connect() as conn:
        assert ledger.balance(conn, uid).held_ucr == 20 * C
        assert ledger.verify(conn) == []


def test_sqlalchemy_statement_in_pipeline_mode_is_refused(engine: Engine) -> None:
    """SQLAlchemy would silently see no rows in psycopg's pipeline mode: it is an error."""
    if engine.dialect.name != "postgresql":
        pytest.skip("pipeline mode exists on PostgreSQL only")
    with engine.begin() as conn, rawsql.pipeline(conn):
        with pytest.raises(RuntimeError, match="pipeline mode"):
            conn.execute(select(users.c.id))
