"""store.rawsql: on PostgreSQL, statements over many rows are planned at each execution, except
in the ledger's batches, where they keep plans that use the indexes."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from switchboard.store import rawsql
from switchboard.store.schema import users

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


def test_in_a_batch_statements_over_many_rows_keep_a_plan_that_uses_the_indexes(engine: Engine) -> None:
    """In a pipelined transaction (a ledger batch) an update of many rows is kept prepared, and
    the plan it keeps, though made while the table was empty, looks each row up in the key's
    index rather than scanning the table (PostgreSQL picks a hash join over a scan of a small
    table, and a kept plan would go on scanning it as it grew)."""
    if engine.dialect.name != "postgresql":
        pytest.skip("prepared statements are PostgreSQL's")
    rows = [{"id": i, "plan": "free"} for i in (1, 2, 3)]
    with engine.connect() as conn:
        for _ in range(8):  # psycopg prepares a statement on its 5th execution
            with conn.begin(), rawsql.pipelined_transaction(conn):
                rawsql.update_many(conn, users, "id", ("plan",), rows)
        (name,) = rawsql.fetch_one(conn, "SELECT name FROM pg_prepared_statements WHERE statement LIKE 'UPDATE users%'", {})
        rawsql.write(conn, "SET plan_cache_mode = force_generic_plan", {})  # show the plan it keeps
        plan = "\n".join(row[0] for row in rawsql.fetch_all(conn, f"EXPLAIN EXECUTE {name}('{{1,2,3}}', '{{a,b,c}}')", {}))
        conn.rollback()
    assert "Index Scan using pk_users" in plan and "Seq Scan" not in plan, plan
