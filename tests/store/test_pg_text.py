"""Text with NUL characters is stored on both databases, through SQLAlchemy and through the
ledger's raw SQL (single values and PostgreSQL's array parameters): PostgreSQL gets U+FFFD
for each NUL, SQLite the text as it is."""

from __future__ import annotations

from sqlalchemy import Engine, insert, select

from switchboard.store import rawsql
from switchboard.store.schema import users


def test_nul_in_text_is_stored_on_both_databases(engine: Engine) -> None:
    nul = "\ufffd" if engine.dialect.name == "postgresql" else "\x00"
    with engine.begin() as conn:
        conn.execute(insert(users).values(email="a\x00b@example.com", plan="free", created_ms=1))
        rawsql.insert_many(conn, users, ("email", "plan", "created_ms"),
                           [{"email": f"r{i}\x00@example.com", "plan": "free\x00", "created_ms": 2} for i in range(2)])
        echoed = rawsql.fetch_one(conn, "SELECT plan FROM users WHERE email = :email", {"email": "r0\x00@example.com"})
    with engine.connect() as conn:
        emails = list(conn.execute(select(users.c.email).order_by(users.c.id)).scalars())
    assert emails == [f"a{nul}b@example.com", f"r0{nul}@example.com", f"r1{nul}@example.com"]
    assert echoed is not None and echoed[0] == f"free{nul}"
