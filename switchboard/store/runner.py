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

Units submitted `pipelined=True` (the ledger's hold and settle, written in store.rawsql) run in
psycopg's pipeline mode on PostgreSQL, consecutive ones together: a unit's writes go out
without waiting, and only its reads wait for the server, so a batch costs a round trip per
read instead of one per statement.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
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


@dataclass(slots=True)
class _Unit:
    work: Work
    order_key: int
    future: Future[Any] | None  # None: fire-and-forget (the result is not awaited)
    pipelined: bool = False  # raw SQL only (store.rawsql): may run in pipeline mode


class TransactionRunner:
    def __init__(self, engine: Engine, *, name: str = "switchboard-db-writer") -> None:
        self.engine = engine
        self._queue: queue.SimpleQueue[_Unit | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._started = False
        self._stopped = threading.Event()
        self.batches = 0  # commits (or single-unit transactions)
        self.units = 0
        self.busy_s = 0.0  # time spent running batches: the writer's load, against wall time

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish everything queued, then stop."""
        if self._started and not self._stopped.is_set():
            self._queue.put(None)
            self._thread.join(timeout)

    def submit(self, work: Callable[[Connection], T], *, order_key: int = 0, pipelined: bool = False) -> Future[T]:
        future: Future[T] = Future()
        self._queue.put(_Unit(work, order_key, future, pipelined))
        return future

    def submit_nowait(self, work: Work, *, order_key: int = 0, pipelined: bool = False) -> None:
        """Queue work whose result nobody waits for (e.g. settling after a client went away):
        it runs even if the caller's task is cancelled."""
        self._queue.put(_Unit(work, order_key, None, pipelined))

    async def run(self, work: Callable[[Connection], T], *, order_key: int = 0, pipelined: bool = False) -> T:
        return await asyncio.wrap_future(self.submit(work, order_key=order_key, pipelined=pipelined))

    def run_sync(self, work: Callable[[Connection], T], *, pipelined: bool = False) -> T:
        """For callers without the runner thread (CLI): one transaction, with retries."""
        return self._run_alone(_Unit(work, 0, None, pipelined))

    # -- the thread ---------------------------------------------------------------------
    def _loop(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    unit = self._queue.get_nowait()
                except queue.Empty:
                    break
                if unit is None:
                    stopping = True
                    break
                batch.append(unit)
            self._run_batch(batch)
        self._stopped.set()

    def summary(self) -> str:
        return (f"ledger writer: {self.units} units of work in {self.batches} transactions "
                f"({self.units / max(self.batches, 1):.1f} per commit), busy {self.busy_s:.1f} s")

    def _run_batch(self, batch: list[_Unit]) -> None:
        started = time.perf_counter()
        try:
            self._run_units(batch)
        finally:
            self.busy_s += time.perf_counter() - started

    def _run_units(self, batch: list[_Unit]) -> None:
        self.batches += 1
        self.units += len(batch)
        if len(batch) == 1:
            self._finish(batch[0], *self._attempt(batch[0]))
            return
        batch.sort(key=lambda u: u.order_key)  # one lock order for every process
        results: list[Any] = []
        try:
            with self.engine.begin() as conn:
                for pipelined, run in itertools.groupby(batch, key=lambda u: u.pipelined):
                    with rawsql.pipeline(conn) if pipelined else contextlib.nullcontext():
                        results.extend(unit.work(conn) for unit in run)
        except Exception:  # noqa: BLE001 - isolate the failing unit below
            log.debug("batch of %d failed; re-running one by one", len(batch), exc_info=True)
            for unit in batch:
                self._finish(unit, *self._attempt(unit))
            return
        for unit, result in zip(batch, results):
            self._finish(unit, result, None)

    def _attempt(self, unit: _Unit) -> tuple[Any, BaseException | None]:
        try:
            return self._run_alone(unit), None
        except Exception as exc:  # noqa: BLE001 - handed to the waiting caller
            return None, exc

    def _run_alone(self, unit: _Unit) -> Any:
        delay = 0.005
        for attempt in range(_RETRIES):
            try:
                with self.engine.begin() as conn, rawsql.pipeline(conn) if unit.pipelined else contextlib.nullcontext():
                    return unit.work(conn)
            except (OperationalError, DBAPIError) as exc:
                if attempt == _RETRIES - 1 or not _is_transient(exc):
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
        raise AssertionError("unreachable")

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
    """Lock contention and deadlocks are worth a retry; constraint violations are not."""
    text = str(exc.orig).lower() if exc.orig is not None else str(exc).lower()
    sqlstate = getattr(exc.orig, "sqlstate", None)
    return sqlstate in {"40001", "40P01", "55P03"} or "locked" in text or "busy" in text or "deadlock" in text
