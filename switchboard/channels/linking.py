"""Who is talking: platform identities and the one-time codes that link them to accounts.

`switchboard channels link-code EMAIL` makes a code: ten characters of Crockford's base32 (50
random bits), of which only the SHA-256 is stored, valid for `link_code_ttl_s`. The user sends
it from the app (Telegram `/start CODE`, the deep link t.me/BOT?start=CODE; WhatsApp `LINK
CODE`), and one guarded UPDATE (unused, unexpired) uses it up, in the transaction that links
the identity. A sender who gets codes wrong five times in an hour is not heard on codes for the
rest of it (50 bits are not guessed in five tries, but nobody should get to try many).

An identity row also exists for senders without an account: it remembers when they were last
told how to link (at most once per `link_help_interval_s`) and their failed codes.
Functions take a Connection and run in the caller's transaction.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import Connection, or_, select, update

from switchboard.billing.accounts import now_ms
from switchboard.store.channels_schema import channel_identities, channel_link_codes
from switchboard.store.conflict import insert_or_ignore

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford's base32: no I, L, O, U
CODE_LENGTH = 10
MAX_FAILURES = 5
FAILURE_WINDOW_MS = 3600_000


def new_code() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))


def normalise(code: str) -> str:
    """As typed: case, spaces and dashes do not matter; O, I and L read as 0, 1, 1."""
    return code.strip().upper().replace("-", "").replace(" ", "").translate(str.maketrans("OIL", "011"))


def code_hash(code: str) -> str:
    return hashlib.sha256(normalise(code).encode()).hexdigest()


def create_code(conn: Connection, user_id: int, ttl_s: int, *, at: int | None = None) -> str:
    """A fresh code for the user (earlier unused ones stay valid until they expire)."""
    at = now_ms() if at is None else at
    code = new_code()
    conn.execute(channel_link_codes.insert().values(code_hash=code_hash(code), user_id=user_id, created_ms=at,
                                                    expires_ms=at + ttl_s * 1000))
    return code


@dataclass(frozen=True, slots=True)
class CodeCheck:
    status: str  # ok | expired | used | unknown
    user_id: int | None = None


def check_code(conn: Connection, code: str, *, at: int | None = None) -> CodeCheck:
    at = now_ms() if at is None else at
    row = conn.execute(select(channel_link_codes).where(channel_link_codes.c.code_hash == code_hash(code))).first()
    if row is None:
        return CodeCheck("unknown")
    if row.used_ms is not None:
        return CodeCheck("used", int(row.user_id))
    if int(row.expires_ms) <= at:
        return CodeCheck("expired", int(row.user_id))
    return CodeCheck("ok", int(row.user_id))


def use_code(conn: Connection, code: str, by: str, *, at: int | None = None) -> int | None:
    """Use the code up (once, before it expires): its user's id, or None if it cannot be used."""
    at = now_ms() if at is None else at
    hashed = code_hash(code)
    used = conn.execute(update(channel_link_codes)
                        .where(channel_link_codes.c.code_hash == hashed, channel_link_codes.c.used_ms.is_(None),
                               channel_link_codes.c.expires_ms > at)
                        .values(used_ms=at, used_by=by[:130])).rowcount
    if used != 1:
        return None
    return int(conn.execute(select(channel_link_codes.c.user_id)
                            .where(channel_link_codes.c.code_hash == hashed)).scalar_one())


@dataclass(frozen=True, slots=True)
class Identity:
    id: int
    channel: str
    external_user_id: str
    user_id: int | None
    chat_id: str
    last_inbound_ms: int | None


def _identity(row) -> Identity:  # type: ignore[no-untyped-def]
    return Identity(int(row.id), row.channel, row.external_user_id, None if row.user_id is None else int(row.user_id),
                    row.chat_id, None if row.last_inbound_ms is None else int(row.last_inbound_ms))


