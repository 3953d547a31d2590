"""The outbox: every message to send, recorded before it is sent, delivered in order per chat.

A reply's parts (split at the platform's limit), a reminder, a notice: each a row. The sender
claims a chat's oldest open part (channels.queue: status `sending`, counted as an attempt)
*before* calling the platform, then records what happened:

- accepted: `delivered`, with the platform's message id. Nothing else is ever marked delivered.
- refused for a while (429 with retry_after, 5xx, a timeout): back to `pending`, due again
  after the platform's retry_after or a backoff (base x 2^attempts, capped), whichever is later.
- refused for good, or out of attempts: `failed`, with the error, logged and shown by
  `switchboard channels status`; the text stays in the conversation, where the user finds it.

A part claimed by a process that died mid-send, or whose call timed out after it went out, may
have arrived: it is sent again, but `uncertain`, and its text then says it may be a repeat.
Parts are unique per (conversation message, part): queueing the same reply twice adds nothing.
Functions take a Connection and run in the caller's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, select, update

from switchboard.channels import queue
from switchboard.channels.base import chat_key
from switchboard.crypto import Binding, KeyRing
from switchboard.store.channels_schema import channel_outbox
from switchboard.store.conflict import insert_or_ignore

BUSY = "sending"


@dataclass(slots=True)
class Part:
    """One message to queue."""

    channel: str
    bot_id: str
    chat_id: str
    kind: str  # reply | reminder | notice
    text: str
    user_id: int | None = None  # None: a notice to someone without an account (stored in the clear)
    message_uid: str | None = None
    part: int = 0
    parts: int = 1
    inbox_id: int | None = None
    reply_to: str | None = None
    thread_id: str | None = None

    @property
    def chat_key(self) -> str:
        return chat_key(self.channel, self.bot_id, self.chat_id)


def _binding(user_id: int, row_key: str) -> Binding:
    return Binding(user_id, "channel_outbox", row_key, "text")


def _row_key(channel: str, chat_id: str, message_uid: str | None, part: int, created_ms: int) -> str:
    return f"{channel}:{chat_id}:{message_uid or created_ms}:{part}"


def enqueue(conn: Connection, keyring: KeyRing, parts: list[Part], at: int, *, status: str = "pending",
            error: str | None = None) -> int:
    """Queue the parts (a part of a message already queued is not queued again); how many were new."""
    added = 0
    for p in parts:
        sealed, notice = None, None
        if p.user_id is None:
            notice = p.text
        else:
            sealed = keyring.encrypt(_binding(p.user_id, _row_key(p.channel, p.chat_id, p.message_uid, p.part, at)),
                                     p.text.encode("utf-8"))
        values: dict[str, Any] = {
            "channel": p.channel, "bot_id": p.bot_id, "chat_id": p.chat_id, "chat_key": p.chat_key,
            "user_id": p.user_id, "inbox_id": p.inbox_id, "message_uid": p.message_uid, "part": p.part,
            "parts": p.parts, "kind": p.kind, "text_ct": sealed, "notice": notice, "reply_to": p.reply_to,
            "thread_id": p.thread_id, "status": status, "next_attempt_ms": at, "created_ms": at, "last_error": error,
        }
        if p.message_uid is None:
            conn.execute(channel_outbox.insert().values(**values))
            added += 1
        else:
            added += insert_or_ignore(conn, channel_outbox, values, ["message_uid", "part"])
    return added


@dataclass(slots=True)
class Claimed:
    id: int
    channel: str
    bot_id: str
    chat_id: str  # where it goes now (see destination)
    kind: str
    text: str
    user_id: int | None
    reply_to: str | None
    thread_id: str | None
    attempts: int
    uncertain: bool  # an earlier attempt may have arrived


def due(conn: Connection, now: int) -> list[tuple[int, int]]:
    """(id, user id or 0) of the parts that may be sent now: each chat's oldest open part."""
    return [(int(r.id), int(r.user_id or 0)) for r in queue.heads(conn, channel_outbox, BUSY, now)]


def claim(conn: Connection, part_id: int, me: int, now: int, lease_ms: int) -> bool:
    """Claim the part for sending (counted as an attempt); False if another process has it. A
    part found `sending` (its sender died mid-send) becomes uncertain."""
    before = conn.execute(select(channel_outbox.c.status).where(channel_outbox.c.id == part_id)).scalar_one_or_none()
    if before is None or not queue.claim(conn, channel_outbox, BUSY, part_id, me, now, lease_ms):
        return False
    if before == BUSY:
        conn.execute(update(channel_outbox).where(channel_outbox.c.id == part_id).values(uncertain=True))
    return True


def load(conn: Connection, keyring: KeyRing, part_id: int) -> Claimed:
    """A claimed part, decrypted."""
    row = conn.execute(select(channel_outbox).where(channel_outbox.c.id == part_id)).one()
    if row.user_id is None:
        text = row.notice or ""
    else:
        key = _row_key(row.channel, row.chat_id, row.message_uid, int(row.part), int(row.created_ms))
        text = keyring.decrypt(_binding(int(row.user_id), key), bytes(row.text_ct)).decode("utf-8")
    return Claimed(int(row.id), row.channel, row.bot_id, destination(row), row.kind, text,
                   None if row.user_id is None else int(row.user_id), row.reply_to, row.thread_id,
                   int(row.attempts), bool(row.uncertain))


def destination(row: Any) -> str:
    """Where a part goes: the chat its `chat_key` (channel:bot:chat) names. That is the chat it
    was queued for (`chat_id`, which its text is bound to) unless the chat moved since
    (channels.moves)."""
    prefix = chat_key(row.channel, row.bot_id, "")
    return str(row.chat_key)[len(prefix):] if str(row.chat_key).startswith(prefix) else str(row.chat_id)


def delivered(conn: Connection, part_id: int, me: int, platform_id: str | None, at: int) -> bool:
    return queue.settle(conn, channel_outbox, BUSY, part_id, me, status="delivered", delivered_ms=at,
                        platform_message_id=platform_id, last_error=None)


def retry_later(conn: Connection, part_id: int, me: int, next_ms: int, error: str | None, *, uncertain: bool) -> bool:
    values: dict[str, Any] = {"status": "pending", "next_attempt_ms": next_ms, "last_error": error}
    if uncertain:
        values["uncertain"] = True
    return queue.settle(conn, channel_outbox, BUSY, part_id, me, **values)


def failed(conn: Connection, part_id: int, me: int, error: str | None) -> bool:
    return queue.settle(conn, channel_outbox, BUSY, part_id, me, status="failed", last_error=error)


def failed_later(conn: Connection, platform_id: str, error: str | None) -> int:
    """The platform reported a message it had accepted as failed (WhatsApp statuses)."""
    return conn.execute(update(channel_outbox)
                        .where(channel_outbox.c.platform_message_id == platform_id,
                               channel_outbox.c.status == "delivered")
                        .values(status="failed", last_error=error or "the platform reported it failed")).rowcount


def backoff_ms(attempts: int, base_s: float, max_s: float, retry_after_s: float | None = None) -> int:
    """The wait before the next attempt: base x 2^(attempts-1), capped, and never less than
    what the platform asked for."""
    wait = min(max_s, base_s * (2 ** max(0, attempts - 1)))
    if retry_after_s is not None:
        wait = max(wait, retry_after_s)
    return int(wait * 1000)


def counts(conn: Connection, channel: str) -> dict[str, int]:
    rows = conn.execute(select(channel_outbox.c.status, func.count()).where(channel_outbox.c.channel == channel)
                        .group_by(channel_outbox.c.status)).all()
    return {str(status): int(n) for status, n in rows}
