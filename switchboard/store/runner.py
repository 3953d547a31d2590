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
from dataclasses import dataclass
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

    def together(self) -> Callable[[Connection, list[Any]], list[Any]] | None:
        return self.work.together() if isinstance(self.work, BatchedWork) else None


@dataclass(slots=True)
class _Lane:
    """One writer thread's queue and what the thread did."""
    queue: queue.SimpleQueue[_Unit | None]
    batches: int = 0  # transactions committed (or single units run alone)
    units: int = 0
    busy_s: float = 0.0  # time spent running batches: the writer's load, against wall time


class TransactionRunner:
    """`writers` threads, each with its own connection: work goes to thread `order_key mod
    writers` (order_key is the user id), so one user's work stays in order in one thread while
    different users' run side by side. Worth more than one only where the database writes in
    parallel (PostgreSQL: row locks); SQLite has one write lock."""

    def __init__(self, engine: Engine, *, writers: int = 1, name: str = "switchboard-db-writer") -> None:
        self.engine = engine
        self._lanes = [_Lane(queue.SimpleQueue()) for _ in range(max(1, writers))]
        self._threads = [
            threading.Thread(target=self._loop, args=(lane,), name=f"{name}-{i}", daemon=True)
            for i, lane in enumerate(self._lanes)
        ]
        self._started = False
        self._stopped = False

    @property
    def batches(self) -> int:
        return sum(lane.batches for lane in self._lanes)

    @property
    def units(self) -> int:
        return sum(lane.units for lane in self._lanes)

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
        """One line for the log: the work done and the busiest writer thread's busy time."""
        busy = sorted((lane.busy_s for lane in self._lanes), reverse=True)
        lanes = f" (each of {len(busy)} writers: {', '.join(f'{b:.1f}' for b in busy)} s)" if len(busy) > 1 else ""
        return (f"ledger writer: {self.units} units of work in {self.batches} transactions "
                f"({self.units / max(self.batches, 1):.1f} per commit), busy {busy[0]:.1f} s{lanes}")

    # -- the threads --------------------------------------------------------------------
    def _loop(self, lane: _Lane) -> None:
        # The thread keeps one connection: checking one out of the pool per batch cost a
        # round trip (pool_pre_ping) each time. After a lost connection SQLAlchemy reconnects it.
        conn = self.engine.connect()
        try:
            self._serve(lane, conn)
        finally:
            conn.close()

    def _serve(self, lane: _Lane, conn: Connection) -> None:
        stopping = False
        while not stopping:
            first = lane.queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    unit = lane.queue.get_nowait()
                except queue.Empty:
                    break
                if unit is None:
                    stopping = True
                    break
                batch.append(unit)
            started = time.perf_counter()
            try:
                self._run_batch(batch, conn)
            finally:
                lane.batches += 1
                lane.units += len(batch)
                lane.busy_s += time.perf_counter() - started

    def _run_batch(self, batch: list[_Unit], conn: Connection) -> None:
        if len(batch) == 1:
            self._finish(batch[0], *self._attempt(batch[0], conn))
            return
        batch.sort(key=lambda u: u.order_key)  # one lock order for every process
        results: list[Any] = []
        try:
            with self._transaction(conn, batched=all(isinstance(u.work, BatchedWork) for u in batch)):
                for together, run in itertools.groupby(batch, key=_Unit.together):
                    if together is None:
                        results.extend(unit.work(conn) for unit in run)
                    else:
                        results.extend(together(conn, [unit.work for unit in run]))
        except Exception:  # noqa: BLE001 - isolate the failing unit below
            log.debug("batch of %d failed; re-running one by one", len(batch), exc_info=True)
            for unit in batch:
                self._finish(unit, *self._attempt(unit, conn))
            return
        for unit, result in zip(batch, results):
            self._finish(unit, result, None)

    def _attempt(self, unit: _Unit, conn: Connection) -> tuple[Any, BaseException | None]:
        try:
            return self._run_alone(unit, conn), None
        except Exception as exc:  # noqa: BLE001 - handed to the waiting caller
            return None, exc

    def _run_alone(self, unit: _Unit, conn: Connection | None = None) -> Any:
        """One unit in a transaction of its own, retried on lock conflicts and lost connections:
        on `conn` (a writer thread's), else on a connection from the pool."""
        delay = 0.005
        for attempt in range(_RETRIES):
            try:
                with self._transaction(conn, batched=isinstance(unit.work, BatchedWork)) as c:
                    return unit.work(c)
            except (OperationalError, DBAPIError) as exc:
                if attempt == _RETRIES - 1 or not _is_transient(exc):
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def _transaction(self, conn: Connection | None, *, batched: bool = False) -> Iterator[Connection]:
        """A transaction on `conn` (a writer thread's), else on a connection from the pool.
        `batched`: only BatchedWork runs in it, raw SQL (store.rawsql) that may be pipelined
        with the transaction's BEGIN and COMMIT (`rawsql.pipelined_transaction`)."""
        with contextlib.ExitStack() as stack:
            c = conn if conn is not None else stack.enter_context(self.engine.connect())
            stack.enter_context(c.begin())
            if batched:
                stack.enter_context(rawsql.pipelined_transaction(c))
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


def _is_transient(exc: DBAPIError) -> bool:
    """Lock contention, deadlocks and a lost connection are worth a retry; constraint
    violations are not."""
    if exc.connection_invalidated:
        return True
    text = str(exc.orig).lower() if exc.orig is not None else str(exc).lower()
    sqlstate = getattr(exc.orig, "sqlstate", None)
    return sqlstate in {"40001", "40P01", "55P03"} or "locked" in text or "busy" in text or "deadlock" in text
