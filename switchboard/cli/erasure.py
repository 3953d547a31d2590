"""`switchboard users delete EMAIL`: a user's content gone for good, their books kept.

In one transaction: the user's API keys are revoked (every server refuses them within about a
second), their conversations, messages, reminders and stored idempotent responses are deleted,
their data key is destroyed (crypto.KeyRing.destroy: whatever was encrypted under it, in this
database, its backups or anywhere else, can never be decrypted again), and their e-mail and name
are replaced by a pseudonym (`deleted-ID@deleted.invalid`), so the address may sign up afresh.
The ledger, holds, grants, usage records and subscription rows stay, for the books: they hold
amounts, token counts and times, never content.

On SQLite the deletion runs with `secure_delete` (freed space overwritten with zeros) and the
write-ahead log is checkpointed and truncated afterwards, so neither the ciphertexts nor the
wrapped data key linger in the files. Older copies (backups, PostgreSQL's dead rows until
vacuumed) still hold the wrapped key, which only the master key unwraps: rotating the master
key and retiring the previous one (docs/security.md) makes them unreadable too.
"""

from __future__ import annotations

from dataclasses import dataclass

import typer
from rich.markup import escape
from sqlalchemy import Connection, Engine, delete, func, select, update

from switchboard.billing import subscriptions as subs
from switchboard.billing.ledger import now_ms
from switchboard.cli.common import error_line, open_store, out
from switchboard.crypto import KeyRing
from switchboard.store.assistant_schema import conversations, messages, reminders
from switchboard.store.db import is_sqlite
from switchboard.store.schema import api_keys, idempotency_keys, ledger_entries, usage_records, users

DELETED_DOMAIN = "deleted.invalid"  # RFC 2606: can never be a real address


@dataclass(frozen=True, slots=True)
class Erased:
    conversations: int
    messages: int
    reminders: int
    stored_responses: int
    keys_revoked: int
    data_key_destroyed: bool
    ledger_entries_kept: int
    usage_records_kept: int


def pseudonym(user_id: int) -> str:
    return f"deleted-{user_id}@{DELETED_DOMAIN}"


def is_deleted(email: str) -> bool:
    return email.endswith("@" + DELETED_DOMAIN)


def _count(conn: Connection, table, user_id: int) -> int:  # type: ignore[no-untyped-def]
    return int(conn.execute(select(func.count()).select_from(table).where(table.c.user_id == user_id)).scalar_one())


def contents(conn: Connection, user_id: int) -> dict[str, int]:
    """What deleting the user would delete and keep, counted."""
    active_keys = conn.execute(select(func.count()).select_from(api_keys)
                               .where(api_keys.c.user_id == user_id, api_keys.c.revoked_ms.is_(None))).scalar_one()
    return {"conversations": _count(conn, conversations, user_id), "messages": _count(conn, messages, user_id),
            "reminders": _count(conn, reminders, user_id), "stored_responses": _count(conn, idempotency_keys, user_id),
            "active_keys": int(active_keys), "ledger_entries": _count(conn, ledger_entries, user_id),
            "usage_records": _count(conn, usage_records, user_id)}


def erase_user(conn: Connection, keyring: KeyRing, user_id: int) -> Erased:
    """Delete the user's content and destroy their data key, in the caller's transaction."""
    at = now_ms()
    kept = contents(conn, user_id)
    revoked = conn.execute(update(api_keys).where(api_keys.c.user_id == user_id, api_keys.c.revoked_ms.is_(None))
                           .values(revoked_ms=at)).rowcount
    removed = {}
    for name, table in (("reminders", reminders), ("messages", messages), ("conversations", conversations),
                        ("stored_responses", idempotency_keys)):
        removed[name] = conn.execute(delete(table).where(table.c.user_id == user_id)).rowcount
    destroyed = keyring.destroy(conn, user_id)
    conn.execute(update(users).where(users.c.id == user_id).values(email=pseudonym(user_id), name=None, time_zone="UTC"))
    return Erased(removed["conversations"], removed["messages"], removed["reminders"], removed["stored_responses"],
                  revoked, destroyed, kept["ledger_entries"], kept["usage_records"])


def erase(engine: Engine, keyring: KeyRing, user_id: int) -> tuple[Erased, str | None]:
    """`erase_user` in a transaction of its own; on SQLite with freed space zeroed and the
    write-ahead log truncated after. The second value says what could not be scrubbed, if any."""
    sqlite = is_sqlite(str(engine.url))
    with engine.begin() as conn:
        if sqlite:
            conn.exec_driver_sql("PRAGMA secure_delete=ON")
        erased = erase_user(conn, keyring, user_id)
    keyring.forget(user_id)  # again, after the commit
    if not sqlite:
        return erased, None
    raw = engine.raw_connection()  # outside any transaction, as a checkpoint must be
    try:
        busy = raw.driver_connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()  # type: ignore[union-attr]
    finally:
        raw.close()
    if busy is not None and busy[0]:
        return erased, ("the write-ahead log could not be truncated now (a server is reading); "
                        "SQLite does it at its next checkpoint")
    return erased, None


def users_delete(
    email: str,
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete a user for good: revoke their keys, delete their conversations, messages, reminders
    and stored responses, and destroy their data key so nothing they said can ever be read
    again. Their ledger and usage records stay, for the books, under a pseudonym."""
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
    found = store.read(lambda conn: contents(conn, user.id))
    out.print(f"{escape(user.email)} (id {user.id}): {found['conversations']} conversation(s), "
              f"{found['messages']} message(s), {found['reminders']} reminder(s), {found['stored_responses']} stored "
              f"response(s) will be deleted and {found['active_keys']} API key(s) revoked; their data key is "
              f"destroyed. {found['ledger_entries']} ledger entries and {found['usage_records']} usage records stay.",
              soft_wrap=True)
    if not yes:
        typer.confirm(f"Delete {user.email} for good? This cannot be undone", abort=True)
    erased, note = erase(store.engine, keyring, user.id)
    store.engine.dispose()
    out.print(f"deleted {escape(user.email)}: {erased.conversations} conversation(s), {erased.messages} message(s), "
              f"{erased.reminders} reminder(s), {erased.stored_responses} stored response(s); {erased.keys_revoked} "
              f"key(s) revoked; data key destroyed; kept {erased.ledger_entries_kept} ledger entries and "
              f"{erased.usage_records_kept} usage records as user {user.id} ({pseudonym(user.id)})",
              soft_wrap=True, highlight=False)
    if note:
        out.print(f"[yellow]note:[/yellow] {note}", soft_wrap=True)
