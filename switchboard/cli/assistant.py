"""`switchboard assistant EMAIL` and `switchboard reminders ...`: the assistant from the terminal.

Kept light: what they need (the assistant, the runtime, the key ring) is imported when they run,
so that other commands do not pay for it at start-up.
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import typer
from rich.markup import escape
from rich.table import Table

from switchboard.cli.common import err, error_line, fail, load, open_store, out, require_database

reminders_app = typer.Typer(help="The assistant's reminders.", no_args_is_help=True)


def assistant(
    email: str = typer.Argument(..., help="Whose assistant: the user's e-mail (their credits pay)."),
    new: bool = typer.Option(False, "--new", help="Start a new conversation instead of continuing the latest."),
) -> None:
    """Chat with the assistant in the terminal: the user's latest terminal conversation continues
    (--new starts another), answers stream, each turn shows its cost and the credits left, chat
    commands work (/help). Reminders of the user's terminal conversations are delivered while it
    runs. /quit or Ctrl-D leaves."""
    from switchboard.cli.terminal_chat import run_assistant
    from switchboard.store.db import make_engine

    settings = load()
    require_database(settings)
    engine = make_engine(settings.resolved_database_url)
    try:
        code = asyncio.run(run_assistant(settings, engine, email, new, out, err))
    except KeyboardInterrupt:  # Ctrl-C: leave; a turn in progress was cancelled and charged what it produced
        out.print()
        code = 130
    raise typer.Exit(code)


@reminders_app.command("list")
def reminders_list(
    email: str,
    include_all: bool = typer.Option(False, "--all", help="Also the reminders done or cancelled."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output (as GET /v1/reminders)."),
) -> None:
    """A user's reminders: text, next run in their time zone, recurrence, status (--json: also
    the conversation each was set from)."""
    from switchboard.assistant.conversations import Conversations
    from switchboard.assistant.reminders import Reminders
    from switchboard.cli.crypto import keyring_or_exit
    from switchboard.core.errors import SwitchboardError
    from switchboard.crypto import CryptoError

    store = open_store()
    user = store.user(email)
    keyring = keyring_or_exit(store.settings, store.engine)
    reminders = Reminders(keyring, Conversations(keyring))
    try:
        found = store.read(lambda conn: reminders.list(conn, user.id, include_done=include_all))
    except SwitchboardError as exc:  # a reminder that does not decrypt
        fail(exc)
    except CryptoError as exc:  # the user's data key was destroyed, or the master key is not this one
        error_line(str(exc))
    if as_json:
        sys.stdout.write(json.dumps({"object": "list", "data": [r.public() for r in found]}) + "\n")
        return
    table = Table(title=f"reminders of {escape(user.email)}" + (" (all)" if include_all else " (active)"))
    for column in ("id", "text", "next run", "repeats", "status", "runs"):  # conversations: in --json
        table.add_column(column, justify="right" if column == "runs" else "left", no_wrap=column in ("id", "status"))
    for r in found:
        table.add_row(f"rem_{r.id}", escape(r.text), _local(r.next_run_ms, r.time_zone) if r.status == "active" else "-",
                      r.recurrence or "no", r.status, str(r.runs))
    out.print(table if found else f"no {'' if include_all else 'active '}reminders for {escape(user.email)}")


def _local(ms: int, zone: str) -> str:
    """A time in the reminder's time zone, e.g. 2026-12-08 18:00 Europe/Paris."""
    try:
        tz = ZoneInfo(zone)
    except (KeyError, ValueError):
        tz, zone = ZoneInfo("UTC"), "UTC"
    return f"{datetime.fromtimestamp(ms / 1000, timezone.utc).astimezone(tz):%Y-%m-%d %H:%M} {zone}"
