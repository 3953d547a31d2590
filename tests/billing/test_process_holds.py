"""Holds belong to a process (inference.heartbeat, billing.progress, store.processes), in one
test process against a real database (SQLite and PostgreSQL): a process is found dead by its
lapsed heartbeat (the database's clock) or, on its own host, by its pid being gone; its holds
are charged what its streams had recorded as delivered, never above the hold, and voided with
no record; the sweeper's time-out and holds of unregistered processes are the last resort."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from types import SimpleNamespace
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, select, text

from switchboard.accounts.users import create_user
from switchboard.billing.ledger import HoldOp, Ledger
from switchboard.billing.progress import PROGRESS_ORDER_KEY, Progress, ProgressOp
from switchboard.inference.heartbeat import Heartbeat, pid_start
from switchboard.inference.sweeper import sweep_once
from switchboard.store import processes
from switchboard.store.db import reading
from switchboard.store.runner import TransactionRunner
from switchboard.store.schema import holds, usage_records

C = 1_000_000
USD_PER_CREDIT = Decimal("0.005")


class Setting:
    """A ledger, a running ledger writer and one user with 100 credits."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.ledger = Ledger({"free": 100 * C})
        self.runner = TransactionRunner(engine)
        self.runner.start()
        self.user = self.runner.run_sync(lambda c: create_user(c, self.ledger, "u@example.com", "free").id)
        self.inference: Any = SimpleNamespace(process_id=None, streams={})  # what Heartbeat uses of Inference

    def heartbeat(self, host: str = "here", lapse_s: float = 30.0) -> Heartbeat:
        beat = Heartbeat(engine=self.engine, runner=self.runner, ledger=self.ledger, catalog={}, inference=self.inference,
                         usd_per_credit=USD_PER_CREDIT, interval_s=1.0, lapse_s=lapse_s, progress_interval_s=1.0, host=host)
        beat._register()  # noqa: SLF001 - what start() does first, without its tasks
        beat.resolving = True
        return beat

    def process(self, host: str, pid: int = 4242, pid_mark: str | None = None) -> int:
        return self.runner.run_sync(lambda c: processes.register(c, host, pid, pid_mark))

    def hold(self, request_id: str, amount_ucr: int, process_id: int | None, at_ms: int | None = None) -> int:
        op = HoldOp(self.ledger, self.user, request_id, amount_ucr, "m", at_ms=at_ms, process_id=process_id)
        held = self.runner.submit(op, order_key=self.user).result(10)
        assert held.ok
        return int(held.hold_id)

    def progress(self, hold_id: int, completion: int, charge_ucr: int) -> None:
        op = ProgressOp([Progress(hold_id, "m", 7, completion, charge_ucr, 0)])
        self.runner.submit(op, order_key=PROGRESS_ORDER_KEY).result(10)

    def lapse(self, process_id: int, by_ms: int) -> None:
        """The process's last heartbeat `by_ms` ago (as if it had stopped beating then)."""
        self.runner.run_sync(lambda c: c.execute(
            text("UPDATE processes SET heartbeat_ms = heartbeat_ms - :by WHERE id = :id"), {"by": by_ms, "id": process_id}))

    def holds(self) -> dict[str, tuple[str, int | None]]:
        with reading(self.engine) as conn:
            return {r.request_id: (r.status, r.charged_ucr) for r in conn.execute(select(holds))}

    def records(self) -> dict[str, Any]:
        with reading(self.engine) as conn:
            return {r.request_id: r for r in conn.execute(select(usage_records))}

    def registered(self) -> list[int]:
        with reading(self.engine) as conn:
            return list(conn.execute(text("SELECT id FROM processes ORDER BY id")).scalars())

    def check(self) -> None:
        with reading(self.engine) as conn:
            assert self.ledger.verify(conn) == []
            assert self.ledger.balance(conn, self.user).held_ucr == sum(
                amount for amount in conn.execute(select(holds.c.amount_ucr).where(holds.c.status == "active")).scalars())

    def close(self) -> None:
        self.runner.stop()


@pytest.fixture
def s(engine: Engine) -> Iterator[Setting]:
    setting = Setting(engine)
    yield setting
    setting.close()


