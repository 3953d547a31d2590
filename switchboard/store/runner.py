"""Group commit: one thread runs write transactions for the whole process, many per commit.

Why hand-written: each metered request needs two short write transactions (hold, settle).
Run one by one, every request pays a commit (an fsync on SQLite, a round trip on PostgreSQL)
and the event loop waits on a lock. Here requests queue their work, and the runner thread
executes everything that is waiting inside one transaction and commits once. Each unit of work
still runs under the database's write lock (SQLite BEGIN IMMEDIATE; PostgreSQL row locks taken
in user-id order, so batches in different processes cannot deadlock), so every check-and-reserve
stays atomic across processes.

If a batch fails, it is rolled back and its units are re-run one per transaction, so one bad
unit fails alone. Units must therefore be pure database work: no side effects outside `conn`.

Work that is a `BatchedWork` (the ledger's holds and settlements) goes further: the consecutive
units of a batch whose work does the same kind of thing are handed over together, in one call
(`together()`), which can read what they all need at once and write their rows in one
statement per table (billing.holds).

On PostgreSQL each writer is a relay of two threads with a connection each: while one waits
for its batch's COMMIT (a round trip and a WAL flush), the other takes the work that queued
meanwhile and sends its reads. The two batches cannot interleave wrongly: the one being
committed still holds its wallets' row locks, so a later batch that touches one of the same
users waits for that commit at its first statement, and then reads what it committed. If that
commit fails, its units are re-run after the later batch, as if they had come after it (they
were concurrent requests; none of them had an answer yet).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from switchboard.store import rawsql

log = logging.getLogger(__name__)

T = TypeVar("T")
Work = Callable[[Connection], Any]
MAX_BATCH = 256
_RETRIES = 8


class BatchedWork(abc.ABC):
    """Work that runs together with the rest of its kind in a batch: `together()` is a function
    of (connection, list of such work) that does what calling each in turn would do and
    returns their results in order. Units whose `together()` are equal go to one call. Raw
    SQL only (store.rawsql): it runs in PostgreSQL's pipeline mode."""

    __slots__ = ()

    @abc.abstractmethod
    def together(self) -> Callable[[Connection, list[Any]], list[Any]]: ...

    def __call__(self, conn: Connection) -> Any:
        return self.together()(conn, [self])[0]


@dataclass(slots=True)
class _Unit:
    work: Work
    order_key: int
    future: Future[Any] | None  # None: fire-and-forget (the result is not awaited)
    queued: float = field(default_factory=time.perf_counter)

    def together(self) -> Callable[[Connection, list[Any]], list[Any]] | None:
        return self.work.together() if isinstance(self.work, BatchedWork) else None


@dataclass(slots=True)
class _Turn:
    """A writer thread's turn to take work from its lane's queue, and what the thread did.
    Exactly one of a lane's threads has the turn: it takes a batch, and hands the turn to the
    other thread when that batch's COMMIT is sent, if work is already waiting; otherwise it
    keeps it (waking the other thread for nothing would cost a thread switch per batch)."""
    mine: threading.Event = field(default_factory=threading.Event)
    then: threading.Event = field(default_factory=threading.Event)  # the other thread's turn (no relay: mine)
    batches: int = 0  # batches taken: transactions (or single units run alone)
    units: int = 0
    busy_s: float = 0.0  # time from taking a batch to its COMMIT (with the turn held)
    waited_s: float = 0.0  # units' time in the queue, summed
    answered_s: float = 0.0  # units' time from submit to answer, summed


@dataclass(slots=True)
class _Lane:
    """One writer: its queue and its threads (two with a relay)."""
    queue: queue.SimpleQueue[_Unit | None]
    turns: list[_Turn] = field(default_factory=list)

    @property
    def busy_s(self) -> float:  # the writer's load, against wall time (turns do not overlap)
        return sum(turn.busy_s for turn in self.turns)


