"""What every operator command shares: the consoles, the settings, and the database it works on.

Every command but `db upgrade` and `serve` (which create or migrate the database) works on an
existing, migrated database and never creates one: run somewhere else, or with other variables,
it says which database it looked for and how to create it, in one line, instead of silently
making an empty `switchboard.db` where it stands.
"""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from sqlalchemy.exc import SQLAlchemyError

from switchboard.accounts import users as users_mod
from switchboard.core.config import Settings, load_settings
from switchboard.core.errors import SwitchboardError
from switchboard.core.money import credits_to_ucr
from switchboard.inference.runtime import make_ledger
from switchboard.store.db import is_sqlite, make_engine, read
from switchboard.store.migrate import current_revision, head_revision
from switchboard.store.runner import TransactionRunner

out = Console()
err = Console(stderr=True)


def load() -> Settings:
    """The settings, or a clean exit (2) naming what is wrong with them."""
    try:
        return load_settings()
    except Exception as exc:  # noqa: BLE001 - configuration errors end the command cleanly
        err.print(f"[red]configuration error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None


def error_line(message: str, code: int = 1) -> NoReturn:
    """One line on stderr (never wrapped: scripts grep it), then exit `code`."""
    err.print(f"[red]error:[/red] {message}", soft_wrap=True, highlight=False)
    raise typer.Exit(code)


def fail(exc: SwitchboardError) -> NoReturn:
    error_line(exc.message)


def sqlite_path(url: str) -> Path | None:
    """The file of a sqlite:///PATH URL (None for an in-memory database)."""
    path = url.removeprefix("sqlite:///")
    return None if not path or path == ":memory:" else Path(path)


def database_location(url: str) -> str:
    """Where the database is, for messages: a SQLite file's path, or PostgreSQL's host/db
    without user or password."""
    if is_sqlite(url):
        path = sqlite_path(url)
        return str(path) if path else "an in-memory SQLite database"
    return url.split("@")[-1]


UPGRADE_HINT = "`switchboard db upgrade`"
WHICH_DATABASE = "(SWITCHBOARD_DATA_DIR or SWITCHBOARD_DATABASE_URL chooses another)"


def require_database(settings: Settings) -> None:
    """Exit 1 with one line unless the database exists and has the newest schema. Creates
    nothing: a SQLite file that is not there is reported, not made."""
    url = settings.resolved_database_url
    where = database_location(url)
    path = sqlite_path(url) if is_sqlite(url) else None
    if path is not None and not path.is_file():
        local = Path("data") / "switchboard.db"  # where `make run` keeps its database
        hint = (f"(./{local} exists: SWITCHBOARD_DATA_DIR=$PWD/data uses it)"
                if local.is_file() and local.resolve() != path.resolve() else WHICH_DATABASE)
        error_line(f"no Switchboard database at {where}; create it with {UPGRADE_HINT} {hint}")
    engine = make_engine(url)
    try:
        revision = current_revision(engine)
    except SQLAlchemyError as exc:
        reason = str(exc.orig if getattr(exc, "orig", None) is not None else exc).strip().splitlines()[0]
        error_line(f"cannot open the database at {where} ({reason}) {WHICH_DATABASE}")
    finally:
        engine.dispose()
    head = head_revision()
    if revision is None:
        error_line(f"the database at {where} has no Switchboard schema; create it with {UPGRADE_HINT}")
    if revision != head:
        error_line(f"the database at {where} has schema {revision}, this Switchboard needs {head}: "
                   f"migrate it with {UPGRADE_HINT} (or run a Switchboard as new as the database)")


class Store:
    """The database, the ledger and the writer for one command, on an existing database."""

    def __init__(self, settings: Settings) -> None:
        require_database(settings)
        self.settings = settings
        self.engine = make_engine(settings.resolved_database_url)
        self.ledger = make_ledger(settings)
        self.runner = TransactionRunner(self.engine)

    def write(self, work: Any) -> Any:
        return self.runner.run_sync(work)

    def read(self, work: Any) -> Any:
        return read(self.engine, work)

    def user(self, email: str) -> users_mod.User:
        """The user with this e-mail, or a clean exit naming the problem."""
        try:
            return self.read(lambda conn: users_mod.find_user(conn, email))
        except SwitchboardError as exc:
            fail(exc)


def open_store() -> Store:
    return Store(load())


def parse_credits(value: str) -> int:
    """A positive credit amount (up to 6 decimals) in micro-credits, or exit 2."""
    try:
        ucr = credits_to_ucr(Decimal(value))
    except (InvalidOperation, ValueError):
        error_line(f"{value!r} is not a credit amount (up to 6 decimals)", 2)
    if ucr <= 0:
        error_line("the amount must be positive", 2)
    return ucr


def utc(ms: int | None, fmt: str = "%Y-%m-%d %H:%M UTC") -> str:
    """A timestamp in milliseconds as UTC text; '-' for none."""
    return "-" if ms is None else datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime(fmt)
