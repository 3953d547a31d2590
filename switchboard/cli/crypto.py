"""`switchboard crypto ...`: the master key that wraps every user's data key (docs/security.md).

Rotating the master key re-wraps the data keys (one small row per user); the encrypted data
itself is not touched. With the key file (the default) `rotate-master-key` does everything;
with SWITCHBOARD_MASTER_KEY the operator supplies the new key and lists the old one in
SWITCHBOARD_MASTER_KEY_PREVIOUS first (docs/security.md has the procedure). `rotate-master`
is the same command under its first name, kept for scripts.
"""

from __future__ import annotations

import json

import typer
from rich.console import Console
from sqlalchemy import Engine

from switchboard.core.config import Settings, load_settings
from switchboard.crypto import CryptoError, KeyRing, key_file_path, master_key_usage, master_keys_for
from switchboard.crypto.keyring import destroyed_keys
from switchboard.crypto.master import read_key_file, rotate_key_file, write_key_file
from switchboard.store.db import make_engine, read

crypto_app = typer.Typer(help="Encryption at rest: the master key and the users' data keys.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)


def _keyring() -> tuple[Settings, KeyRing]:
    from switchboard.cli.common import require_database

    try:
        settings = load_settings()
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    require_database(settings)  # an existing, migrated database: never a new one here
    return settings, keyring_or_exit(settings, make_engine(settings.resolved_database_url))


def keyring_or_exit(settings: Settings, engine: Engine) -> KeyRing:
    """The key ring for a command, or exit 2 naming what is wrong with the master key."""
    try:
        keys = master_keys_for(settings)
    except (CryptoError, ValueError) as exc:
        err.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    return KeyRing(engine, keys, cache_size=settings.crypto.data_key_cache_size)


def _from_env(keyring: KeyRing) -> bool:
    return keyring.master.key_file is None


def _rewrap(keyring: KeyRing) -> int:
    try:
        return keyring.rewrap()
    except CryptoError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


def _usage(keyring: KeyRing) -> dict[str, int]:
    return read(keyring.engine, master_key_usage)


@crypto_app.command("status")
def status(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Where the master key comes from, its id, and how many data keys each master key wraps."""
    settings, keyring = _keyring()
    info = {
        "source": "environment" if _from_env(keyring) else str(key_file_path(settings)),
        "current": keyring.master.current.id,
        "previous": [kid for kid in keyring.master.ids if kid != keyring.master.current.id],
        "data_keys": _usage(keyring),
        "destroyed_data_keys": read(keyring.engine, destroyed_keys),
    }
    keyring.engine.dispose()
    if as_json:
        out.print_json(json.dumps(info))
        return
    out.print(f"master key {info['current']} (from {info['source']}); previous: {', '.join(info['previous']) or 'none'}")
    for kid, n in sorted(info["data_keys"].items()):
        out.print(f"  {n} data key(s) wrapped by {kid}{' (current)' if kid == info['current'] else ''}")
    if info["destroyed_data_keys"]:
        out.print(f"  {info['destroyed_data_keys']} data key(s) destroyed (deleted users)")


@crypto_app.command("rotate-master-key")
def rotate_master() -> None:
    """Make a new master key current and re-wrap every data key with it (data is not re-encrypted).
    With the key file, the new key is generated here and the old one kept as previous until
    `retire-previous`; with SWITCHBOARD_MASTER_KEY, set the new key there and the old one in
    SWITCHBOARD_MASTER_KEY_PREVIOUS before running this."""
    settings, keyring = _keyring()
    if not _from_env(keyring):
        old = keyring.master.current.id
        keyring.master = rotate_key_file(key_file_path(settings))
        err.print(f"new master key {keyring.master.current.id} in {key_file_path(settings)} (previous: {old})")
    n = _rewrap(keyring)
    left = {kid: c for kid, c in _usage(keyring).items() if kid != keyring.master.current.id}
    keyring.engine.dispose()
    out.print(f"re-wrapped {n} data key(s) with master key {keyring.master.current.id}")
    if left:
        err.print(f"[yellow]still under older keys:[/yellow] {left}; run rotate-master-key again")
        raise typer.Exit(1)
    err.print("once every server runs with the new key, run `switchboard crypto retire-previous`")


crypto_app.command("rotate-master", hidden=True)(rotate_master)  # its first name, kept for scripts


@crypto_app.command("retire-previous")
def retire_previous() -> None:
    """Drop the previous master keys once no data key is wrapped by them (re-wrapping stragglers first)."""
    settings, keyring = _keyring()
    _rewrap(keyring)
    current = keyring.master.current.id
    left = {kid: c for kid, c in _usage(keyring).items() if kid != current}
    keyring.engine.dispose()
    if left:
        err.print(f"[red]error:[/red] data keys are still wrapped by {left}, whose master keys are not configured")
        raise typer.Exit(1)
    if _from_env(keyring):
        out.print(f"no data key needs the previous keys: remove {settings.crypto.previous_master_keys_env}")
        return
    path = key_file_path(settings)
    current_key, previous = read_key_file(path)
    if previous:
        write_key_file(path, current_key)
    out.print(f"retired {len(previous)} previous master key(s); {path} holds only {current}")
