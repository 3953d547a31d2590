"""Engines from plain database URLs: sqlite:///PATH (default) or postgresql://USER@HOST:PORT/DB."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.pool import NullPool

from switchboard.store import rawsql

T = TypeVar("T")


def driver_url(url: str) -> str:
    """The SQLAlchemy URL for a plain one: PostgreSQL goes through psycopg 3."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def make_engine(url: str, *, pool_size: int = 8) -> Engine:
    if is_sqlite(url):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            _private_file(Path(path))
        engine = create_engine(url, poolclass=NullPool if path == ":memory:" else None, pool_size=pool_size)
        _configure_sqlite(engine)
        return engine
    engine = create_engine(driver_url(url), pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
    rawsql.guard_pipeline(engine)
    from switchboard.store.pg_text import nul_free_text  # imports psycopg: only where PostgreSQL is used

    nul_free_text(engine)  # text with NUL stored, not refused
    return engine


def _private_file(path: Path) -> None:
    """Create the database's directory (0700) and file (0600) for its owner alone, before SQLite
    opens it: SQLite creates a missing file 0644, and gives the -wal and -shm files the mode of
    the database file. An existing directory or file keeps the mode its operator gave it."""
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.parent.chmod(0o700)  # whatever the umask
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # an empty file is an empty database
    except FileExistsError:
        return
    path.chmod(0o600)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: object) -> None:
        # We issue BEGIN ourselves (below), so that writers take the lock up front with
        # BEGIN IMMEDIATE: check-then-reserve is then atomic across processes.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes under WAL
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:  # type: ignore[no-untyped-def]
        # Readers opt out (see `reading`): WAL lets them run beside the one writer.
        if conn.get_execution_options().get("sqlite_deferred"):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def reading(engine: Engine) -> Connection:
    """A connection for read-only work (does not take SQLite's write lock)."""
    return engine.connect().execution_options(sqlite_deferred=True)


def read(engine: Engine, work: Callable[[Connection], T]) -> T:
    """Run read-only `work` on its own connection (callers off the event loop wrap this in a
    thread: `await asyncio.to_thread(read, engine, work)`)."""
    with reading(engine) as conn:
        return work(conn)
