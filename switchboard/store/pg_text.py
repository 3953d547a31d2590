"""Text with NUL characters, stored on PostgreSQL.

PostgreSQL's text types cannot hold U+0000, and psycopg refuses such a string ("PostgreSQL
text fields cannot contain NUL (0x00) bytes") when it is sent. Text from outside carries them
now and then (an upstream's error message, a tool's arguments, a webhook's field), and one in
a settlement's usage record failed the whole settlement: a 500, and the hold left active.

So every str sent to PostgreSQL, through SQLAlchemy or the ledger's raw SQL (store.rawsql),
goes through these dumpers, which write U+FFFD (the replacement character) for each NUL:
one place for every statement, parameter and array element. The cost is a Python call per
string parameter instead of psycopg's C dumper (about 0.3 us each, measured). SQLite stores
NUL in text as it is, so it needs nothing.
"""

from __future__ import annotations

from psycopg.types.string import StrBinaryDumper, StrDumper, StrDumperUnknown
from sqlalchemy import Engine, event

REPLACEMENT = "\ufffd"


def _dump(self: StrDumper, obj: str) -> bytes:
    if "\x00" in obj:
        obj = obj.replace("\x00", REPLACEMENT)
    return obj.encode(self._encoding)


class NulFreeStrDumper(StrDumper):
    """str as `text` (where psycopg is asked for the text oid)."""

    dump = _dump  # type: ignore[assignment]


class NulFreeStrDumperUnknown(StrDumperUnknown):
    """str as an untyped literal: psycopg's default for `%s`."""

    dump = _dump  # type: ignore[assignment]


class NulFreeStrBinaryDumper(StrBinaryDumper):
    """str in binary format."""

    dump = _dump  # type: ignore[assignment]


def nul_free_text(engine: Engine) -> None:
    """Register the dumpers on each new connection of a PostgreSQL engine. The order matters
    as in psycopg's own registration: the last one is the default for `%s`."""

    @event.listens_for(engine, "connect")
    def _register(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        adapters = dbapi_connection.adapters
        for dumper in (NulFreeStrBinaryDumper, NulFreeStrDumper, NulFreeStrDumperUnknown):
            adapters.register_dumper(str, dumper)
