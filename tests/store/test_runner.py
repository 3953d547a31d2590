"""The group-commit runner: batches, ledger operations handed over together, failure
isolation, and the pipeline guard (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import Connection, Engine, select, text

from switchboard.accounts.users import create_user
from switchboard.billing.ledger import HoldOp, HoldResult, Ledger, SettleOp, SettleResult
from switchboard.store import rawsql
from switchboard.store.runner import TransactionRunner
from switchboard.store.schema import users

C = 1_000_000


class _CountingLedger(Ledger):
    def __init__(self) -> None:
        super().__init__({"free": 100 * C})
        self.calls: list[int] = []  # the size of each `apply`

    def apply(self, conn: Connection, ops: list[HoldOp | SettleOp]) -> list[HoldResult | SettleResult]:
        self.calls.append(len(ops))
        return super().apply(conn, ops)


def test_batch_isolates_a_failing_unit(engine: Engine) -> None:
    """Ledger operations waiting together are handed to the ledger in one call and share one
    transaction; a unit whose write fails (a second hold for request b0, which only the
    server can see) or an operation on a user without a wallet fails alone, the others commit."""
    ledger = _CountingLedger()
    runner = TransactionRunner(engine)
    uid = runner.run_sync(lambda c: create_user(c, ledger, "batch@example.com", "free")).id

    def failing(conn: Connection) -> None:
        rawsql.write(conn, "INSERT INTO holds (user_id, request_id, amount_ucr, status, model, created_ms, expires_ms) "
                           "VALUES (:uid, 'b0', 1, 'active', 'm', 0, 0)", {"uid": uid})

    gate = threading.Event()
    runner.submit(lambda c: gate.wait(5))  # holds the runner so that the rest queue as one batch
    runner.start()
    holds = [runner.submit(HoldOp(ledger, uid, f"b{i}", C, "m"), order_key=uid) for i in range(20)]
    bad = runner.submit(failing, order_key=uid)
    nobody = runner.submit(HoldOp(ledger, uid + 1000, "x", C, "m"), order_key=uid + 1000)
    gate.set()
    assert all(f.result(10).ok for f in holds)
    with pytest.raises(Exception, match="(?i)unique|duplicate"):
        bad.result(10)
    with pytest.raises(LookupError, match="no wallet"):
        nobody.result(10)
    runner.stop()
    assert runner.units >= 23 and runner.batches < runner.units  # they were batched
    assert ledger.calls[0] == 20  # the 20 holds in one call (then, after the failure, one by one)
    with engine.connect() as conn:
        assert ledger.balance(conn, uid).held_ucr == 20 * C
        assert ledger.verify(conn) == []


def test_a_failing_operation_fails_alone_in_a_batch_of_operations(engine: Engine) -> None:
    """A batch of nothing but ledger operations runs in one transaction that sends BEGIN and
    COMMIT with its statements (PostgreSQL). One that fails in Python (no wallet) or on the
    server (a second usage record for one request) rolls it back; the others are re-run one by
    one and commit, and the writer's connection goes on working."""
    ledger = _CountingLedger()
    runner = TransactionRunner(engine)
    uid = runner.run_sync(lambda c: create_user(c, ledger, "ops@example.com", "free")).id
    first, second = (runner.run_sync(HoldOp(ledger, uid, f"h{i}", C, "m")).hold_id for i in range(2))
    usage = {"request_id": "same", "endpoint": "test", "model": "m", "provider": "p", "stream": False,
             "outcome": "ok", "prompt_tokens": 1, "cached_prompt_tokens": 0, "cache_write_tokens": 0,
             "completion_tokens": 1, "reasoning_tokens": 0, "latency_ms": 1.0, "cost_usd": "0"}
    gate = threading.Event()
    runner.submit(lambda c: gate.wait(5))
    runner.start()
    holds = [runner.submit(HoldOp(ledger, uid, f"b{i}", C, "m"), order_key=uid) for i in range(10)]
    settled = runner.submit(SettleOp(ledger, uid, first, C, usage), order_key=uid)
    duplicate = runner.submit(SettleOp(ledger, uid, second, C, usage), order_key=uid)
    nobody = runner.submit(HoldOp(ledger, uid + 1000, "x", C, "m"), order_key=uid + 1000)
    gate.set()
    assert all(f.result(10).ok for f in holds)
    assert settled.result(10).charged_ucr == C
    with pytest.raises(Exception, match="(?i)unique|duplicate"):
        duplicate.result(10)
    with pytest.raises(LookupError, match="no wallet"):
        nobody.result(10)
    assert runner.submit(HoldOp(ledger, uid, "later", C, "m"), order_key=uid).result(10).ok
    runner.stop()
    assert ledger.calls[2] == 13  # after the two run alone: the batch in one call, then one by one
    with engine.connect() as conn:
        assert ledger.balance(conn, uid).held_ucr == 12 * C  # second, b0..b9, later
        assert ledger.verify(conn) == []


def test_sqlalchemy_statement_in_pipeline_mode_is_refused(engine: Engine) -> None:
    """SQLAlchemy would silently see no rows in psycopg's pipeline mode: it is an error."""
    if engine.dialect.name != "postgresql":
        pytest.skip("pipeline mode exists on PostgreSQL only")
    with engine.begin() as conn, rawsql.pipeline(conn):
        with pytest.raises(RuntimeError, match="pipeline mode"):
            conn.execute(select(users.c.id))


def test_writer_survives_a_lost_database_connection(engine: Engine) -> None:
    """The writer thread keeps its connection; when the server drops it (a restart, a
    failover), the next work reconnects instead of failing."""
    if engine.dialect.name != "postgresql":
        pytest.skip("needs a server that can drop connections")
    ledger = Ledger({"free": 100 * C})
    runner = TransactionRunner(engine)
    runner.start()
    uid = runner.submit(lambda c: create_user(c, ledger, "drop@example.com", "free")).result(10).id
    backend = runner.submit(lambda c: rawsql.fetch_one(c, "SELECT pg_backend_pid()", {})[0]).result(10)
    with engine.connect() as admin:
        admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
    # As the gateway submits it: an operation, run in a transaction pipelined with BEGIN and COMMIT.
    held = runner.submit(HoldOp(ledger, uid, "after-drop", C, "m"), order_key=uid)
    assert held.result(10).ok
    runner.stop()
    with engine.connect() as conn:
        assert ledger.balance(conn, uid).held_ucr == C


def test_several_writer_threads_keep_every_wallet_exact(engine: Engine) -> None:
    """With several writers (PostgreSQL's default), each user's work stays on one of them:
    concurrent holds and settlements for many users all land, exactly."""
    ledger = Ledger({"free": 100 * C})
    runner = TransactionRunner(engine, writers=3)
    runner.start()
    uids = [runner.submit(lambda c, i=i: create_user(c, ledger, f"w{i}@example.com", "free")).result(10).id
            for i in range(6)]

    def pair(i: int) -> None:
        uid = uids[i % len(uids)]
        held = runner.submit(lambda c: ledger.place_hold(c, uid, f"p{i}", 2 * C, "m"), order_key=uid).result(30)
        assert held.ok
        runner.submit(lambda c: ledger.settle(c, uid, held.hold_id, C, None), order_key=uid).result(30)

    with ThreadPoolExecutor(24) as pool:
        list(pool.map(pair, range(120)))
    runner.stop()
    assert runner.units == 6 + 240
    with engine.connect() as conn:
        assert ledger.verify(conn) == []
        assert all(ledger.balance(conn, uid).balance_ucr == 80 * C for uid in uids)  # 20 credits each
