"""The registry of server processes (the `processes` table): each process registers a row,
beats its heartbeat into it every few seconds, and marks it stopped when it stops.

Times of heartbeats are the database's clock, both when written and when compared: processes
on hosts whose clocks disagree still agree on whose heartbeat lapsed. (SQLite is one host's
file, so its clock is that host's.) Everything here is a few rows; none of it is on a
request's path.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, text

# The database's clock in epoch milliseconds. PostgreSQL: clock_timestamp() (now() would be
# the transaction's start). SQLite: julianday('now'), the host's clock, to the millisecond.
_NOW = {
    "postgresql": "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
    "sqlite": "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
}


def _now(conn: Connection) -> str:
    return _NOW[conn.dialect.name]


@dataclass(frozen=True, slots=True)
class ProcessRow:
    """Another process as the registry sees it, with the database's verdict on its heartbeat."""

    id: int
    host: str
    pid: int
    pid_start: str | None
    heartbeat_age_ms: int  # by the database's clock
    stopped: bool


def db_now_ms(conn: Connection) -> int:
    """The database's clock now (epoch milliseconds)."""
    return int(conn.execute(text(f"SELECT {_now(conn)}")).scalar_one())


def register(conn: Connection, host: str, pid: int, pid_start: str | None) -> int:
    """A row for this process; its id is what its holds record."""
    now = _now(conn)
    row = conn.execute(
        text(f"INSERT INTO processes (host, pid, pid_start, started_ms, heartbeat_ms) "
             f"VALUES (:host, :pid, :pid_start, {now}, {now}) RETURNING id"),
        {"host": host[:255], "pid": pid, "pid_start": pid_start},
    )
    return int(row.scalar_one())


def beat(conn: Connection, process_id: int) -> bool:
    """Write the heartbeat: one small update. False when the row was found dead meanwhile (or
    is gone): the process must then register again, since its holds may have been resolved."""
    result = conn.execute(
        text(f"UPDATE processes SET heartbeat_ms = {_now(conn)} WHERE id = :id AND stopped_ms IS NULL"),
        {"id": process_id},
    )
    return bool(result.rowcount)


def others(conn: Connection, process_id: int | None) -> list[ProcessRow]:
    """Every other registered process, with the age of its heartbeat."""
    rows = conn.execute(
        text(f"SELECT id, host, pid, pid_start, {_now(conn)} - heartbeat_ms, stopped_ms IS NOT NULL "
             "FROM processes WHERE id <> :me ORDER BY id"),
        {"me": -1 if process_id is None else process_id},
    )
    return [ProcessRow(int(r[0]), r[1], int(r[2]), r[3], int(r[4]), bool(r[5])) for r in rows]


def mark_dead(conn: Connection, process_ids: Iterable[int], *, lapsed_ms: int | None = None) -> None:
    """Mark these processes stopped, each only if it still is what it was judged by: with
    `lapsed_ms`, only those whose heartbeat is still older than that (one that beat meanwhile
    is alive)."""
    ids = sorted(set(process_ids))
    if not ids:
        return
    params: dict[str, int] = {f"id_{i}": pid for i, pid in enumerate(ids)}
    listed = ", ".join(f":{k}" for k in params)
    still = ""
    if lapsed_ms is not None:
        still = f" AND heartbeat_ms < {_now(conn)} - :lapsed"
        params["lapsed"] = lapsed_ms
    conn.execute(text(f"UPDATE processes SET stopped_ms = {_now(conn)} WHERE stopped_ms IS NULL "
                      f"AND id IN ({listed}){still}"), params)


def stopped(conn: Connection) -> list[int]:
    """Processes marked stopped (cleanly or found dead) whose rows are still there: those that
    may still hold something."""
    return [int(r[0]) for r in conn.execute(text("SELECT id FROM processes WHERE stopped_ms IS NOT NULL ORDER BY id"))]


def stop(conn: Connection, process_id: int) -> None:
    """A clean stop: marked stopped (any hold still active is then resolved by the others at
    once), and the row deleted if it holds nothing."""
    conn.execute(text(f"UPDATE processes SET stopped_ms = {_now(conn)} WHERE id = :id AND stopped_ms IS NULL"),
                 {"id": process_id})
    forget(conn, [process_id])


def forget(conn: Connection, process_ids: Iterable[int]) -> None:
    """Delete the rows of stopped processes that no longer hold anything."""
    for process_id in sorted(set(process_ids)):
        conn.execute(
            text("DELETE FROM processes WHERE id = :id AND stopped_ms IS NOT NULL AND NOT EXISTS "
                 "(SELECT 1 FROM holds WHERE holds.status = 'active' AND holds.process_id = :id)"),
            {"id": process_id},
        )
