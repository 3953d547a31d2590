"""Fixed SQL executed straight on the DBAPI connection under a SQLAlchemy transaction.

Why hand-written: the ledger's hold and settle statements run twice per API request. Through
SQLAlchemy Core each costs ~20 us of Python even when prebuilt; on the driver's own cursor
~3 us. That difference is most of the gateway's per-request ledger cost, so the dozen
hot-path statements use this; everything else uses SQLAlchemy.

SQL is written once with `:name` parameters (sqlite3's named style) and rewritten to
`%(name)s` for psycopg. Statements must be portable between SQLite and PostgreSQL.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Connection

_NAMED = re.compile(r"(?<!:):([a-zA-Z_][a-zA-Z0-9_]*)")
_converted: dict[tuple[str, str], str] = {}
_FOR_UPDATE = re.compile(r" FOR UPDATE( OF \w+)?")


def _sql_for(sql: str, dialect: str) -> str:
    key = (sql, dialect)
    text = _converted.get(key)
    if text is None:
        if dialect == "postgresql":
            text = _NAMED.sub(r"%(\1)s", sql.replace("%", "%%"))
        else:
            # SQLite: BEGIN IMMEDIATE already holds the write lock.
            text = _FOR_UPDATE.sub("", sql)
        _converted[key] = text
    return text


def execute(conn: Connection, sql: str, params: dict[str, Any]) -> Any:
    """Run one statement; returns the DBAPI cursor (fetchone/fetchall on it)."""
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    cursor.execute(_sql_for(sql, conn.dialect.name), params)
    return cursor


def execute_many(conn: Connection, sql: str, rows: list[dict[str, Any]]) -> None:
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    cursor.executemany(_sql_for(sql, conn.dialect.name), rows)
    cursor.close()


def write(conn: Connection, sql: str, params: dict[str, Any]) -> None:
    """A statement whose result is not read (inside `pipeline` it does not wait for its answer)."""
    conn.connection.driver_connection.cursor().execute(_sql_for(sql, conn.dialect.name), params)  # type: ignore[union-attr]


@contextlib.contextmanager
def pipeline(conn: Connection) -> Iterator[None]:
    """On PostgreSQL, psycopg's pipeline mode: writes inside go out without waiting for their
    round trip, and a read waits only for what was sent before it. Only this module's
    functions may run inside (SQLAlchemy's result handling cannot). Elsewhere: no effect."""
    if conn.dialect.name == "postgresql":
        with conn.connection.driver_connection.pipeline():  # type: ignore[union-attr]
            yield
    else:
        yield