class TransactionRunner:
    """`writers` writers, each with its own queue: work goes to writer `order_key mod writers`
    (order_key is the user id), so one user's work stays in order in one writer while different
    users' run side by side. Worth more than one only where the database writes in parallel
    (PostgreSQL: row locks); SQLite has one write lock.

    `relay`: each writer is two threads with a connection each, taking turns (see the module's
    docstring). Default: on PostgreSQL. SQLite gains nothing: its write lock is held until the
    commit is done, so the next batch could not begin anyway."""

    def __init__(self, engine: Engine, *, writers: int = 1, relay: bool | None = None,
                 name: str = "switchboard-db-writer") -> None:
        self.engine = engine
        self.relay = engine.dialect.name == "postgresql" if relay is None else relay
        self._lanes = [_Lane(queue.SimpleQueue()) for _ in range(max(1, writers))]
        self._threads = []
        for i, lane in enumerate(self._lanes):
            turns = lane.turns = [_Turn() for _ in range(2 if self.relay else 1)]
            for r, turn in enumerate(turns):
                turn.then = turns[(r + 1) % len(turns)].mine
                self._threads.append(threading.Thread(
                    target=self._loop, args=(lane, turn), name=f"{name}-{i}" + ("ab"[r] if self.relay else ""),
                    daemon=True))
            turns[0].mine.set()
        self._started = False
        self._stopped = False

    @property
    def batches(self) -> int:
        return sum(turn.batches for lane in self._lanes for turn in lane.turns)

    @property
    def units(self) -> int:
        return sum(turn.units for lane in self._lanes for turn in lane.turns)

    def start(self) -> None:
        if not self._started:
            self._started = True
            for thread in self._threads:
                thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish everything queued, then stop."""
        if self._started and not self._stopped:
            self._stopped = True
            for lane in self._lanes:
                for _ in lane.turns:  # a thread stops at the first it takes
                    lane.queue.put(None)
            for thread in self._threads:
                thread.join(timeout)

    def _queue_for(self, order_key: int) -> queue.SimpleQueue[_Unit | None]:
        return self._lanes[order_key % len(self._lanes)].queue

    def submit(self, work: Callable[[Connection], T], *, order_key: int = 0) -> Future[T]:
        future: Future[T] = Future()
        self._queue_for(order_key).put(_Unit(work, order_key, future))
        return future

    def submit_nowait(self, work: Work, *, order_key: int = 0) -> None:
        """Queue work whose result nobody waits for (e.g. settling after a client went away):
        it runs even if the caller's task is cancelled."""
        self._queue_for(order_key).put(_Unit(work, order_key, None))

    async def run(self, work: Callable[[Connection], T], *, order_key: int = 0) -> T:
        return await asyncio.wrap_future(self.submit(work, order_key=order_key))

    def run_sync(self, work: Callable[[Connection], T]) -> T:
        """For callers without the runner thread (CLI): one transaction, with retries."""
        return self._run_alone(_Unit(work, 0, None))

    def summary(self) -> str:
        """One line for the log: the work done, the busiest writer's busy time, and how long a
        unit took from submit to answer, of which how long it waited in the queue."""
        busy = sorted((lane.busy_s for lane in self._lanes), reverse=True)
        lanes = f" (each of {len(busy)} writers: {', '.join(f'{b:.1f}' for b in busy)} s)" if len(busy) > 1 else ""
        turns = [turn for lane in self._lanes for turn in lane.turns]
        units = max(self.units, 1)
        answered_ms = sum(t.answered_s for t in turns) / units * 1000
        waited_ms = sum(t.waited_s for t in turns) / units * 1000
        return (f"ledger writer: {self.units} units of work in {self.batches} transactions "
                f"({self.units / max(self.batches, 1):.1f} per commit), busy {busy[0]:.1f} s{lanes}; "
                f"a unit answered in {answered_ms:.2f} ms on average, {waited_ms:.2f} ms of it queued")

    # -- the threads --------------------------------------------------------------------
    def _loop(self, lane: _Lane, turn: _Turn) -> None:
        # The thread keeps one connection: checking one out of the pool per batch cost a
        # round trip (pool_pre_ping) each time. After a lost connection SQLAlchemy reconnects it.
        conn = self.engine.connect()
        try:
            self._serve(lane, turn, conn)
        finally:
            conn.close()

    def _serve(self, lane: _Lane, turn: _Turn, conn: Connection) -> None:
        while True:
            turn.mine.wait()
            turn.mine.clear()
            first = lane.queue.get()
            if first is None:  # stop; the other thread then takes its own None
                turn.then.set()
                return
            batch, stopping = _with_waiting(first, lane.queue)
            taken = time.perf_counter()
            turn.batches += 1
            turn.units += len(batch)
            turn.waited_s += sum(taken - unit.queued for unit in batch)
            handed_over = False

            def committing() -> None:
                nonlocal handed_over
                if turn.then is not turn.mine and not handed_over and not lane.queue.empty():
                    handed_over = True
                    turn.busy_s += time.perf_counter() - taken
                    turn.then.set()

            try:
                self._run_batch(batch, conn, committing)
            finally:
                answered = time.perf_counter()
                turn.answered_s += sum(answered - unit.queued for unit in batch)
                if not handed_over:
                    turn.busy_s += answered - taken
                    (turn.then if stopping else turn.mine).set()
            if stopping:
                return

    def _run_batch(self, batch: list[_Unit], conn: Connection, committing: Callable[[], None]) -> None:
        """`committing` is called once the batch's COMMIT is on its way (pipelined batches)."""
        if len(batch) == 1:
            self._finish(batch[0], *self._attempt(batch[0], conn, committing))
            return
        batch.sort(key=lambda u: u.order_key)  # one lock order for every process
        results: list[Any] = []
        try:
            with self._transaction(conn, batched=all(isinstance(u.work, BatchedWork) for u in batch),
                                   committing=committing):
                for together, run in itertools.groupby(batch, key=_Unit.together):
                    if together is None:
                        results.extend(unit.work(conn) for unit in run)
                    else:
                        results.extend(together(conn, [unit.work for unit in run]))
        except Exception:  # noqa: BLE001 - isolate the failing unit below
            # With a relay, the next batch may have committed meanwhile: these now run after it.
            log.debug("batch of %d failed; re-running one by one", len(batch), exc_info=True)
            for unit in batch:
                self._finish(unit, *self._attempt(unit, conn))
            return
        for unit, result in zip(batch, results):
            self._finish(unit, result, None)

    def _attempt(self, unit: _Unit, conn: Connection,
                 committing: Callable[[], None] | None = None) -> tuple[Any, BaseException | None]:
        try:
            return self._run_alone(unit, conn, committing), None
        except Exception as exc:  # noqa: BLE001 - handed to the waiting caller
            return None, exc

    def _run_alone(self, unit: _Unit, conn: Connection | None = None,
                   committing: Callable[[], None] | None = None) -> Any:
        """One unit in a transaction of its own, retried on lock conflicts and lost connections:
        on `conn` (a writer thread's), else on a connection from the pool."""
        delay = 0.005
        for attempt in range(_RETRIES):
            try:
                with self._transaction(conn, batched=isinstance(unit.work, BatchedWork), committing=committing) as c:
                    return unit.work(c)
            except (OperationalError, DBAPIError) as exc:
                if attempt == _RETRIES - 1 or not _is_transient(exc):
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def _transaction(self, conn: Connection | None, *, batched: bool = False,
                     committing: Callable[[], None] | None = None) -> Iterator[Connection]:
        """A transaction on `conn` (a writer thread's), else on a connection from the pool.
        `batched`: only BatchedWork runs in it, raw SQL (store.rawsql) that may be pipelined
        with the transaction's BEGIN and COMMIT (`rawsql.pipelined_transaction`, which calls
        `committing` once the COMMIT is sent)."""
        with contextlib.ExitStack() as stack:
            c = conn if conn is not None else stack.enter_context(self.engine.connect())
            stack.enter_context(c.begin())
            if batched:
                stack.enter_context(rawsql.pipelined_transaction(c, committing))
            yield c

    @staticmethod
    def _finish(unit: _Unit, result: Any, error: BaseException | None) -> None:
        if unit.future is None:
            if error is not None:
                log.error("background ledger work failed: %r", error)
            return
        if unit.future.cancelled():  # the waiter gave up; the work itself was still done
            return
        if error is not None:
            unit.future.set_exception(error)
        else:
            unit.future.set_result(result)


def _with_waiting(first: _Unit, waiting: queue.SimpleQueue[_Unit | None]) -> tuple[list[_Unit], bool]:
    """`first` and the units queued behind it (up to MAX_BATCH), and whether a stop (None)
    came among them."""
    batch = [first]
    while len(batch) < MAX_BATCH:
        try:
            unit = waiting.get_nowait()
        except queue.Empty:
            break
        if unit is None:
            return batch, True
        batch.append(unit)
    return batch, False


def _is_transient(exc: DBAPIError) -> bool:
    """Lock contention, deadlocks and a lost connection are worth a retry; constraint
    violations are not."""
    if exc.connection_invalidated:
        return True
    text = str(exc.orig).lower() if exc.orig is not None else str(exc).lower()
    sqlstate = getattr(exc.orig, "sqlstate", None)
    return sqlstate in {"40001", "40P01", "55P03"} or "locked" in text or "busy" in text or "deadlock" in text
