"""Operator commands: `switchboard --help`.

The command groups live beside this module (accounts, billing, books, catalog, crypto); this one
assembles them and keeps the commands that run the service: serve, db, chat, model, demo-setup.
Every command works on the database named by the settings (default: the SQLite file in the
data directory, SWITCHBOARD_DATA_DIR or ~/.local/share/switchboard) wherever it is run.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path
from typing import Optional

import typer

from switchboard.accounts import keys as keys_mod
from switchboard.accounts import users as users_mod
from switchboard.cli import books, catalog
from switchboard.cli.accounts import caps_app, credits_app, keys_app, users_app
from switchboard.cli.assistant import assistant, reminders_app
from switchboard.cli.billing import payments_app, plans, subscription_app
from switchboard.cli.channels import channels_app
from switchboard.cli.common import database_location, err, load, open_store, out, require_database
from switchboard.cli.crypto import crypto_app
from switchboard.cli.erasure import users_delete
from switchboard.cli.memory import memory_app
from switchboard.cli.sandbox import sandbox_app
from switchboard.core.config import Settings
from switchboard.store.db import is_sqlite, make_engine
from switchboard.store.migrate import current_revision, upgrade

app = typer.Typer(help="Switchboard: a metered, OpenAI-compatible AI assistant service.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
model_app = typer.Typer(help="The embedded local model.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(users_app, name="users")
app.add_typer(keys_app, name="keys")
app.add_typer(credits_app, name="credits")
app.add_typer(model_app, name="model")
app.add_typer(books.ledger_app, name="ledger")
app.add_typer(caps_app, name="caps")
app.add_typer(subscription_app, name="subscription")
app.add_typer(crypto_app, name="crypto")
app.add_typer(payments_app, name="payments")
app.add_typer(channels_app, name="channels")
app.add_typer(sandbox_app, name="sandbox")
app.add_typer(memory_app, name="memory")
app.command()(plans)
app.command()(books.balance)
app.command()(books.usage)
app.command("usage-export")(books.usage_export)
app.command()(catalog.models)
app.command()(catalog.route)
app.command()(assistant)
app.add_typer(reminders_app, name="reminders")
users_app.command("delete")(users_delete)


@app.command()
def serve(
    host: Optional[str] = typer.Option(None, help="Interface to listen on (default from config: 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, help="Port (default from config: 8000)."),
    workers: int = typer.Option(1, min=1, help="Server processes sharing the port and the database."),
) -> None:
    """Serve the API (creates or migrates the database first)."""
    import uvicorn

    settings = load()
    _migrate(settings)
    err.print(f"Switchboard on http://{host or settings.host}:{port or settings.port}  (database: "
              f"{database_location(settings.resolved_database_url)})", soft_wrap=True)
    uvicorn.run(
        "switchboard.api.app:app_from_environment", factory=True, host=host or settings.host,
        port=port or settings.port, workers=workers, log_level=settings.log_level, access_log=False,
    )


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create the database, or migrate it to the newest schema."""
    settings = load()
    before, after = _migrate(settings)
    where = database_location(settings.resolved_database_url)
    if before is None:
        made = "created" if is_sqlite(settings.resolved_database_url) else "set up"
        err.print(f"{made} the database at {where} (schema {after})", soft_wrap=True, highlight=False)
    elif before != after:
        err.print(f"migrated the database at {where} from schema {before} to {after}", soft_wrap=True, highlight=False)
    else:
        err.print(f"database is up to date ({where}, schema {after})", soft_wrap=True, highlight=False)


def _migrate(settings: Settings) -> tuple[str | None, str | None]:
    """Migrate (creating the database if need be): the schema revision before and after."""
    engine = make_engine(settings.resolved_database_url)
    try:
        before = current_revision(engine)
        upgrade(engine)
        return before, current_revision(engine)
    finally:
        engine.dispose()


@app.command()
def chat(
    prompt: str,
    model: str = typer.Option("auto", help="A model name from `switchboard models`, or auto."),
    user: Optional[str] = typer.Option(None, help="Whose credits pay (default: the only or the demo user)."),
    max_tokens: Optional[int] = typer.Option(None, min=1, help="Most tokens to generate."),
) -> None:
    """Stream an answer through the metered path, then show tokens, TTFT, tokens/s and credits."""
    from switchboard.cli.chat import run_chat

    settings = load()
    require_database(settings)
    engine = make_engine(settings.resolved_database_url)
    raise typer.Exit(asyncio.run(run_chat(settings, engine, prompt, model, user, max_tokens, out, err)))


@app.command("demo-setup", hidden=True)
def demo_setup(
    host: Optional[str] = typer.Option(None, help="The interface `serve` will listen on."),
    port: Optional[int] = typer.Option(None, help="The port `serve` will listen on."),
) -> None:
    """For `make run`: create a demo user and key when there are no users, printing the key once,
    a request to try for the address the server will listen on, and how to reach the CLI."""
    store = open_store()
    settings = store.settings
    if store.read(users_mod.any_user):
        err.print("users exist already; no demo user created (make keys with `switchboard keys create EMAIL`)")
    else:
        user = store.write(lambda conn: users_mod.create_user(conn, store.ledger, users_mod.DEMO_EMAIL, "free"))
        key = store.write(lambda conn: keys_mod.create_key(conn, user.id, "demo"))
        listen = host or settings.host
        base = f"http://{'127.0.0.1' if listen in ('0.0.0.0', '::', '') else listen}:{port or settings.port}"
        out.print(f"\n[bold]Demo user[/bold] {user.email} (free plan). Its API key, shown only this once:\n")
        out.print(f"    [bold green]{key}[/bold green]\n")
        out.print(f"Try it:\n\n    export KEY={key}\n    curl {base}/v1/chat/completions -H \"Authorization: Bearer $KEY\" "
                  "-H 'Content-Type: application/json' -d '{\"model\":\"auto\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}'\n",
                  soft_wrap=True, markup=False, highlight=False)
    out.print(_cli_hint(settings), soft_wrap=True, markup=False, highlight=False)


def _cli_hint(settings: Settings) -> str:
    """How to run operator commands against this server's database from another terminal."""
    bin_dir = Path(sys.executable).parent
    lines = ["Operator commands (another terminal, in this directory):", ""]
    on_path = shutil.which("switchboard")
    if on_path is None or Path(on_path).resolve().parent != bin_dir.resolve():
        activate = bin_dir / "activate"
        lines.append(f"    source {os.path.relpath(activate) if activate.is_file() else bin_dir}"
                     + ("" if activate.is_file() else "  # add this to your PATH"))
    if "SWITCHBOARD_DATA_DIR" in os.environ and not settings.database_url:
        lines.append(f"    export SWITCHBOARD_DATA_DIR={settings.data_dir.resolve()}")
    lines += ["    switchboard --help", ""]
    return "\n".join(lines)


@model_app.command("prepare")
def model_prepare() -> None:
    """Assemble and verify the embedded model in the data directory (done once)."""
    settings = load()
    if not settings.local_model.enabled:
        err.print("the local model is disabled; nothing to prepare")
        return
    from switchboard.providers.model_asset import ModelAssetError, prepare_weights

    local = settings.local_model
    with err.status("assembling and verifying the local model (first time only)"):
        try:  # the weights the server will load (`local_model.weights`), not always the default
            path, _ = prepare_weights(settings.data_dir / "models", local.weights, local.model_path)
        except ModelAssetError as exc:
            err.print(f"error: {exc}")
            raise typer.Exit(1) from None
    err.print(f"local model ready ({local.weights}): {path}")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
