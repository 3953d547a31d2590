"""`switchboard users delete EMAIL`: a user's content gone for good, their books kept.

In one transaction: the user's API keys are revoked (every server refuses them within about a
second) and their channel identities unlinked and deleted (a Telegram or WhatsApp account no
longer reaches them); everything they said or were told is deleted: conversations, messages,
reminders, memories, stored idempotent responses, channel messages received and queued; their
data key is destroyed (crypto.KeyRing.destroy: whatever was encrypted under it, in this
database, its backups or anywhere else, can never be decrypted again); their e-mail and name
are replaced by a pseudonym (`deleted-ID@deleted.invalid`), so the address may sign up afresh.
Then their sandbox workspace (files on disk, not encrypted) is removed. The ledger, holds,
grants, usage records and subscription rows stay, for the books: they hold amounts, token
counts and times, never content.

On SQLite the deletion runs with `secure_delete` (freed space overwritten with zeros) and the
write-ahead log is checkpointed and truncated afterwards, so neither the ciphertexts nor the
wrapped data key linger in the files. Older copies (backups, PostgreSQL's dead rows until
vacuumed) still hold the wrapped key, which only the master key unwraps: rotating the master
key and retiring the previous one (docs/security.md) makes them unreadable too.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import typer
from rich.markup import escape
from sqlalchemy import Connection, Engine, Table, delete, func, select, update

from switchboard.billing import subscriptions as subs
from switchboard.billing.ledger import now_ms
from switchboard.cli.common import error_line, open_store, out
from switchboard.core.config import Settings
from switchboard.crypto import KeyRing
from switchboard.memory.store import MemoryStore
from switchboard.store.assistant_schema import conversations, messages, reminders
from switchboard.store.channels_schema import channel_identities, channel_inbox, channel_link_codes, channel_outbox
from switchboard.store.db import is_sqlite
from switchboard.store.memory_schema import memories, memory_extraction_marks
from switchboard.store.schema import api_keys, idempotency_keys, ledger_entries, usage_records, users

DELETED_DOMAIN = "deleted.invalid"  # RFC 2606: can never be a real address

# What is deleted, in this order (what refers to a row before the row), as (label, table).
# Memories are deleted through MemoryStore, which also tells every server's index to rebuild.
CONTENT: list[tuple[str, Table]] = [
    ("channel messages queued", channel_outbox), ("channel messages received", channel_inbox),
    ("channel link codes", channel_link_codes), ("channel identities", channel_identities),
    ("memory extraction marks", memory_extraction_marks), ("reminders", reminders), ("messages", messages),
    ("conversations", conversations), ("stored responses", idempotency_keys),
]
KEPT: list[tuple[str, Table]] = [("ledger entries", ledger_entries), ("usage records", usage_records)]


@dataclass(slots=True)
class Erased:
    deleted: dict[str, int] = field(default_factory=dict)  # label -> rows
    keys_revoked: int = 0
    data_key_destroyed: bool = False
    kept: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what could not be scrubbed, if anything

    def summary(self) -> str:
        done = ", ".join(f"{n} {label}" for label, n in self.deleted.items() if n) or "no content"
        kept = " and ".join(f"{n} {label}" for label, n in self.kept.items())
        return f"{done}; {self.keys_revoked} API key(s) revoked; data key destroyed; kept {kept}"


def pseudonym(user_id: int) -> str:
    return f"deleted-{user_id}@{DELETED_DOMAIN}"


def is_deleted(email: str) -> bool:
    return email.endswith("@" + DELETED_DOMAIN)


def _count(conn: Connection, table: Table, user_id: int) -> int:
    return int(conn.execute(select(func.count()).select_from(table).where(table.c.user_id == user_id)).scalar_one())


def contents(conn: Connection, user_id: int) -> tuple[dict[str, int], dict[str, int]]:
    """What deleting the user would delete (label -> rows, active API keys included) and keep."""
    doomed = {label: _count(conn, table, user_id) for label, table in [("memories", memories), *CONTENT]}
    doomed["active API keys"] = int(conn.execute(select(func.count()).select_from(api_keys).where(
        api_keys.c.user_id == user_id, api_keys.c.revoked_ms.is_(None))).scalar_one())
    return doomed, {label: _count(conn, table, user_id) for label, table in KEPT}


def erase_user(conn: Connection, keyring: KeyRing, user_id: int) -> Erased:
    """Delete the user's content and destroy their data key, in the caller's transaction."""
    at = now_ms()
    erased = Erased(kept=contents(conn, user_id)[1])
    erased.keys_revoked = conn.execute(update(api_keys).where(api_keys.c.user_id == user_id,
                                                              api_keys.c.revoked_ms.is_(None))
                                       .values(revoked_ms=at)).rowcount
    erased.deleted["memories"] = MemoryStore(keyring).delete_all(conn, user_id, at)
    for label, table in CONTENT:
        erased.deleted[label] = conn.execute(delete(table).where(table.c.user_id == user_id)).rowcount
    erased.data_key_destroyed = keyring.destroy(conn, user_id)
    conn.execute(update(users).where(users.c.id == user_id).values(email=pseudonym(user_id), name=None, time_zone="UTC"))
    return erased


def erase(engine: Engine, keyring: KeyRing, user_id: int) -> Erased:
    """`erase_user` in a transaction of its own; on SQLite with freed space zeroed and the
    write-ahead log truncated after."""
    sqlite = is_sqlite(str(engine.url))
    with engine.begin() as conn:
        if sqlite:
            conn.exec_driver_sql("PRAGMA secure_delete=ON")
        erased = erase_user(conn, keyring, user_id)
    keyring.forget(user_id)  # again, after the commit
    if sqlite:
        raw = engine.raw_connection()  # outside any transaction, as a checkpoint must be
        try:
            busy = raw.driver_connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()  # type: ignore[union-attr]
        finally:
            raw.close()
        if busy is not None and busy[0]:
            erased.notes.append("the write-ahead log could not be truncated now (a server is reading); "
                                "SQLite does it at its next checkpoint")
    return erased


def remove_sandbox_files(settings: Settings, user_id: int) -> list[str]:
    """Remove the user's sandbox workspace and run state (sandbox.manager's layout); what could
    not be removed. shutil.rmtree does not follow the symbolic links a sandbox may have planted."""
    root = Path(settings.sandbox.root or settings.data_dir / "sandbox")
    left = []
    for path in (root / "workspaces" / f"u{user_id}", root / "run" / f"u{user_id}", root / "state" / f"u{user_id}.json"):
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
        except OSError as exc:
            left.append(f"could not remove {path}: {exc.strerror or exc}")
    return left


def users_delete(
    email: str,
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete a user for good: revoke their keys and unlink their chat accounts, delete their
    conversations, reminders, memories, stored responses and sandbox files, and destroy their
    data key so nothing they said can ever be read again. Their ledger and usage records stay,
    for the books, under a pseudonym."""
    from switchboard.cli.crypto import keyring_or_exit

    store = open_store()
    user = store.user(email)
    if is_deleted(user.email):
        error_line(f"{user.email} is a user that was deleted already")
    sub = store.read(lambda conn: subs.get(conn, user.id))
    if subs.billed_by_stripe(sub) and sub is not None and not sub.cancel_at_period_end:
        error_line(f"{user.email} has a paid subscription that Stripe still bills ({sub.stripe_subscription_id}): "
                   f"cancel it first with `switchboard subscription change {user.email} free`, then delete")
    keyring = keyring_or_exit(store.settings, store.engine)
    doomed, kept = store.read(lambda conn: contents(conn, user.id))
    listed = ", ".join(f"{n} {label}" for label, n in doomed.items() if n) or "no content"
    out.print(f"{escape(user.email)} (id {user.id}): {escape(listed)} will be deleted or revoked, the sandbox files "
              f"removed and the data key destroyed; {kept['ledger entries']} ledger entries and "
              f"{kept['usage records']} usage records stay.", soft_wrap=True, highlight=False)
    if not yes:
        typer.confirm(f"Delete {user.email} for good? This cannot be undone", abort=True)
    erased = erase(store.engine, keyring, user.id)
    store.engine.dispose()
    erased.notes += remove_sandbox_files(store.settings, user.id)
    out.print(f"deleted {escape(user.email)}: {escape(erased.summary())}, as user {user.id} ({pseudonym(user.id)})",
              soft_wrap=True, highlight=False)
    for note in erased.notes:
        out.print(f"[yellow]note:[/yellow] {escape(note)}", soft_wrap=True)
