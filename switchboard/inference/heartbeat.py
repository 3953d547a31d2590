"""Holds belong to a process: its heartbeat, its streams' progress, and the holds of the dead.

Why: a process killed with SIGKILL (or a lost machine) settles nothing, and its users' credits
stayed held until the sweeper's time-out (15 minutes), then voided at zero although tokens had
been delivered. So each server process:

- registers itself (store.processes) and stamps its id on every hold it places;
- writes a heartbeat every `heartbeat_interval_s` (one small update; the database's clock);
- records, every `progress_interval_s`, what each of its streams had delivered (what a
  cancellation would then charge), all of them in one operation of the batched ledger writer
  (billing.progress), never per token;
- finds dead processes and resolves their holds from that record (charged what was recorded,
  never above the hold; voided without a record), with a usage record of outcome
  "interrupted": any process whose heartbeat is older than `heartbeat_lapse_s`, at start-up and
  at every heartbeat; and, sooner, a process of its own host that is shown gone (see `_judge`).

The sweeper's time-out (inference.sweeper) stays the last resort. A process found dead that
was in fact alive (stalled past the lapse) learns it at its next heartbeat and registers anew;
its requests in flight then find their holds resolved and are not charged again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from decimal import Decimal
from functools import cache
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy import Connection, Engine

from switchboard.billing import progress
from switchboard.billing.ledger import Ledger, now_ms
from switchboard.billing.progress import PROGRESS_ORDER_KEY, Progress, ProgressOp
from switchboard.core.catalog import ModelSpec
from switchboard.inference.sweeper import resolve
from switchboard.store import processes
from switchboard.store.db import reading
from switchboard.store.processes import ProcessRow
from switchboard.store.runner import TransactionRunner

if TYPE_CHECKING:
    from switchboard.inference.metered import Inference

log = logging.getLogger(__name__)
T = TypeVar("T")

# A process of this host that cannot be judged from /proc (another pid namespace: most often
# the container this one replaced) is dead once it missed this many heartbeats.
HOST_LAPSE_BEATS = 3


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _start_tick(pid: int) -> str | None:
    """The kernel's start time of `pid` (clock ticks since boot), or None where there is none."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    fields = stat.rpartition(")")[2].split()  # after the command name, which may hold spaces
    return fields[19] if len(fields) > 19 else None  # field 22 of proc(5), counted from field 3


@cache
def _namespace() -> str | None:
    """This boot of this machine and this pid namespace: where a pid means the same process."""
    boot = _read("/proc/sys/kernel/random/boot_id")
    try:
        pid_ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    return f"{boot}/{pid_ns}" if boot else None


def pid_start(pid: int) -> str | None:
    """The OS's mark of a process's start ("boot/namespace/tick"), that tells a reused pid
    apart; None where /proc does not give one."""
    namespace, tick = _namespace(), _start_tick(pid)
    return f"{namespace}/{tick}" if namespace and tick else None


