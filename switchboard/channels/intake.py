"""A verified platform message, from the webhook to the inbox, before the webhook answers.

Only fast work happens here (a read, a write; never a model call): the webhook answers 200
within a second whatever the model does. In order:

1. Not for us: a bot's message (this one's included), or a group message that neither
   mentions the bot nor replies to it: ignored, nothing recorded.
2. The channel's own commands, answered at once in one transaction with the deduplicating
   record: a link code (Telegram `/start CODE`, WhatsApp `LINK CODE`; private chats only, a
   code is never read in a group) and a bare `/start`.
3. A linked sender: the message is recorded (deduplicated) for the worker to answer.
4. An unknown sender: a new Free account where `auto_create_accounts` is set; otherwise, in a
   private chat, how to link (at most once per sender per `link_help_interval_s`); nothing in
   a group (on Discord, where a server member must mention the bot, the same once there), and
   never a model call.

Each outcome is a word the webhook logs: recorded, duplicate, ignored, linked, refused, told.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING

from sqlalchemy import Connection, select

from switchboard.accounts.users import create_user
from switchboard.billing.accounts import now_ms
from switchboard.channels import inbox, linking, outbox, replies
from switchboard.channels.base import Channel, Inbound
from switchboard.channels.outbox import Part
from switchboard.crypto import CryptoError
from switchboard.store.db import read
from switchboard.store.schema import users

if TYPE_CHECKING:
    from switchboard.channels.hub import ChannelHub

log = logging.getLogger(__name__)


class Intake:
    def __init__(self, hub: ChannelHub) -> None:
        self.hub = hub

    async def _read(self, work):  # type: ignore[no-untyped-def]
        return await asyncio.to_thread(read, self.hub.runtime.engine, work)

    async def _write(self, work, order_key: int = 0):  # type: ignore[no-untyped-def]
        return await self.hub.runtime.runner.run(work, order_key=order_key)

    async def accept(self, channel: Channel, message: Inbound) -> str:
        outcome = await self._accept(channel, message)
        if outcome in ("linked", "refused", "told"):
            self.hub.wake_outbox()
        return outcome

    async def _accept(self, channel: Channel, message: Inbound) -> str:
        if message.from_bot or (message.is_group and not message.addressed):
            return "ignored"
        private = not message.is_group
        if not private and (channel.link_code(message) or channel.is_start(message)):
            return "ignored"  # a code is never read in a group (everyone there would see it)
        code = channel.link_code(message) if private else None
        if code is not None:
            return await self._link(channel, message, code)
        found = await self._read(lambda c: linking.find_identity(c, channel.name, message.sender_id,
                                                                 message.sender_alt_id, rekey=False))
        user_id = found.user_id if found else None
        if private and channel.is_start(message):
            return await self._greet(channel, message, user_id)
        if user_id is None and private and self.hub.config.auto_create_accounts:
            user_id = await self._register(message)
        if user_id is None:
            told_here = private or channel.link_help_in_groups
            return await self._tell_how_to_link(channel, message) if told_here else "ignored"
        return await self._record(message, user_id)

    async def _key_ready(self, user_id: int) -> bool:
        """The user's data key, loaded; False for a user deleted since (their key destroyed):
        nothing more is recorded for them, and the webhook still answers 200."""
        try:
            await self.hub.services.keyring.prepare(user_id)
        except CryptoError as exc:
            log.warning("a message for user %s, whose data key is gone (%s): not recorded", user_id, exc)
            return False
        return True

    async def _record(self, message: Inbound, user_id: int) -> str:
        keyring, at = self.hub.services.keyring, now_ms()
        if not await self._key_ready(user_id):
            return "ignored"

        def work(conn: Connection) -> bool:
            if not inbox.record(conn, keyring, message, user_id, at):
                return False
            if not message.is_group:  # where to reach them; WhatsApp's 24-hour window opens
                ident = linking.find_identity(conn, message.channel, message.sender_id, message.sender_alt_id)
                if ident is not None:
                    linking.seen(conn, ident.id, message.chat_id, at=at)
            return True

        if not await self._write(work, user_id):
            return "duplicate"
        self.hub.wake_inbox()
        return "recorded"

    async def _link(self, channel: Channel, message: Inbound, code: str) -> str:
        keyring, at = self.hub.services.keyring, now_ms()
        check = await self._read(lambda c: linking.check_code(c, code, at=at))
        usable = check.user_id is not None and await self._key_ready(check.user_id)
        by = f"{channel.name}:{message.sender_id}"

        def work(conn: Connection) -> str:
            if not inbox.record(conn, keyring, message, None, at, status="done"):
                return "duplicate"
            ident = linking.ensure_identity(conn, channel.name, message.sender_id, message.chat_id,
                                            message.sender_alt_id, at=at)
            if not linking.may_try_code(conn, ident.id, at=at):
                return "ignored"  # too many wrong codes this hour: not heard on codes
            user_id = linking.use_code(conn, code, by, at=at) if usable else None
            if user_id is None:
                linking.failed_code(conn, ident.id, at=at)
                status = (check.status if check.status != "ok" else "used") if usable else "unknown"
                self._send(conn, message, replies.bad_code(status, channel.link_hint), None, at)
                return "refused"
            linking.link(conn, ident, user_id, message.chat_id, at=at)
            linking.seen(conn, ident.id, message.chat_id, at=at)
            self._send(conn, message, replies.linked(_email(conn, user_id)), user_id, at)
            return "linked"

        outcome = await self._write(work, check.user_id or 0)
        log.info("%s link code from %s: %s", channel.name, _anonymous(message.sender_id), outcome)
        return outcome

    async def _greet(self, channel: Channel, message: Inbound, user_id: int | None) -> str:
        if user_id is None:
            return await self._tell_how_to_link(channel, message)
        keyring, at = self.hub.services.keyring, now_ms()
        if not await self._key_ready(user_id):
            return "ignored"

        def work(conn: Connection) -> str:
            if not inbox.record(conn, keyring, message, None, at, status="done"):
                return "duplicate"
            self._send(conn, message, replies.welcome_back(_email(conn, user_id)), user_id, at)
            return "told"

        return await self._write(work, user_id)

    async def _tell_how_to_link(self, channel: Channel, message: Inbound) -> str:
        keyring, at, interval = self.hub.services.keyring, now_ms(), self.hub.config.link_help_interval_s

        def work(conn: Connection) -> str:
            if not inbox.record(conn, keyring, message, None, at, status="done"):
                return "duplicate"
            ident = linking.ensure_identity(conn, channel.name, message.sender_id, message.chat_id,
                                            message.sender_alt_id, at=at)
            if not linking.help_due(conn, ident.id, interval, at=at):
                return "ignored"
            self._send(conn, message, replies.how_to_link(channel.link_hint), None, at)
            return "told"

        return await self._write(work)

    async def _register(self, message: Inbound) -> int:
        """A new Free account for an unknown sender (`auto_create_accounts`), linked at once."""
        ledger, at = self.hub.runtime.ledger, now_ms()
        email = f"{message.channel}-{re.sub(r'[^a-z0-9.]', '', message.sender_id.lower())}@channels.invalid"

        def work(conn: Connection) -> int:
            ident = linking.ensure_identity(conn, message.channel, message.sender_id, message.chat_id,
                                            message.sender_alt_id, at=at)
            if ident.user_id is not None:  # another process registered them a moment ago
                return ident.user_id
            user = create_user(conn, ledger, email, "free")
            linking.link(conn, ident, user.id, message.chat_id, at=at)
            return user.id

        user_id = await self._write(work)
        log.info("%s: a new Free account (user %s) for an unknown sender", message.channel, user_id)
        return int(user_id)

    def _send(self, conn: Connection, message: Inbound, text: str, user_id: int | None, at: int) -> None:
        """Queue a short answer in the caller's transaction (`accept` wakes the sender after)."""
        outbox.enqueue(conn, self.hub.services.keyring, [Part(
            message.channel, message.bot_id, message.chat_id, "notice", text, user_id=user_id,
            thread_id=message.thread_id)], at)


def _email(conn: Connection, user_id: int) -> str:
    return str(conn.execute(select(users.c.email).where(users.c.id == user_id)).scalar_one())


def _anonymous(sender_id: str) -> str:
    """A sender id for the log without the whole of it (a phone number is personal data)."""
    return sender_id[:3] + "…" if len(sender_id) > 4 else "…"
