"""What a hold's stream had delivered, as last recorded, and the holds to resolve from it.

A streaming request's process records every few seconds what a cancellation would then charge
(`ProgressOp`: prompt and output tokens, micro-credits), for all its streams in one statement
through the batched ledger writer. Should the process die (SIGKILL, a lost machine), the holds
it left are resolved from that record by another process or its successor (inference.heartbeat),
or at the latest by the sweeper's time-out: charged what was recorded, never above the hold; a
hold with no record is voided.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text

from switchboard.store import rawsql
from switchboard.store.runner import BatchedWork
from switchboard.store.schema import holds

PROGRESS_COLUMNS = ("model", "progress_prompt_tokens", "progress_completion_tokens", "progress_ucr", "progress_ms")
# After every user's wallet in a batch (runner batches run in order_key order): a batch then
# locks wallets before holds, as settlements do, and cannot deadlock with one.
PROGRESS_ORDER_KEY = 2**62

_ACTIVE = (
    "SELECT id, user_id, request_id, amount_ucr, model, created_ms, process_id, progress_prompt_tokens, "
    "progress_completion_tokens, progress_ucr FROM holds WHERE status = 'active'"
)


@dataclass(frozen=True, slots=True)
class Progress:
    """One stream's delivery so far; `charge_ucr` is what a cancellation would charge now."""

    hold_id: int
    model: str
    prompt_tokens: int
    completion_tokens: int
    charge_ucr: int
    at_ms: int

    def row(self) -> dict[str, Any]:
        return {"id": self.hold_id, "model": self.model, "progress_prompt_tokens": self.prompt_tokens,
                "progress_completion_tokens": self.completion_tokens, "progress_ucr": self.charge_ucr,
                "progress_ms": self.at_ms}


@dataclass(slots=True)
class ProgressOp(BatchedWork):
    """Record the progress of a process's streams: one update of their holds. A hold settled
    meanwhile keeps the figures harmlessly (only active holds are ever resolved from them)."""

    progress: list[Progress]

    def together(self) -> Callable[[Connection, list[Any]], list[Any]]:
        return record_progress


def record_progress(conn: Connection, ops: list[ProgressOp]) -> list[None]:
    latest = {p.hold_id: p.row() for op in ops for p in op.progress}  # a later op's figures win
    if latest:
        rawsql.update_many(conn, holds, "id", PROGRESS_COLUMNS, [latest[k] for k in sorted(latest)])
    return [None] * len(ops)


@dataclass(frozen=True, slots=True)
class OpenHold:
    """An active hold with what its stream had delivered, as last recorded (None: nothing)."""

    id: int
    user_id: int
    request_id: str
    amount_ucr: int
    model: str
    created_ms: int
    process_id: int | None
    prompt_tokens: int | None
    completion_tokens: int | None
    progress_ucr: int | None

    @property
    def charge_ucr(self) -> int:
        """What resolving it charges: the recorded delivery, never above the hold."""
        return max(0, min(self.progress_ucr or 0, self.amount_ucr))


def _open_holds(conn: Connection, where: str, params: dict[str, Any], limit: int) -> list[OpenHold]:
    rows = conn.execute(text(f"{_ACTIVE} AND {where} ORDER BY id LIMIT {int(limit)}"), params)
    return [OpenHold(*row) for row in rows]


def holds_of(conn: Connection, process_ids: Iterable[int], limit: int = 1000) -> list[OpenHold]:
    """The active holds of these processes."""
    ids = sorted(set(process_ids))
    if not ids:
        return []
    params = {f"p_{i}": pid for i, pid in enumerate(ids)}
    return _open_holds(conn, f"process_id IN ({', '.join(':' + k for k in params)})", params, limit)


def timed_out(conn: Connection, at_ms: int, limit: int = 500) -> list[OpenHold]:
    """Active holds past their time-out, whatever their process (the last resort)."""
    return _open_holds(conn, "expires_ms <= :at", {"at": at_ms}, limit)


def orphaned(conn: Connection, limit: int = 500) -> list[OpenHold]:
    """Active holds whose process is no longer registered (its row was deleted once its holds
    were resolved; a process found dead that still placed a hold afterwards leaves such)."""
    return _open_holds(conn, "process_id IS NOT NULL AND NOT EXISTS "
                             "(SELECT 1 FROM processes p WHERE p.id = holds.process_id)", {}, limit)