def _judge(row: ProcessRow, host: str) -> bool | None:
    """Whether another process of this host is gone (True), running (False), or cannot be told
    from here (None: its heartbeat decides)."""
    if row.host != host:
        return None
    if row.pid_start is not None:
        namespace, _, _ = row.pid_start.rpartition("/")
        if namespace != _namespace():  # another boot, or another pid namespace
            return None
        return pid_start(row.pid) != row.pid_start  # gone, or its pid now someone else's
    if _namespace() is not None or os.name == "nt":  # cannot compare; (signal 0 on Windows is not a probe)
        return None
    if row.pid == os.getpid():
        return True
    try:
        os.kill(row.pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, not ours to signal
        return False
    return False


class Heartbeat:
    """This process's row in the registry, its beats, its streams' progress, and the resolution
    of dead processes' holds. `start` registers (and, with `resolving`, resolves what dead
    processes left before serving); `stop`, then `deregister`, end it."""

    def __init__(
        self, *, engine: Engine, runner: TransactionRunner, ledger: Ledger, catalog: dict[str, ModelSpec],
        inference: Inference, usd_per_credit: Decimal, interval_s: float, lapse_s: float, progress_interval_s: float,
        host: str | None = None,
    ) -> None:
        self.engine, self.runner, self.ledger, self.catalog = engine, runner, ledger, catalog
        self.inference = inference
        self.usd_per_credit = usd_per_credit
        self.interval_s, self.lapse_s, self.progress_interval_s = interval_s, lapse_s, progress_interval_s
        self.host = host or socket.gethostname()
        self.process_id: int | None = None
        self.resolving = False
        self._recorded: dict[int, tuple[str, int, int, int]] = {}  # hold id -> last progress sent
        self._tasks: list[asyncio.Task[None]] = []

    # -- life ---------------------------------------------------------------------------------
    async def start(self, *, resolving: bool = True) -> None:
        await asyncio.to_thread(self._register)
        self.resolving = resolving
        if resolving:  # holds left by a dead predecessor are resolved before this one serves
            await asyncio.to_thread(self.tick)
        self._tasks = [asyncio.create_task(self._every(self.interval_s, self._tick_in_thread, "heartbeat")),
                       asyncio.create_task(self._every(self.progress_interval_s, self._record_now, "progress"))]

    async def stop(self) -> None:
        """Stop beating and recording (before the ledger writer stops: a resolution under way
        waits for it)."""
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def deregister(self) -> None:
        """After the ledger writer drained: this process's row is marked stopped (deleted if it
        holds nothing; any hold left is then resolved by the others at their next heartbeat)."""
        process_id = self.process_id
        if process_id is None:
            return
        try:
            await asyncio.to_thread(self._write, lambda conn: processes.stop(conn, process_id))
        except Exception as exc:  # noqa: BLE001 - its heartbeat then lapses, and the others clean up
            log.warning("could not mark this process (id %d) stopped: %r", process_id, exc)

    def _register(self) -> None:
        pid = os.getpid()
        self.process_id = self._write(lambda conn: processes.register(conn, self.host, pid, pid_start(pid)))
        self.inference.process_id = self.process_id

    def _write(self, work: Callable[[Connection], T]) -> T:
        with self.engine.begin() as conn:
            return work(conn)

    @staticmethod
    async def _every(interval_s: float, step: Callable[[], Awaitable[object]], what: str) -> None:
        failing = False
        while True:
            await asyncio.sleep(interval_s)
            try:
                await step()
                failing = False
            except Exception as exc:  # noqa: BLE001 - retried at the next interval
                if failing:  # the traceback once, then one line per interval (a database down)
                    log.warning("%s failed again: %r", what, exc)
                else:
                    log.exception("%s failed", what)
                failing = True

    async def _tick_in_thread(self) -> None:
        await asyncio.to_thread(self.tick)

    async def _record_now(self) -> None:
        self.record()

    # -- the heartbeat --------------------------------------------------------------------
    def tick(self) -> int:
        """Beat; then find dead processes and resolve their holds. Returns how many holds this
        call resolved. Blocking."""
        assert self.process_id is not None
        process_id = self.process_id
        with self.engine.begin() as conn:
            alive = processes.beat(conn, process_id)
            others = processes.others(conn, process_id) if self.resolving else []
        if not alive:
            log.error("this process (id %d) was found dead by another (its heartbeat lapsed): registering again; "
                      "its requests in flight were resolved from their recorded progress", process_id)
            self._register()
        return self._resolve_dead(others) if others else 0

    def _resolve_dead(self, others: list[ProcessRow]) -> int:
        lapse_ms, host_lapse_ms = int(self.lapse_s * 1000), int(HOST_LAPSE_BEATS * self.interval_s * 1000)
        gone, host_stale, stale = [], [], []
        for row in others:
            if row.stopped:
                continue
            verdict = _judge(row, self.host)
            if verdict:
                gone.append(row.id)
            elif row.heartbeat_age_ms > lapse_ms:
                stale.append(row.id)
            elif verdict is None and row.host == self.host and row.heartbeat_age_ms > host_lapse_ms:
                host_stale.append(row.id)
        if not (gone or host_stale or stale or any(row.stopped for row in others)):
            return 0
        with self.engine.begin() as conn:  # each still as judged, or it is left alive
            processes.mark_dead(conn, gone)
            processes.mark_dead(conn, host_stale, lapsed_ms=host_lapse_ms)
            processes.mark_dead(conn, stale, lapsed_ms=lapse_ms)
            dead = processes.stopped(conn)
        if not dead:
            return 0
        with reading(self.engine) as conn:
            left = progress.holds_of(conn, dead)
        resolved = resolve(self.runner, self.ledger, self.catalog, self.usd_per_credit, left, "interrupted",
                           "the server process serving this request stopped before settling it")
        self._write(lambda conn: processes.forget(conn, dead))
        if resolved:
            described = ", ".join(f"{r.id} ({r.host} pid {r.pid})" for r in others if r.id in set(dead))
            log.warning("resolved %d hold(s) of dead server process(es) %s from their recorded progress",
                        resolved, described)
        return resolved

    # -- progress of this process's streams -----------------------------------------------
    def record(self) -> None:
        """On the event loop (the streams' state lives there): one operation for all streams
        whose delivery changed since last time, queued for the ledger writer."""
        streams = self.inference.streams
        changed: list[Progress] = []
        at = now_ms()
        for hold_id, call in list(streams.items()):
            delivered = call.delivered()
            if delivered is None:
                continue
            usage, charge = delivered
            figures = (call.model.name, usage.prompt_tokens, usage.completion_tokens, charge)
            if self._recorded.get(hold_id) != figures:
                self._recorded[hold_id] = figures
                changed.append(Progress(hold_id, *figures, at))
        for hold_id in [h for h in self._recorded if h not in streams]:
            del self._recorded[hold_id]
        if changed:
            self.runner.submit_nowait(ProgressOp(changed), order_key=PROGRESS_ORDER_KEY)
