"""Fixed SQL executed straight on the DBAPI connection under a SQLAlchemy transaction.

Why hand-written: the ledger's hold and settle statements run twice per API request. Through
SQLAlchemy Core each costs ~20 us of Python even when prebuilt; on the driver's own cursor
~3 us. That difference is most of the gateway's per-request ledger cost, so the dozen
hot-path statements use this; everything else uses SQLAlchemy.

SQL is written once with `:name` parameters (sqlite3's named style) and rewritten to
`%(name)s` for psycopg. Statements must be portable between SQLite and PostgreSQL; the shapes
for many rows at once (insert_many, update_many, reserve_ids) are built here for each.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import Connection, Engine, Table, event
from sqlalchemy.dialects import postgresql

_IDLE = 0  # libpq's PQTRANS_IDLE: no transaction open
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


# Statements PostgreSQL must plan at every execution rather than keep prepared: a prepared
# statement's generic plan is made for the tables as they were (a fresh database: empty), and
# one that joins or looks up many rows then kept scanning whole tables as they grew (measured:
# 1,376 against 3,541 hold+settle pairs/s over 30,000 pairs, with autovacuum off). These are
# the statements (select_in, select_each, update_many) over more than one row, except inside a
# pipelined transaction (_INDEX_PLANS). A lookup of one row by its key has the same good plan
# at any size.
_PLAN_EACH_TIME: set[str] = set()


def _run(cursor: Any, conn: Connection, sql: str, params: dict[str, Any]) -> None:
    if conn.dialect.name == "postgresql":
        plan_now = sql in _PLAN_EACH_TIME and not conn.connection.info.get(_INDEX_PLANS_ON)
        cursor.execute(_sql_for(sql, "postgresql"), params, prepare=False if plan_now else None)
    else:
        cursor.execute(_sql_for(sql, conn.dialect.name), params)


def execute(conn: Connection, sql: str, params: dict[str, Any]) -> Any:
    """Run one statement whose result is read; returns its own DBAPI cursor (fetchone/fetchall).
    A read needs a cursor of its own: in pipeline mode the answers to earlier writes arrive
    later and would land on a shared one."""
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    _run(cursor, conn, sql, params)
    return cursor


def fetch_one(conn: Connection, sql: str, params: dict[str, Any]) -> Any:
    cursor = execute(conn, sql, params)
    row = cursor.fetchone()
    cursor.close()
    return row


def fetch_all(conn: Connection, sql: str, params: dict[str, Any]) -> list[Any]:
    cursor = execute(conn, sql, params)
    rows = cursor.fetchall()
    cursor.close()
    return rows


def _writer(conn: Connection) -> Any:
    """One cursor per DBAPI connection for statements whose result is not read: making a
    psycopg cursor costs about as much CPU as sending the statement."""
    driver = conn.connection.driver_connection
    info = conn.connection.info
    cursor = info.get("switchboard_writer")
    if cursor is None or cursor.connection is not driver or getattr(cursor, "closed", False):
        cursor = info["switchboard_writer"] = driver.cursor()  # type: ignore[union-attr]
    return cursor


def write(conn: Connection, sql: str, params: dict[str, Any]) -> None:
    """A statement whose result is not read (inside `pipeline` it does not wait for its answer)."""
    _run(_writer(conn), conn, sql, params)


Statement = tuple[str, dict[str, Any]]  # SQL with :name parameters, and the parameters
_built: dict[tuple[Any, ...], str] = {}  # SQL text built for a shape (table, columns, row count...)
# Rows per multi-row statement on SQLite: well under its limit on parameters (32,766).
_MAX_PARAMS = 30_000
_PG = postgresql.dialect()


# Many rows in one statement. SQLite: VALUES lists, a parameter per value. PostgreSQL: one
# array parameter per column, unnested: fixed SQL text whatever the number of rows, so psycopg
# parses it once (it re-parses a statement of more than 50 parameters on every execution,
# measured at a sixth of the ledger writer's time) and the server can keep an insert prepared.
def insert_many(conn: Connection, table: Table, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    """INSERT `rows` in as few statements as the database allows."""
    head = f"INSERT INTO {table.name} ({', '.join(columns)}) "
    if conn.dialect.name == "postgresql":
        text = _cached(("insert", table.name, columns), lambda: head + "SELECT * FROM unnest(" + ", ".join(
            f"CAST(:{c} AS {_pg_type(table, c)}[])" for c in columns) + ")")
        write(conn, text, {c: [row[c] for row in rows] for c in columns})
        return
    for chunk in _chunks(columns, rows):
        text = _cached(("insert", table.name, columns, len(chunk)), lambda n=len(chunk): head + "VALUES " + ", ".join(
            "(" + ", ".join(f":{c}_{i}" for c in columns) + ")" for i in range(n)))
        write(conn, text, _params(columns, chunk))


def update_many(conn: Connection, table: Table, key: str, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    """Set `columns` of each row found by its `key` column to the values in `rows`."""
    every = (key, *columns)
    if len(rows) == 1:
        text = _cached(("update", table.name, every), lambda: f"UPDATE {table.name} SET " + ", ".join(
            f"{c} = :{c}_0" for c in columns) + f" WHERE {key} = :{key}_0")
        write(conn, text, _params(every, rows))
        return
    if conn.dialect.name == "postgresql":
        sets = ", ".join(f"{c} = v.{c}" for c in columns)
        text = _cached(("update", table.name, every, "pg"), lambda: f"UPDATE {table.name} SET {sets} FROM unnest(" + ", ".join(
            f"CAST(:{c} AS {_pg_type(table, c)}[])" for c in every) + f") AS v({', '.join(every)}) "
            f"WHERE {table.name}.{key} = v.{key}", plan_each_time=True)
        write(conn, text, {c: [row[c] for row in rows] for c in every})
        return
    # SQLite: UPDATE ... FROM (VALUES ...), whose columns are column1, column2...
    for chunk in _chunks(every, rows):
        text = _cached(("update", table.name, every, len(chunk)), lambda n=len(chunk): (
            f"UPDATE {table.name} SET " + ", ".join(f"{c} = v.column{i}" for i, c in enumerate(columns, start=2))
            + " FROM (VALUES " + ", ".join("(" + ", ".join(f":{c}_{i}" for c in every) + ")" for i in range(n))
            + f") AS v WHERE {table.name}.{key} = v.column1"))
        write(conn, text, _params(every, chunk))


def reserve_ids(conn: Connection, table: Table, count: int) -> Statement:
    """A query of `count` new ids for `table`'s rows, to insert with them: on PostgreSQL from
    the id's sequence (unused ones are a gap, as after any rollback); on SQLite the ones after
    the largest, which no one else can take first (a writer holds the database's lock)."""
    if conn.dialect.name == "postgresql":
        text = _cached(("ids", table.name, "pg"), lambda: (
            f"SELECT nextval(pg_get_serial_sequence('{table.name}', 'id')) FROM generate_series(1, :count)"))
    else:
        text = _cached(("ids", table.name), lambda: (
            "WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < :count) "
            f"SELECT (SELECT COALESCE(MAX(id), 0) FROM {table.name}) + i FROM k"))
    return text, {"count": count}


def select_in(sql: str, **lists: list[Any]) -> Statement:
    """`sql` with each `{name}` replaced by one parameter per value of the list `name`. (Not
    PostgreSQL's `= ANY` of an array: its generic plan for `user_id = ANY($1) AND request_id =
    ANY($2)` scanned all of a user's holds, measured 0.2 ms more per hold and settlement.)"""
    cache_key = ("in", sql, *((name, len(values)) for name, values in lists.items()))
    text = _cached(cache_key, lambda: sql.format(**{
        name: ", ".join(f":{name}_{i}" for i in range(len(values))) for name, values in lists.items()
    }), plan_each_time=any(len(values) > 1 for values in lists.values()))
    return text, {f"{name}_{i}": value for name, values in lists.items() for i, value in enumerate(values)}


def select_each(sql: str, rows: list[dict[str, Any]]) -> Statement:
    """`sql` (with :name parameters) once per row of parameters, UNION ALL: each an exact
    lookup, planned as one whatever the database knows of the values."""
    names = tuple(rows[0])
    text = _cached(("each", sql, len(rows)), lambda: " UNION ALL ".join(
        _NAMED.sub(lambda m: f":{m.group(1)}_{i}", sql) for i in range(len(rows))), plan_each_time=len(rows) > 1)
    return text, _params(names, rows)


def _cached(key: tuple[Any, ...], build: Callable[[], str], *, plan_each_time: bool = False) -> str:
    text = _built.get(key)
    if text is None:
        text = _built[key] = build()
        if plan_each_time:
            _PLAN_EACH_TIME.add(text)
    return text


def _pg_type(table: Table, column: str) -> str:
    return str(table.c[column].type.compile(dialect=_PG))


def _params(columns: tuple[str, ...], rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {f"{c}_{i}": row[c] for i, row in enumerate(rows) for c in columns}


def _chunks(columns: tuple[str, ...], rows: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    size = max(1, _MAX_PARAMS // len(columns))
    for start in range(0, len(rows), size):
        yield rows[start:start + size]


def in_pipeline(dbapi_connection: Any) -> bool:
    """Whether a psycopg connection is in pipeline mode (never true for sqlite3)."""
    pgconn = getattr(dbapi_connection, "pgconn", None)
    return pgconn is not None and pgconn.pipeline_status != 0


@contextlib.contextmanager
def pipeline(conn: Connection) -> Iterator[None]:
    """On PostgreSQL, psycopg's pipeline mode: writes inside go out without waiting for their
    round trip, and a read waits only for what was sent before it. Only this module's
    functions may run inside (SQLAlchemy's result handling cannot; `guard_pipeline` makes
    trying an error). Inside a pipeline already: no new one, since leaving a nested pipeline
    waits for everything sent. Elsewhere: no effect."""
    driver = conn.connection.driver_connection
    if conn.dialect.name == "postgresql" and not in_pipeline(driver):
        with driver.pipeline():  # type: ignore[union-attr]
            yield
    else:
        yield


# In a pipelined transaction (the ledger's batches: every statement finds its rows by a key)
# the planner is told to use indexes whatever its statistics say, and prepared statements keep
# their generic plan: the statements of _PLAN_EACH_TIME can then stay prepared too, since their
# plan no longer depends on how big the tables were when it was made. Planning each of them at
# every execution had been a sixth of PostgreSQL's CPU. The settings end with the transaction.
# (A statement is only prepared by psycopg after a few executions of the same text, here;
# elsewhere those statements are still planned at each execution, so that no plan made
# without these settings is kept.)
_INDEX_PLANS = ("SELECT set_config('enable_seqscan', 'off', true), set_config('enable_hashjoin', 'off', true), "
                "set_config('enable_mergejoin', 'off', true), set_config('plan_cache_mode', 'force_generic_plan', true)")
_INDEX_PLANS_ON = "switchboard_index_plans"


@contextlib.contextmanager
def pipelined_transaction(conn: Connection, committing: Callable[[], None] | None = None) -> Iterator[None]:
    """Inside a SQLAlchemy transaction that has sent nothing yet: on PostgreSQL, run the block
    in pipeline mode with BEGIN sent together with its first statements and COMMIT together
    with its last. Left to itself, psycopg sends BEGIN and waits for it before the first
    statement, and COMMIT after the last, two round trips of a batch's four (store.runner).
    The driver is in autocommit mode meanwhile, so that it sends no BEGIN of its own; the
    enclosing SQLAlchemy transaction then finds nothing left to commit or roll back.
    `committing` is called once the COMMIT is queued, before its answer is awaited (the
    runner's relay starts the next batch then). Elsewhere (SQLite, a transaction already
    begun): just the block."""
    driver = conn.connection.driver_connection
    pgconn = getattr(driver, "pgconn", None)
    if pgconn is None or pgconn.transaction_status != _IDLE or in_pipeline(driver):
        yield
        return
    driver.autocommit = True  # type: ignore[union-attr]
    try:
        with driver.pipeline():  # type: ignore[union-attr]
            _writer(conn).execute("BEGIN", prepare=False)
            _writer(conn).execute(_INDEX_PLANS)
            conn.connection.info[_INDEX_PLANS_ON] = True
            yield
            _writer(conn).execute("COMMIT", prepare=False)
            if committing is not None:  # psycopg sends the queued COMMIT right after, on the sync
                committing()
    finally:
        conn.connection.info.pop(_INDEX_PLANS_ON, None)
        if not driver.closed:  # type: ignore[union-attr]
            if pgconn.transaction_status != _IDLE:  # failed part-way: roll back what was begun
                driver.rollback()  # type: ignore[union-attr]
            driver.autocommit = False  # type: ignore[union-attr]


def guard_pipeline(engine: Engine) -> None:
    """Refuse SQLAlchemy statements in pipeline mode: they would silently see no rows."""

    @event.listens_for(engine, "before_cursor_execute")
    def _refuse(conn: Connection, *_args: Any) -> None:
        if in_pipeline(conn.connection.driver_connection):
            raise RuntimeError("a SQLAlchemy statement ran in pipeline mode; use store.rawsql there")
