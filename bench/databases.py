"""A fresh PostgreSQL database per benchmark run, so that figures do not depend on how many
rows earlier runs left behind (table and index size, autovacuum)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import psycopg


@contextlib.contextmanager
def fresh_database(url: str | None) -> Iterator[str | None]:
    """For a PostgreSQL URL: create an empty database beside the one named, yield its URL,
    drop it afterwards. Anything else (None: SQLite) is yielded unchanged."""
    if url is None or not url.startswith(("postgresql://", "postgres://")):
        yield url
        return
    base, _, _ = url.rpartition("/")
    name = f"switchboard_bench_{os.getpid()}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
