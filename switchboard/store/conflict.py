"""INSERT ... ON CONFLICT DO NOTHING, for SQLite and PostgreSQL alike."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Table


def insert_or_ignore(conn: Connection, table: Table, values: dict[str, Any], on: list[str]) -> int:
    """Insert the row unless one with the same `on` columns exists (created meanwhile by another
    process, say); the number of rows inserted (0 or 1)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        # psycopg leaves the rowcount of this INSERT at -1 (which is truthy): RETURNING counts it.
        statement = pg_insert(table).values(**values).on_conflict_do_nothing(index_elements=on)
        return len(conn.execute(statement.returning(table.c[on[0]])).all())
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return conn.execute(sqlite_insert(table).values(**values).on_conflict_do_nothing(index_elements=on)).rowcount
