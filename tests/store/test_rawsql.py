"""store.rawsql: statements over many rows are planned at each execution on PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from switchboard.store import rawsql

_USERS = "SELECT id FROM users WHERE id IN ({ids})"


def test_statements_over_many_rows_are_not_kept_prepared(engine: Engine) -> None:
    """A prepared statement's plan is made for the tables as they were: one over many rows,
    planned while a fresh database's tables were empty, went on scanning whole tables. Those
    statements are planned at each execution; a lookup of one row stays prepared."""
    if engine.dialect.name != "postgresql":
        pytest.skip("prepared statements are PostgreSQL's")
    with engine.connect() as conn:
        for _ in range(8):  # psycopg prepares a statement on its 5th execution
            rawsql.fetch_all(conn, *rawsql.select_in(_USERS, ids=[1, 2, 3]))
            rawsql.fetch_all(conn, *rawsql.select_in(_USERS, ids=[1]))
        prepared = [row[0] for row in rawsql.fetch_all(conn, "SELECT statement FROM pg_prepared_statements", {})]
    assert any("IN ($1)" in statement for statement in prepared)
    assert not any("IN ($1, $2, $3)" in statement for statement in prepared)
