"""Conversations and their messages, stored encrypted (switchboard.crypto).

Every read and write is scoped by user: a conversation id of another user is "not found",
exactly like one that does not exist. Content, titles, tool calls and summaries are encrypted
under the user's data key, each bound to (user, table, row uid, field), so a ciphertext copied to
another row or user does not decrypt: reading it fails with ContentUnreadable (an error, never
another row's content). Functions take a Connection and run in the caller's transaction; they do
blocking I/O and are called from worker threads.
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Integer, Select, and_, bindparam, delete, insert, or_, select, update

from switchboard.core.errors import NotFound, SwitchboardError
from switchboard.crypto import Binding, CryptoError, KeyRing
from switchboard.store.assistant_schema import conversations, messages, reminders
from switchboard.billing.accounts import now_ms

log = logging.getLogger(__name__)

CHANNELS = ("api", "web", "cli", "telegram", "whatsapp", "discord")


class ContentUnreadable(SwitchboardError):
    """Stored content that does not decrypt: altered, or copied from another row or user (or
    the user's data key is gone). The database is damaged, not the request: a 500 that says so."""

    status = 500
    type = "server_error"
    code = "content_unreadable"

    @classmethod
    def of(cls, what: str, where: str, exc: CryptoError) -> ContentUnreadable:
        log.error("stored %s of %s does not decrypt: %s", what, where, exc)
        return cls(f"The stored {what} of {where} cannot be decrypted: it was altered or damaged in storage. "
                   f"Nothing of it can be shown.")


# The statements every turn runs, built once: building one (`insert(...).values(...)`, a WHERE
# clause) and finding its cached compiled form cost more than executing it on SQLite.
_ADD_MESSAGE = insert(messages)
_TOUCH = update(conversations).where(conversations.c.id == bindparam("conv_id")).values(
    updated_ms=bindparam("at"))
_GET = select(conversations).where(conversations.c.id == bindparam("conv_id"),
                                   conversations.c.user_id == bindparam("user_id"))


@lru_cache(maxsize=None)
def _messages_query(after: bool, limit: bool, newest: bool) -> Select[Any]:
    query = select(messages).where(messages.c.conversation_id == bindparam("conv_id"),
                                   messages.c.user_id == bindparam("user_id"))
    if after:
        query = query.where(messages.c.id > bindparam("after"))
    query = query.order_by(messages.c.id.desc() if newest else messages.c.id)
    return query.limit(bindparam("limit", type_=Integer)) if limit else query


def new_uid(prefix: str) -> str:
    """A public id: the prefix and 24 random hex characters (not guessable, reveals no count)."""
    return f"{prefix}_{secrets.token_hex(12)}"


@dataclass(slots=True)
class Conversation:
    id: str
    user_id: int
    channel: str
    external_chat_id: str | None
    title: str | None
    model: str | None
    created_ms: int
    updated_ms: int
    summary: str | None = None
    summary_upto: int | None = None


@dataclass(slots=True)
class Message:
    id: int  # order within the conversation; the cursor of pagination
    uid: str
    conversation_id: str
    role: str
    kind: str
    content: str | None
    created_ms: int
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    name: str | None = None
    model: str | None = None
    request_ids: list[str] = field(default_factory=list)
    credits_ucr: int = 0


class Conversations:
    """Reads and writes conversations and messages for one key ring."""

    def __init__(self, keyring: KeyRing) -> None:
        self.keyring = keyring

    # -- encryption -------------------------------------------------------------------------
    def _seal(self, user_id: int, table: str, row: str, name: str, value: str | None) -> bytes | None:
        if value is None:
            return None
        return self.keyring.encrypt(Binding(user_id, table, row, name), value.encode("utf-8"))

    def _open(self, user_id: int, table: str, row: str, name: str, blob: bytes | None) -> str | None:
        if blob is None:
            return None
        try:
            return self.keyring.decrypt(Binding(user_id, table, row, name), bytes(blob)).decode("utf-8")
        except CryptoError as exc:
            raise ContentUnreadable.of(name.replace("_", " "), row, exc) from None

    # -- conversations ----------------------------------------------------------------------
    def create(self, conn: Connection, user_id: int, *, channel: str = "api", title: str | None = None,
               external_chat_id: str | None = None) -> Conversation:
        if channel not in CHANNELS:
            raise ValueError(f"unknown channel {channel!r}")
        conv_id = new_uid("conv")
        at = now_ms()
        conn.execute(insert(conversations).values(
            id=conv_id, user_id=user_id, channel=channel, external_chat_id=external_chat_id,
            title_ct=self._seal(user_id, "conversations", conv_id, "title", title), created_ms=at, updated_ms=at,
        ))
        return Conversation(conv_id, user_id, channel, external_chat_id, title, None, at, at)

    def _conversation(self, row: Any) -> Conversation:
        user_id = int(row.user_id)
        return Conversation(
            row.id, user_id, row.channel, row.external_chat_id,
            self._open(user_id, "conversations", row.id, "title", row.title_ct), row.model,
            int(row.created_ms), int(row.updated_ms),
            self._open(user_id, "conversations", row.id, "summary", row.summary_ct), row.summary_upto,
        )

    def get(self, conn: Connection, user_id: int, conv_id: str) -> Conversation:
        row = conn.execute(_GET, {"conv_id": conv_id, "user_id": user_id}).first()
        if row is None:
            raise NotFound(f"No conversation found with id '{conv_id}'.", param="conversation_id")
        return self._conversation(row)

    def latest(self, conn: Connection, user_id: int, channel: str, external_chat_id: str | None = None
               ) -> Conversation | None:
        """The user's most recently active conversation on `channel` (and that chat)."""
        query = select(conversations).where(conversations.c.user_id == user_id, conversations.c.channel == channel)
        if external_chat_id is not None:
            query = query.where(conversations.c.external_chat_id == external_chat_id)
        row = conn.execute(query.order_by(conversations.c.updated_ms.desc(), conversations.c.id.desc()).limit(1)).first()
        return None if row is None else self._conversation(row)

    def page(self, conn: Connection, user_id: int, *, limit: int, after: str | None = None) -> list[Conversation]:
        """The user's conversations, newest first, `limit` of them after the conversation `after`."""
        query = select(conversations).where(conversations.c.user_id == user_id)
        if after is not None:
            mark = conn.execute(select(conversations.c.created_ms).where(
                conversations.c.id == after, conversations.c.user_id == user_id)).first()
            if mark is None:
                raise NotFound(f"No conversation found with id '{after}'.", param="after")
            query = query.where(or_(conversations.c.created_ms < mark.created_ms,
                                    and_(conversations.c.created_ms == mark.created_ms, conversations.c.id < after)))
        rows = conn.execute(query.order_by(conversations.c.created_ms.desc(), conversations.c.id.desc())
                            .limit(limit)).all()
        return [self._conversation(row) for row in rows]

    def set_model(self, conn: Connection, user_id: int, conv_id: str, model: str | None) -> None:
        conn.execute(update(conversations).where(conversations.c.id == conv_id, conversations.c.user_id == user_id)
                     .values(model=model))

    def set_title(self, conn: Connection, user_id: int, conv_id: str, title: str) -> None:
        conn.execute(update(conversations).where(conversations.c.id == conv_id, conversations.c.user_id == user_id)
                     .values(title_ct=self._seal(user_id, "conversations", conv_id, "title", title)))

    def set_summary(self, conn: Connection, user_id: int, conv_id: str, summary: str, upto: int) -> None:
        conn.execute(update(conversations).where(conversations.c.id == conv_id, conversations.c.user_id == user_id)
                     .values(summary_ct=self._seal(user_id, "conversations", conv_id, "summary", summary),
                             summary_upto=upto))

    def touch(self, conn: Connection, user_id: int, conv_id: str) -> None:
        """Make the conversation the user's most recently active one."""
        conn.execute(update(conversations).where(conversations.c.id == conv_id, conversations.c.user_id == user_id)
                     .values(updated_ms=now_ms() + 1))

    def delete(self, conn: Connection, user_id: int, conv_id: str) -> None:
        """The conversation, its messages and its reminders, gone for good."""
        self.get(conn, user_id, conv_id)  # NotFound for another user's id
        conn.execute(delete(reminders).where(reminders.c.conversation_id == conv_id, reminders.c.user_id == user_id))
        conn.execute(delete(messages).where(messages.c.conversation_id == conv_id, messages.c.user_id == user_id))
        conn.execute(delete(conversations).where(conversations.c.id == conv_id, conversations.c.user_id == user_id))

    # -- messages ---------------------------------------------------------------------------
    def add_message(self, conn: Connection, user_id: int, conv_id: str, *, role: str, kind: str = "text",
                    content: str | None, tool_calls: list[dict[str, Any]] | None = None,
                    tool_call_id: str | None = None, name: str | None = None, model: str | None = None,
                    request_ids: list[str] | None = None, credits_ucr: int = 0, at: int | None = None,
                    uid: str | None = None) -> Message:
        uid = uid or new_uid("msg")
        at = now_ms() if at is None else at
        calls_json = json.dumps(tool_calls, separators=(",", ":")) if tool_calls else None
        result = conn.execute(_ADD_MESSAGE, dict(
            uid=uid, conversation_id=conv_id, user_id=user_id, role=role, kind=kind,
            content_ct=self._seal(user_id, "messages", uid, "content", content),
            tool_calls_ct=self._seal(user_id, "messages", uid, "tool_calls", calls_json),
            tool_call_id=tool_call_id, name=name, model=model,
            request_ids=json.dumps(request_ids) if request_ids else None, credits_ucr=credits_ucr, created_ms=at,
        ))
        conn.execute(_TOUCH, {"conv_id": conv_id, "at": at})
        return Message(int(result.inserted_primary_key[0]), uid, conv_id, role, kind, content, at, tool_calls,
                       tool_call_id, name, model, list(request_ids or ()), credits_ucr)

    def message_by_uid(self, conn: Connection, user_id: int, conv_id: str, uid: str) -> Message | None:
        """The message `uid` of this user's conversation, if it was stored."""
        row = conn.execute(select(messages).where(messages.c.uid == uid, messages.c.user_id == user_id,
                                                  messages.c.conversation_id == conv_id)).first()
        return None if row is None else self._message(row)

    def _message(self, row: Any) -> Message:
        user_id = int(row.user_id)
        calls = self._open(user_id, "messages", row.uid, "tool_calls", row.tool_calls_ct)
        return Message(
            int(row.id), row.uid, row.conversation_id, row.role, row.kind,
            self._open(user_id, "messages", row.uid, "content", row.content_ct), int(row.created_ms),
            json.loads(calls) if calls else None, row.tool_call_id, row.name, row.model,
            json.loads(row.request_ids) if row.request_ids else [], int(row.credits_ucr),
        )

    def messages(self, conn: Connection, user_id: int, conv_id: str, *, after: int | None = None,
                 limit: int | None = None, newest: bool = False) -> list[Message]:
        """Messages oldest first (after the message id `after`), or the newest `limit` ones, in order."""
        query = _messages_query(after is not None, limit is not None, newest)
        found = [self._message(row) for row in conn.execute(query, {
            "conv_id": conv_id, "user_id": user_id, "after": after, "limit": limit})]
        return found[::-1] if newest else found

    def message_id_of(self, conn: Connection, user_id: int, conv_id: str, uid: str) -> int:
        row = conn.execute(select(messages.c.id).where(messages.c.uid == uid, messages.c.user_id == user_id,
                                                       messages.c.conversation_id == conv_id)).first()
        if row is None:
            raise NotFound(f"No message found with id '{uid}'.", param="after")
        return int(row.id)