def test_holds_of_a_process_whose_heartbeat_lapsed_are_charged_what_it_recorded(s: Setting) -> None:
    me = s.heartbeat(host="here", lapse_s=30)
    dead, alive = s.process("there"), s.process("elsewhere")
    streamed = s.hold("streamed", 5 * C, dead)
    s.progress(streamed, completion=40, charge_ucr=2 * C)
    s.hold("silent", 3 * C, dead)  # nothing recorded as delivered (a non-streaming request, say)
    over = s.hold("over", 1 * C, dead)
    s.progress(over, completion=900, charge_ucr=4 * C)  # the estimate says more than was held
    s.hold("alive", 2 * C, alive)
    s.lapse(dead, 29_000)
    s.lapse(alive, 10_000)
    assert me.tick() == 0  # 29 s is not a lapse yet
    assert s.holds()["streamed"] == ("active", None)

    s.lapse(dead, 2_000)  # now 31 s
    assert me.tick() == 3
    assert s.holds() == {"streamed": ("settled", 2 * C), "silent": ("voided", 0), "over": ("settled", 1 * C),
                         "alive": ("active", None)}
    records = s.records()
    assert set(records) == {"streamed", "silent", "over"}
    streamed_record = records["streamed"]
    assert (streamed_record.outcome, streamed_record.charged_ucr) == ("interrupted", 2 * C)
    assert (streamed_record.prompt_tokens, streamed_record.completion_tokens) == (7, 40)
    assert "stopped before settling" in streamed_record.error and "40 output tokens" in streamed_record.error
    assert json.loads(streamed_record.route) == {"resolved": "interrupted", "process_id": dead}
    assert (records["silent"].outcome, records["silent"].charged_ucr) == ("interrupted", 0)
    assert "voided" in records["silent"].error
    assert records["over"].charged_ucr == 1 * C and "no more than the hold" in records["over"].error
    assert s.registered() == [me.process_id, alive]  # the dead one's row is gone with its holds
    assert me.tick() == 0  # resolved once
    s.check()


def test_a_process_of_the_same_host_whose_pid_is_gone_is_dead_at_once(s: Setting) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone_pid = int(gone.stdout)
    mark = pid_start(os.getpid())
    # The killed predecessor: this host, this namespace, a pid that no longer runs; its
    # heartbeat is fresh (it was killed a moment ago).
    killed = s.process("here", gone_pid, None if mark is None else mark.rpartition("/")[0] + "/12345")
    # A sibling worker of this host that is running (this very test process).
    sibling = s.process("here", os.getpid(), mark)
    s.progress(s.hold("a", 5 * C, killed), completion=3, charge_ucr=C // 2)
    s.hold("b", 5 * C, sibling)
    me = s.heartbeat(host="here")
    assert me.tick() == 1
    assert s.holds() == {"a": ("settled", C // 2), "b": ("active", None)}
    assert s.records()["a"].outcome == "interrupted"
    s.check()


def test_a_process_found_dead_while_alive_registers_again(s: Setting) -> None:
    me = s.heartbeat()
    first = me.process_id
    other = s.heartbeat(host="there")
    s.lapse(first, 60_000)  # stalled for a minute: the other process declares it dead
    other.tick()
    assert first not in s.registered()
    me.tick()  # its next beat finds out
    assert me.process_id not in (None, first) and s.inference.process_id == me.process_id
    assert me.process_id in s.registered()


def test_the_sweeper_still_resolves_timed_out_and_orphaned_holds_from_their_progress(s: Setting) -> None:
    live = s.heartbeat().process_id  # heartbeating, but its request never settles
    with reading(s.engine) as conn:
        long_ago = processes.db_now_ms(conn) - s.ledger.hold_timeout_ms - 1_000
    stuck = s.hold("stuck", 5 * C, live, at_ms=long_ago)
    s.progress(stuck, completion=12, charge_ucr=C)
    s.hold("orphan", 5 * C, 987_654)  # its process's row is gone
    s.hold("recent", 5 * C, live)
    assert sweep_once(s.runner, s.ledger, {}, USD_PER_CREDIT) == 2
    assert s.holds() == {"stuck": ("settled", C), "orphan": ("voided", 0), "recent": ("active", None)}
    records = s.records()
    assert (records["stuck"].outcome, records["stuck"].completion_tokens) == ("expired", 12)
    assert records["orphan"].outcome == "interrupted"
    s.check()


def test_a_clean_stop_leaves_no_row_behind(s: Setting) -> None:
    me = s.heartbeat()
    assert me.process_id in s.registered()
    s.runner.run_sync(lambda c: processes.stop(c, me.process_id))
    assert s.registered() == []
