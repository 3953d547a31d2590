"""CPU time used by processes (Linux /proc): less sensitive to a noisy machine than rates."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg

_TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def cpu_s(pids: list[int]) -> float:
    """CPU seconds (user + system) the processes have used so far; gone ones count 0."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) * _TICK_S
    return total


def with_children(pid: int) -> list[int]:
    """A process and its children (the workers of `serve --workers N`)."""
    pids = [pid]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rpartition(")")[2].split()[1]) == pid:
                pids.append(int(stat.parent.name))
        except (OSError, ValueError):
            continue
    return pids


def postgres_backends(database_url: str | None) -> list[int]:
    """The PostgreSQL backends connected to the database (none for SQLite or no URL)."""
    if not database_url or not database_url.startswith(("postgresql://", "postgres://")):
        return []
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                            "AND pid <> pg_backend_pid()").fetchall()
    return [row[0] for row in rows]
