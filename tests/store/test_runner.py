"""The group-commit runner: batches, ledger operations handed over together, failure
isolation, and the pipeline guard (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, select, text

from switchboard.accounts.users import create_user
from switchboard.billing.ledger import HoldOp, HoldResult, Ledger, SettleOp, SettleResult
from switchboard.store import rawsql
from switchboard.store.db import make_engine
from switchboard.store.migrate import upgrade
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


# -- the relay (PostgreSQL): the next batch is read and worked out while one commits -------

_SLOW_OR_FAILING_COMMIT = (
    "CREATE SEQUENCE commit_failures",
    """CREATE FUNCTION slow_or_failing_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.request_id LIKE 'slow%%' OR NEW.request_id LIKE 'fail%%' THEN
        PERFORM pg_sleep(0.6);
    END IF;
    IF NEW.request_id LIKE 'fail%%' AND nextval('commit_failures') = 1 THEN
        RAISE EXCEPTION 'commit refused once';
    END IF;
    RETURN NULL;
END $$""",
    """CREATE CONSTRAINT TRIGGER slow_or_failing_commit AFTER INSERT ON holds
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_or_failing_commit()""",
)


@pytest.fixture
def pg_engine(postgres_url: str) -> Iterator[Engine]:
    """PostgreSQL where a hold whose request id starts with 'slow' takes 0.6 s to commit, and
    the first one starting with 'fail' takes 0.6 s and then fails to commit (a deferred
    trigger, run at COMMIT)."""
    eng = make_engine(postgres_url)
    upgrade(eng)
    with eng.begin() as conn:
        for statement in _SLOW_OR_FAILING_COMMIT:
            conn.exec_driver_sql(statement)
    yield eng
    eng.dispose()


def _two_users(runner: TransactionRunner, ledger: Ledger) -> tuple[int, int]:
    return tuple(runner.run_sync(lambda c, e=e: create_user(c, ledger, e, "free")).id  # type: ignore[return-value]
                 for e in ("first@example.com", "second@example.com"))


def _committing(engine: Engine, request_id: str) -> None:
    """Wait until a writer is in a slow COMMIT (the trigger's sleep), that of `request_id`'s
    batch: the only hold of the test that sleeps."""
    deadline = time.monotonic() + 5
    with engine.connect() as conn:
        while time.monotonic() < deadline:
            if conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'")).scalar():
                return
            time.sleep(0.01)
    raise AssertionError(f"the hold {request_id} never reached its commit")


@dataclass(slots=True)
class _HoldThenWait(HoldOp):
    """A hold whose batch, once worked out, says so (`reached`) and waits for `until` before
    its COMMIT is sent: so that the test can queue work to be waiting at that moment."""

    reached: threading.Event = field(default_factory=threading.Event)
    until: threading.Event = field(default_factory=threading.Event)

    def together(self) -> Callable[[Connection, list[Any]], list[Any]]:
        def run(conn: Connection, ops: list[Any]) -> list[Any]:
            results = self.ledger.apply(conn, ops)
            self.reached.set()
            assert self.until.wait(5)
            return results
        return run


def test_relay_runs_the_next_batch_while_one_commits(pg_engine: Engine) -> None:
    """While one user's batch waits for its COMMIT, another user's hold that was waiting is
    placed and answered; the same user's next hold waits for that commit and sees the credits
    it held."""
    ledger = Ledger({"free": 100 * C})
    runner = TransactionRunner(pg_engine)
    assert runner.relay
    first, second = _two_users(runner, ledger)
    runner.start()
    slow = _HoldThenWait(ledger, first, "slow", 10 * C, "m")
    slowly = runner.submit(slow, order_key=first)
    assert slow.reached.wait(5)
    other = runner.submit(HoldOp(ledger, second, "other", 10 * C, "m"), order_key=second)
    slow.until.set()
    _committing(pg_engine, "slow")
    assert other.result(0.5).ok and not slowly.done()  # answered before the slow commit ended
    after = runner.submit(HoldOp(ledger, first, "after", 10 * C, "m"), order_key=first)
    assert slowly.result(5).ok
    assert after.result(5).available_ucr == 80 * C  # it saw the slow hold's 10 credits
    runner.stop()
    with pg_engine.connect() as conn:
        assert ledger.verify(conn) == []
        assert ledger.balance(conn, first).held_ucr == 20 * C


def test_relay_reruns_a_batch_whose_commit_failed(pg_engine: Engine) -> None:
    """A batch whose COMMIT fails after the next batch has gone ahead is run again, one unit at
    a time: its holds land after the other's, and no credit is held twice or lost."""
    ledger = Ledger({"free": 100 * C})
    runner = TransactionRunner(pg_engine)
    first, second = _two_users(runner, ledger)
    entered, gate = threading.Event(), threading.Event()
    runner.start()
    runner.submit(lambda c: entered.set() or gate.wait(5))  # so that the next two make one batch
    assert entered.wait(5)
    fail = _HoldThenWait(ledger, first, "fail", 10 * C, "m")
    failing = runner.submit(fail, order_key=first)
    companion = runner.submit(HoldOp(ledger, first, "companion", 5 * C, "m"), order_key=first)
    gate.set()
    assert fail.reached.wait(5)
    other = runner.submit(HoldOp(ledger, second, "other", 10 * C, "m"), order_key=second)
    fail.until.set()
    _committing(pg_engine, "fail")
    assert other.result(0.5).ok and not failing.done()
    held = failing.result(5)  # refused at COMMIT once, then placed by the re-run
    assert held.ok and not held.duplicate and held.available_ucr == 90 * C
    assert companion.result(5).available_ucr == 85 * C
    runner.stop()
    with pg_engine.connect() as conn:
        assert ledger.verify(conn) == []
        assert [ledger.balance(conn, uid).held_ucr for uid in (first, second)] == [15 * C, 10 * C]
        assert conn.execute(text("SELECT count(*) FROM holds")).scalar() == 3
