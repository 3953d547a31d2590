"""Answering one recorded message: claim it, run the assistant's turn, queue the reply.

The turn is the assistant's (`Assistant.send`: it stores the user's message and the reply,
encrypted, in the conversation of this chat; commands like /new and /help are its own). Here:

- the conversation is the user's latest on this channel and chat, or a new one;
- the typing indicator is repeated while the turn runs;
- a voice note, an image or a file gets a plain "I can't ... yet" and no model call;
- out of credits, the assistant's stored message goes out with a Stripe Checkout link where
  Stripe is configured;
- the reply is split at the platform's limit and queued, in one transaction with marking the
  message answered: answered and queued together, or neither.

A message whose claimer died is claimed again (channels.queue). If its turn had already stored
a reply, that reply is sent instead of asking the model again; otherwise the turn runs again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from sqlalchemy import Connection

from switchboard.assistant.conversations import Conversation, Message
from switchboard.assistant.events import TurnCompleted, TurnFailed
from switchboard.billing.accounts import now_ms
from switchboard.channels import inbox, outbox, replies
from switchboard.channels.base import Channel
from switchboard.channels.inbox import Item
from switchboard.channels.outbox import Part
from switchboard.channels.split import split_text
from switchboard.core.errors import SwitchboardError
from switchboard.crypto import CryptoError

if TYPE_CHECKING:
    from switchboard.channels.hub import ChannelHub

log = logging.getLogger(__name__)
_FINAL_KINDS = ("text", "command", "error")


class Answerer:
    def __init__(self, hub: ChannelHub) -> None:
        self.hub = hub

    async def answer(self, item_id: int, user_id: int) -> None:
        """Claim the message and answer it; nothing if another process has it."""
        hub, me = self.hub, self.hub.process_id
        if me is None:
            return
        services, lease_ms = hub.services, int(hub.config.lease_s * 1000)
        runner = hub.runtime.runner
        if not await runner.run(lambda c: inbox.claim(c, item_id, me, now_ms(), lease_ms), order_key=user_id):
            return
        try:
            item = await services.read(user_id, lambda c: inbox.load(c, services.keyring, item_id))
        except CryptoError as exc:  # the user was deleted since: nothing of theirs can be read
            log.warning("channel message %s cannot be read (%s): set aside", item_id, exc)
            await runner.run(lambda c: inbox.unreadable(c, item_id, me, now_ms()), order_key=user_id)
            hub.wake_inbox()
            return
        renewing = asyncio.create_task(self._renew(item, me))
        try:
            await self._respond(item, me)
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing

    async def _renew(self, item: Item, me: int) -> None:
        lease_s = self.hub.config.lease_s
        while True:
            await asyncio.sleep(lease_s / 3)
            until = now_ms() + int(lease_s * 1000)
            if not await self.hub.runtime.runner.run(lambda c: inbox.renew(c, item.id, me, until), order_key=item.user_id):
                log.warning("%s message %s: another process took it over", item.channel, item.id)
                return

    async def _respond(self, item: Item, me: int) -> None:
        services, uid = self.hub.services, item.user_id
        if item.conversation_id is not None and item.mark_message_id is not None:
            stored = await services.read(uid, lambda c: _stored_reply(c, services.conversations, item))
            if stored is not None:  # the turn finished before its process died: send what it said
                log.info("%s message %s: sending the reply its first turn stored", item.channel, item.id)
                await self._finish(item, me, stored.content or "", stored.uid)
                return
            conv_id = item.conversation_id
        else:
            conv = await self._conversation(item)
            conv_id = conv.id
            newest = await services.read(uid, lambda c: services.conversations.messages(c, uid, conv_id, newest=True,
                                                                                        limit=1))
            mark = newest[0].id if newest else 0
            await services.write(uid, lambda c: inbox.begin_turn(c, item.id, me, conv_id, mark))
        if item.kind != "text" or not (item.text or "").strip():
            text = replies.cannot_handle(item.kind)
            reply = await services.write(uid, lambda c: _store_exchange(c, services.conversations, item, conv_id, text))
            await self._finish(item, me, text, reply.uid)
            return
        channel = self.hub.adapters.get(item.channel)
        typing = asyncio.create_task(self._typing(channel, item)) if channel else None
        try:
            text, message_uid = await self._turn(item, conv_id)
        finally:
            if typing is not None:
                typing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await typing
        await self._finish(item, me, text, message_uid)

    async def _turn(self, item: Item, conv_id: str) -> tuple[str, str | None]:
        """The assistant's turn: (what to send, the stored message it comes from)."""
        assistant = self.hub.assistant
        try:
            target = await assistant.open(item.user_id, conv_id)
            final: TurnCompleted | TurnFailed | None = None
            # Named after the inbox row: a turn run again after a crash stores the message once.
            async for event in assistant.send(target, item.text or "", message_uid=f"msg_in{item.id:020d}"):
                if isinstance(event, (TurnCompleted, TurnFailed)):
                    final = event
        except SwitchboardError as exc:  # refused before the turn began (a message too long...)
            return exc.message, None
        if final is None:
            return "Sorry, something went wrong on our side.", None
        text = replies.turn_reply(final)
        if isinstance(final, TurnFailed) and final.status == 402:
            line = await replies.checkout_line(self.hub.settings, item.user_id, target.profile.email)
            if line:
                text = f"{text}\n\n{line}"
        return text, final.message.uid if final.message is not None else None

    async def _conversation(self, item: Item) -> Conversation:
        services, uid = self.hub.services, item.user_id
        conversations = services.conversations
        found = await services.read(uid, lambda c: conversations.latest(c, uid, item.channel, item.chat_id))
        if found is not None:
            return found
        return await services.write(uid, lambda c: conversations.create(c, uid, channel=item.channel,
                                                                        external_chat_id=item.chat_id))

    async def _typing(self, channel: Channel | None, item: Item) -> None:
        assert channel is not None
        while True:
            try:
                await channel.typing(item.chat_id, item.reply_to, item.thread_id)
            except Exception as exc:  # noqa: BLE001 - a missing indicator must not stop the answer
                log.debug("%s typing indicator failed: %r", item.channel, exc)
            await asyncio.sleep(channel.typing_every_s)

    async def _finish(self, item: Item, me: int, text: str, message_uid: str | None) -> None:
        """Mark the message answered and queue its reply, in one transaction."""
        channel = self.hub.adapters.get(item.channel)
        chunks = channel.split(text, replies.RESERVE) if channel else split_text(text, 2000 - replies.RESERVE)
        parts = [Part(item.channel, item.bot_id, item.chat_id, "reply", chunk, user_id=item.user_id,
                      message_uid=message_uid, part=i, parts=len(chunks), inbox_id=item.id,
                      reply_to=item.reply_to if item.is_group and i == 0 else None, thread_id=item.thread_id)
                 for i, chunk in enumerate(chunks)]
        keyring, at = self.hub.services.keyring, now_ms()

        def work(conn: Connection) -> bool:
            if not inbox.answered(conn, item.id, me, at):
                return False  # taken over meanwhile: the other process answers
            outbox.enqueue(conn, keyring, parts, at)
            return True

        if await self.hub.runtime.runner.run(work, order_key=item.user_id):
            self.hub.wake_outbox()
        self.hub.wake_inbox()  # the chat's next message, if one waits


def _stored_reply(conn: Connection, conversations, item: Item) -> Message | None:  # type: ignore[no-untyped-def]
    """The reply a turn for this message stored before its process died, if it got that far."""
    assert item.conversation_id is not None
    after = conversations.messages(conn, item.user_id, item.conversation_id, after=item.mark_message_id)
    asked = False
    reply = None
    for m in after:
        if m.role == "user":
            asked, reply = True, None
        elif asked and m.role == "assistant" and not m.tool_calls and m.kind in _FINAL_KINDS:
            reply = m
    return reply


def _store_exchange(conn: Connection, conversations, item: Item, conv_id: str, text: str) -> Message:  # type: ignore[no-untyped-def]
    """A message the assistant cannot read, and what it was told, kept in the conversation."""
    conversations.add_message(conn, item.user_id, conv_id, role="user", content=f"({item.kind} message)")
    return conversations.add_message(conn, item.user_id, conv_id, role="assistant", content=text)
