"""Reminders delivered through the channel of the conversation they were set in.

The assistant's scheduler writes each due reminder's message into its conversation, exactly
once across processes (assistant.reminders). Here those messages are found and queued for the
conversation's chat: by the scheduler's `on_delivered` hook at once in the process that
delivered it, and by a sweep of the reminder messages written since the last one (a watermark
in `channel_state`), so that a reminder written by a process that died before its hook ran is
still sent. Queueing is unique per message, so the two never send it twice.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, func, select, update

from switchboard.assistant.conversations import Message
from switchboard.billing.accounts import now_ms
from switchboard.channels import outbox
from switchboard.channels.outbox import Part
from switchboard.crypto import CryptoError
from switchboard.store.assistant_schema import conversations, messages
from switchboard.store.channels_schema import channel_state
from switchboard.store.conflict import insert_or_ignore
from switchboard.store.db import read

if TYPE_CHECKING:
    from switchboard.channels.hub import ChannelHub

STATE_ROW = "*reminders"
SETTLE_MS = 30_000  # messages older than this are committed (ids can commit out of order on PostgreSQL)
BATCH = 200


class ReminderFeed:
    def __init__(self, hub: ChannelHub) -> None:
        self.hub = hub
        self.event = asyncio.Event()

    async def on_delivered(self, message: Message) -> None:
        """The scheduler's hook: look now rather than at the next sweep."""
        if message.kind == "reminder":
            self.event.set()

    async def sweep(self) -> int:
        """Queue the reminder messages of channel conversations written since the watermark."""
        hub = self.hub
        names = list(hub.adapters)
        if not names:
            return 0
        at = now_ms()
        mark, found = await asyncio.to_thread(read, hub.runtime.engine, lambda c: _scan(c, names, at))
        queued = 0
        for row in found:
            try:
                queued += await self._queue(row)
            except CryptoError:  # its user was deleted meanwhile: nothing to send
                continue
        if len(found) == BATCH:
            mark = min(mark, int(found[-1].id))
        await hub.runtime.runner.run(lambda c: _advance(c, mark, at))
        if queued:
            hub.wake_outbox()
        return queued

    async def _queue(self, row: Any) -> int:
        services, uid = self.hub.services, int(row.user_id)
        channel = self.hub.adapters[row.channel]
        found = await services.read(uid, lambda c: services.conversations.messages(
            c, uid, row.conversation_id, after=int(row.id) - 1, limit=1))
        if not found or found[0].content is None:
            return 0
        message = found[0]
        part = Part(row.channel, channel.bot_id, row.external_chat_id, "reminder", message.content or "", user_id=uid,
                    message_uid=message.uid)
        keyring = services.keyring
        return int(await self.hub.runtime.runner.run(
            lambda c: outbox.enqueue(c, keyring, [part], now_ms()), order_key=uid))


def _scan(conn: Connection, names: list[str], at: int) -> tuple[int, list[Any]]:
    """(the watermark to move to, the reminder messages after the current one)."""
    state = conn.execute(select(channel_state.c.reminder_mark).where(channel_state.c.channel == STATE_ROW)).first()
    newest_settled = conn.execute(select(func.max(messages.c.id)).where(messages.c.created_ms < at - SETTLE_MS)).scalar()
    if state is None or state.reminder_mark is None:  # first start: from now on
        return int(newest_settled or 0), []
    mark = int(state.reminder_mark)
    rows = conn.execute(
        select(messages.c.id, messages.c.user_id, messages.c.conversation_id, conversations.c.channel,
               conversations.c.external_chat_id)
        .join(conversations, conversations.c.id == messages.c.conversation_id)
        .where(messages.c.id > mark, messages.c.kind == "reminder", conversations.c.channel.in_(names),
               conversations.c.external_chat_id.is_not(None))
        .order_by(messages.c.id).limit(BATCH)).all()
    return max(mark, int(newest_settled or 0)), list(rows)


def _advance(conn: Connection, mark: int, at: int) -> None:
    if insert_or_ignore(conn, channel_state, {"channel": STATE_ROW, "reminder_mark": mark, "updated_ms": at},
                        ["channel"]):
        return
    conn.execute(update(channel_state).where(channel_state.c.channel == STATE_ROW,
                                             func.coalesce(channel_state.c.reminder_mark, -1) < mark)
                 .values(reminder_mark=mark, updated_ms=at))
