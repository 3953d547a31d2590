"""Spending caps and low-balance alerts, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select

from switchboard.accounts.users import create_user
from switchboard.billing.ledger import Ledger
from switchboard.billing.notify import deliver_pending
from switchboard.store.runner import TransactionRunner
from switchboard.store.schema import notifications

C = 1_000_000


def _setup(engine: Engine) -> tuple[TransactionRunner, Ledger, int]:
    ledger = Ledger({"free": 100 * C})
    runner = TransactionRunner(engine)
    return runner, ledger, runner.run_sync(lambda c: create_user(c, ledger, "cap@example.com", "free")).id


def test_daily_cap_counts_settled_and_held(engine: Engine) -> None:
    runner, ledger, uid = _setup(engine)
    runner.run_sync(lambda c: ledger.set_caps(c, uid, 10 * C, None))
    first = runner.run_sync(lambda c: ledger.place_hold(c, uid, "a", 6 * C, "m"))
    assert first.ok
    refused = runner.run_sync(lambda c: ledger.place_hold(c, uid, "b", 6 * C, "m"))
    assert not refused.ok and refused.cap is not None and refused.cap.cap == "daily"
    assert (refused.cap.cap_ucr, refused.cap.spent_ucr) == (10 * C, 6 * C)
    runner.run_sync(lambda c: ledger.settle(c, uid, first.hold_id, 6 * C, None))
    assert not runner.run_sync(lambda c: ledger.place_hold(c, uid, "c", 5 * C, "m")).ok
    assert runner.run_sync(lambda c: ledger.place_hold(c, uid, "d", 4 * C, "m")).ok
    runner.run_sync(lambda c: ledger.set_caps(c, uid, None, 12 * C))  # monthly only now
    assert not runner.run_sync(lambda c: ledger.place_hold(c, uid, "e", 3 * C, "m")).ok  # 6 + 4 + 3 > 12
    assert runner.run_sync(lambda c: ledger.place_hold(c, uid, "f", 2 * C, "m")).ok
    with engine.connect() as conn:
        assert ledger.verify(conn) == []


class Recorder:
    def __init__(self, fail: int = 0) -> None:
        self.events: list[dict[str, Any]] = []
        self.fail = fail

    def deliver(self, event: dict[str, Any]) -> None:
        if self.fail:
            self.fail -= 1
            raise ConnectionError("channel down")
        self.events.append(event)


def test_low_balance_alerts_fire_once_per_threshold_and_are_delivered_once(engine: Engine) -> None:
    runner, ledger, uid = _setup(engine)

    def spend(rid: str, credits: int) -> None:
        held = runner.run_sync(lambda c: ledger.place_hold(c, uid, rid, credits * C, "m"))
        runner.run_sync(lambda c: ledger.settle(c, uid, held.hold_id, credits * C, None))

    spend("a", 50)  # 50% left: nothing
    spend("b", 31)  # 19% left: the 20% alert
    spend("c", 1)   # 18%: nothing new
    with engine.connect() as conn:
        assert conn.execute(select(notifications.c.threshold_pct)).scalars().all() == [20]
    spend("d", 14)  # 4%: the 5% alert
    spend("e", 4)   # 0%: the 0% alert
    with engine.connect() as conn:
        assert sorted(conn.execute(select(notifications.c.threshold_pct)).scalars().all()) == [0, 5, 20]
    flaky = Recorder(fail=1)
    assert deliver_pending(engine, flaky) == 2  # the first delivery failed and was released
    assert deliver_pending(engine, flaky) == 1  # retried
    assert deliver_pending(engine, flaky) == 0  # nothing twice
    assert sorted(e["threshold_pct"] for e in flaky.events) == [0, 5, 20]
    assert all(e["email"] == "cap@example.com" and e["event"] == "low_balance" for e in flaky.events)
    with engine.connect() as conn:
        assert ledger.verify(conn) == []
