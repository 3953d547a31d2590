"""The inbox: every platform message to be answered, recorded before the webhook says 200.

`record` is the deduplication: an INSERT that does nothing when (channel, bot, platform id)
is already there, so the same update delivered twice, to one process or to two at once, is
recorded once and answered once; the second delivery is told it is a duplicate. The text is
stored encrypted under the user's data key. Answering is the worker's: it claims the message
(channels.queue), runs the turn, and in one transaction marks it answered and queues the reply.
Functions take a Connection and run in the caller's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select, update

from switchboard.channels import queue
from switchboard.channels.base import Inbound
from switchboard.crypto import Binding, KeyRing
from switchboard.store.channels_schema import channel_inbox
from switchboard.store.conflict import insert_or_ignore

BUSY = "running"


def _binding(user_id: int, message: Any) -> Binding:
    """Bound to the message's platform key (unique, and known before the row's id)."""
    return Binding(user_id, "channel_inbox", f"{message.channel}:{message.bot_id}:{message.external_id}", "text")


def record(conn: Connection, keyring: KeyRing, message: Inbound, user_id: int | None, at: int, *,
           status: str = "pending") -> bool:
    """Record the message (pending an answer, or `done` when handled at once); False when it
    was recorded before (a platform's retry)."""
    sealed = None
    if user_id is not None and message.text is not None:
        sealed = keyring.encrypt(_binding(user_id, message), message.text.encode("utf-8"))
    return insert_or_ignore(conn, channel_inbox, {
        "channel": message.channel, "bot_id": message.bot_id, "external_id": message.external_id,
        "user_id": user_id, "chat_id": message.chat_id, "chat_key": message.chat_key, "kind": message.kind,
        "text_ct": sealed, "reply_to": message.reply_to, "thread_id": message.thread_id,
        "is_group": message.is_group, "status": status, "received_ms": at,
    }, ["channel", "bot_id", "external_id"]) == 1


@dataclass(slots=True)
class Item:
    """A claimed message, decrypted."""

    id: int
    channel: str
    bot_id: str
    external_id: str
    user_id: int
    chat_id: str
    chat_key: str
    kind: str
    text: str | None
    reply_to: str | None
    thread_id: str | None
    is_group: bool
    attempts: int
    conversation_id: str | None
    mark_message_id: int | None


def load(conn: Connection, keyring: KeyRing, item_id: int) -> Item:
    row = conn.execute(select(channel_inbox).where(channel_inbox.c.id == item_id)).one()
    user_id = int(row.user_id)
    text = None if row.text_ct is None else keyring.decrypt(_binding(user_id, row), bytes(row.text_ct)).decode("utf-8")
    return Item(int(row.id), row.channel, row.bot_id, row.external_id, user_id, row.chat_id, row.chat_key, row.kind,
                text, row.reply_to, row.thread_id, bool(row.is_group), int(row.attempts), row.conversation_id,
                None if row.mark_message_id is None else int(row.mark_message_id))


def waiting(conn: Connection, now: int) -> list[tuple[int, int]]:
    """(id, user id) of the messages this process may claim now (the oldest open one per chat)."""
    return [(int(r.id), int(r.user_id)) for r in queue.heads(conn, channel_inbox, BUSY, now)]


def claim(conn: Connection, item_id: int, me: int, now: int, lease_ms: int) -> bool:
    return queue.claim(conn, channel_inbox, BUSY, item_id, me, now, lease_ms)


def renew(conn: Connection, item_id: int, me: int, until: int) -> bool:
    return queue.renew(conn, channel_inbox, BUSY, item_id, me, until)


def begin_turn(conn: Connection, item_id: int, me: int, conversation_id: str, mark_message_id: int) -> None:
    """Note the conversation and its newest message before the turn (for a takeover to read)."""
    conn.execute(update(channel_inbox).where(channel_inbox.c.id == item_id, channel_inbox.c.claimed_by == me)
                 .values(conversation_id=conversation_id, mark_message_id=mark_message_id))


def answered(conn: Connection, item_id: int, me: int, at: int) -> bool:
    """Mark the message answered, if this process still holds it."""
    return queue.settle(conn, channel_inbox, BUSY, item_id, me, status="answered", answered_ms=at)


def unreadable(conn: Connection, item_id: int, me: int, at: int) -> bool:
    """The message can no longer be read (its user was deleted: their data key is gone): it is
    set aside, never retried, and the chat's next message goes ahead."""
    return queue.settle(conn, channel_inbox, BUSY, item_id, me, status="failed", answered_ms=at)
