"""Sending one queued part, and recording what the platform said (see channels.outbox).

A reminder to WhatsApp outside the 24-hour customer service window goes out as the configured
template, or is recorded as undeliverable with the reason: never silently dropped. A part the
platform refused because its chat has a new id (a Telegram group upgraded to a supergroup) was
sent again there by the adapter; what that said is recorded, and the chat moves (channels.moves)
in the same transaction, so that its next parts and any retry go to the new id.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from sqlalchemy import Connection

from switchboard.billing.accounts import now_ms
from switchboard.channels import linking, outbox, replies
from switchboard.channels.base import Channel, Outgoing, SendResult
from switchboard.channels.moves import move_chat
from switchboard.channels.outbox import Claimed
from switchboard.crypto import CryptoError
from switchboard.store.db import read

if TYPE_CHECKING:
    from switchboard.channels.hub import ChannelHub

log = logging.getLogger(__name__)
NO_TEMPLATE = ("not sent: WhatsApp's 24-hour customer service window is closed and no reminder_template "
               "is configured ([channels.whatsapp] reminder_template)")


class Sender:
    def __init__(self, hub: ChannelHub) -> None:
        self.hub = hub

    async def deliver(self, part_id: int, user_id: int) -> None:
        """Claim the part and send it; nothing if another process has it."""
        hub, me = self.hub, self.hub.process_id
        if me is None:
            return
        keyring, lease_ms, runner = hub.services.keyring, int(hub.config.lease_s * 1000), hub.runtime.runner
        if not await runner.run(lambda c: outbox.claim(c, part_id, me, now_ms(), lease_ms), order_key=user_id):
            return
        try:
            if user_id:
                await keyring.prepare(user_id)
            claimed = await asyncio.to_thread(read, hub.runtime.engine, lambda c: outbox.load(c, keyring, part_id))
        except CryptoError as exc:  # the user was deleted since: their text can never be read
            await runner.run(lambda c: outbox.failed(c, part_id, me, f"cannot be read any more ({exc})"),
                             order_key=user_id)
            hub.wake_outbox()
            return
        try:
            channel = hub.adapters.get(claimed.channel)
            if channel is None:
                result = SendResult(False, error=f"{claimed.channel} is not configured on this server", retryable=True)
            else:
                result = await self._send(channel, claimed)
            await self._record(claimed, me, result)
        finally:
            hub.wake_outbox()  # the chat's next part

    async def _send(self, channel: Channel, claimed: Claimed) -> SendResult:
        message = Outgoing(claimed.chat_id, (replies.RESENT if claimed.uncertain else "") + claimed.text,
                           claimed.reply_to, claimed.thread_id)
        template = channel.reminder_template()
        if claimed.kind == "reminder":
            last = await asyncio.to_thread(read, self.hub.runtime.engine,
                                           lambda c: linking.window_of(c, channel.name, claimed.chat_id))
            if not channel.window_open(last, now_ms()):
                if template is None:
                    return SendResult(False, error=NO_TEMPLATE)
                message = Outgoing(claimed.chat_id, claimed.text, template=template[0], template_language=template[1])
        result = await self._call(channel, message)
        if result.outside_window and claimed.kind == "reminder" and message.template is None:
            if template is None:
                return SendResult(False, error=f"{result.error}; {NO_TEMPLATE}")
            result = await self._call(channel, Outgoing(claimed.chat_id, claimed.text, template=template[0],
                                                        template_language=template[1]))
        return result

    async def _call(self, channel: Channel, message: Outgoing) -> SendResult:
        try:
            return await asyncio.wait_for(channel.send(message), self.hub.config.send_timeout_s + 5)
        except TimeoutError:
            return SendResult(False, error="the platform did not answer in time", retryable=True, uncertain=True)
        except Exception as exc:  # noqa: BLE001 - a bug in an adapter must not lose the part
            log.exception("%s send failed", channel.name)
            return SendResult(False, error=f"{type(exc).__name__}", retryable=True, uncertain=True)

    async def _record(self, claimed: Claimed, me: int, result: SendResult) -> None:
        config, at = self.hub.config, now_ms()
        if result.ok:
            def work(conn: Connection) -> bool:
                return outbox.delivered(conn, claimed.id, me, result.platform_id, at)
        elif result.retryable and claimed.attempts < config.delivery_attempts:
            wait = outbox.backoff_ms(claimed.attempts, config.retry_base_s, config.retry_max_s, result.retry_after_s)
            log.info("%s part %s not sent (attempt %d: %s); again in %.1f s", claimed.channel, claimed.id,
                     claimed.attempts, result.error, wait / 1000)

            def work(conn: Connection) -> bool:
                return outbox.retry_later(conn, claimed.id, me, at + wait, result.error, uncertain=result.uncertain)
        else:
            tried = f"after {claimed.attempts} attempt(s)" if result.retryable else "refused"
            error = f"{result.error} ({tried})"
            log.warning("%s part %s to chat %s NOT DELIVERED: %s", claimed.channel, claimed.id,
                        claimed.chat_id[:4] + "…", error)
            await self.hub.note_error(claimed.channel, f"a {claimed.kind} was not delivered: {error}")

            def work(conn: Connection) -> bool:
                return outbox.failed(conn, claimed.id, me, error)
        moved_to = result.moved_to

        def recorded(conn: Connection) -> bool:
            if moved_to is not None:
                done = move_chat(conn, claimed.channel, claimed.bot_id, claimed.chat_id, moved_to)
                log.info("%s chat %s is now %s (learned from a refused send): moved %s", claimed.channel,
                         claimed.chat_id, moved_to, done)
            return work(conn)

        await self.hub.runtime.runner.run(recorded, order_key=claimed.user_id or 0)