def find_identity(conn: Connection, channel: str, sender_id: str, alt_id: str | None = None, *,
                  rekey: bool = True) -> Identity | None:
    """The identity of `sender_id`; failing that, one recorded under `alt_id` (a WhatsApp phone
    number from before the webhook carried business-scoped ids), which is then re-keyed (in a
    write transaction: `rekey`)."""
    row = conn.execute(select(channel_identities).where(channel_identities.c.channel == channel,
                                                        channel_identities.c.external_user_id == sender_id)).first()
    if row is None and alt_id:
        row = conn.execute(select(channel_identities).where(
            channel_identities.c.channel == channel,
            or_(channel_identities.c.external_user_id == alt_id, channel_identities.c.alt_user_id == alt_id))).first()
        if rekey and row is not None and row.external_user_id != sender_id:
            conn.execute(update(channel_identities).where(channel_identities.c.id == row.id)
                         .values(external_user_id=sender_id, alt_user_id=alt_id))
    return None if row is None else _identity(row)


def ensure_identity(conn: Connection, channel: str, sender_id: str, chat_id: str, alt_id: str | None = None,
                    *, at: int | None = None) -> Identity:
    """The sender's identity row, created (with no account) if there is none."""
    at = now_ms() if at is None else at
    found = find_identity(conn, channel, sender_id, alt_id)
    if found is not None:
        return found
    insert_or_ignore(conn, channel_identities, {"channel": channel, "external_user_id": sender_id,
                                                "alt_user_id": alt_id, "chat_id": chat_id, "created_ms": at},
                     ["channel", "external_user_id"])
    found = find_identity(conn, channel, sender_id)
    assert found is not None
    return found


def link(conn: Connection, identity: Identity, user_id: int, chat_id: str, *, at: int | None = None) -> None:
    at = now_ms() if at is None else at
    conn.execute(update(channel_identities).where(channel_identities.c.id == identity.id)
                 .values(user_id=user_id, chat_id=chat_id, linked_ms=at, link_failures=0,
                         link_failures_since_ms=None))


def seen(conn: Connection, identity_id: int, chat_id: str, *, at: int | None = None) -> None:
    """A private message from the identity: where to reach them, and when they last wrote."""
    conn.execute(update(channel_identities).where(channel_identities.c.id == identity_id)
                 .values(last_inbound_ms=now_ms() if at is None else at, chat_id=chat_id))


def may_try_code(conn: Connection, identity_id: int, *, at: int | None = None) -> bool:
    at = now_ms() if at is None else at
    row = conn.execute(select(channel_identities.c.link_failures, channel_identities.c.link_failures_since_ms)
                       .where(channel_identities.c.id == identity_id)).one()
    return not (row.link_failures >= MAX_FAILURES and (row.link_failures_since_ms or 0) > at - FAILURE_WINDOW_MS)


def failed_code(conn: Connection, identity_id: int, *, at: int | None = None) -> None:
    at = now_ms() if at is None else at
    row = conn.execute(select(channel_identities.c.link_failures, channel_identities.c.link_failures_since_ms)
                       .where(channel_identities.c.id == identity_id)).one()
    fresh = (row.link_failures_since_ms or 0) <= at - FAILURE_WINDOW_MS
    conn.execute(update(channel_identities).where(channel_identities.c.id == identity_id)
                 .values(link_failures=1 if fresh else row.link_failures + 1,
                         link_failures_since_ms=at if fresh else row.link_failures_since_ms))


def help_due(conn: Connection, identity_id: int, interval_s: float, *, at: int | None = None) -> bool:
    """Whether the sender may be told how to link now (and, if so, that they were): at most
    once per interval, decided by one guarded UPDATE so two processes cannot both say it."""
    at = now_ms() if at is None else at
    return conn.execute(update(channel_identities)
                        .where(channel_identities.c.id == identity_id,
                               or_(channel_identities.c.help_sent_ms.is_(None),
                                   channel_identities.c.help_sent_ms <= at - int(interval_s * 1000)))
                        .values(help_sent_ms=at)).rowcount == 1


def identities_of(conn: Connection, user_id: int) -> list[Identity]:
    rows = conn.execute(select(channel_identities).where(channel_identities.c.user_id == user_id)
                        .order_by(channel_identities.c.id)).all()
    return [_identity(r) for r in rows]


def window_of(conn: Connection, channel: str, chat_id: str) -> int | None:
    """When the identity whose private chat this is last wrote (WhatsApp's 24-hour window)."""
    row = conn.execute(select(channel_identities.c.last_inbound_ms)
                       .where(channel_identities.c.channel == channel, channel_identities.c.chat_id == chat_id)
                       .order_by(channel_identities.c.last_inbound_ms.desc()).limit(1)).first()
    return None if row is None or row.last_inbound_ms is None else int(row.last_inbound_ms)
