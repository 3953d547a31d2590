"""Discord (https://discord.com/developers/docs): the adapter, as telegram.py and whatsapp.py are.

In: plain messages over the Gateway websocket (discord.gateway, held by one process:
discord.keeper), `MESSAGE_CREATE` read here into `Inbound` messages, deduplicated by the
message's id. The bot asks for GUILD_MESSAGES and DIRECT_MESSAGES only, never the privileged
MESSAGE_CONTENT: Discord then shows a bot the text of direct messages and of messages that
mention it (a reply that pings it included), which is all it answers. In a server channel it
answers only when mentioned or replied to, never a bot, a webhook or itself. Slash commands
arrive at the interactions endpoint instead (discord.interactions).

Out: `POST /channels/{id}/messages`, at most 2,000 characters (counted here in UTF-16 code units,
never fewer than Discord's count), Markdown as Discord renders it, mentions never pinging
anyone (`allowed_mentions`); in a server, the first part replies to the message it answers.
A reply to a slash command goes through the interaction's webhook instead: the first part
replaces the deferred "thinking..." message, the rest follow it; after the token's 15 minutes,
into the channel. The typing indicator (`POST /channels/{id}/typing`) shows for 10 seconds and
is repeated every 8. Rate limits: discord.rest.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any

import httpx
import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from switchboard.billing.accounts import now_ms
from switchboard.channels.base import BadPayload, Channel, Inbound, Outgoing, Parsed, SendResult
from switchboard.channels.discord import interactions
from switchboard.channels.discord.rest import DiscordREST
from switchboard.channels.split import utf16_len
from switchboard.core.config import DiscordChannelConfig
from switchboard.store.db import read

if TYPE_CHECKING:
    from switchboard.channels.hub import ChannelHub

log = logging.getLogger(__name__)

GUILD_MESSAGES, DIRECT_MESSAGES, MESSAGE_CONTENT = 1 << 9, 1 << 12, 1 << 15
INTENTS = GUILD_MESSAGES | DIRECT_MESSAGES  # MESSAGE_CONTENT is privileged: not asked for
_CONVERSATION_TYPES = (0, 19)  # DEFAULT, REPLY; joins, pins, boosts... are not conversation
_VOICE_MESSAGE = 1 << 13
_LINK = re.compile(r"^\s*/?link\s+([A-Za-z0-9-]{4,64})\s*$", re.IGNORECASE)
_NO_PINGS = {"parse": []}
# A reply to a command sent before Discord has the deferred response (the two race): Discord
# does not know the interaction's webhook yet. Tried again, for this long after the command.
_ACK_RACE_MS = 20_000


class Discord(Channel):
    name = "discord"
    limit = 2000
    typing_every_s = 8.0
    link_hint = "use the /link command with the code (or send me LINK CODE in a direct message)"
    link_help_in_groups = True  # a server member who mentions the bot is told how to link there

    def __init__(self, config: DiscordChannelConfig, client: httpx.AsyncClient) -> None:
        super().__init__(client)
        token = config.bot_token()
        if not token or not config.public_key or not config.application_id:
            raise ValueError(f"Discord needs public_key, application_id and {config.bot_token_env}")
        try:
            self.public_key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(config.public_key))
        except ValueError:
            raise ValueError("Discord's public_key must be the application's public key: 64 hex digits") from None
        self.config = config
        self.token = token
        self.application_id = config.application_id
        self.rest = DiscordREST(client, config.api_base_url, token)
        self.user_id: str | None = None  # the bot's user (mentions): from /users/@me or READY
        self.username: str | None = None
        self._hub: ChannelHub | None = None

    @property
    def bot_id(self) -> str:
        return self.application_id

    async def start(self) -> str | None:
        answer = await self.rest.call("GET", "GET /users/@me", "", "/users/@me")
        if not answer.result.ok:
            raise RuntimeError(f"GET /users/@me failed: {answer.result.error}")
        self.know_myself(answer.body)
        return f"@{self.username}" if self.username else None

    def know_myself(self, user: Mapping[str, Any]) -> None:
        if user.get("id"):
            self.user_id = str(user["id"])
            self.username = str(user.get("username") or "") or None

    def attach(self, hub: ChannelHub) -> list[Awaitable[None]]:
        """The Gateway, in whichever server process holds it (discord.keeper)."""
        from switchboard.channels.discord.keeper import GatewayKeeper

        self._hub = hub
        return [GatewayKeeper(hub, self).run()]

    # -- in -------------------------------------------------------------------------------
    def verify(self, headers: Mapping[str, str], raw: bytes) -> bool:
        return interactions.verify(self.public_key, headers, raw)

    def parse(self, raw: bytes) -> Parsed:
        """A Gateway MESSAGE_CREATE's `d` (the message object)."""
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BadPayload("the body is not JSON") from None
        found = self.message(message) if isinstance(message, dict) else None
        return Parsed([found] if found else [])

    def message(self, d: Mapping[str, Any]) -> Inbound | None:
        """A MESSAGE_CREATE as an Inbound, or None for what is not conversation."""
        author = d.get("author") if isinstance(d.get("author"), dict) else {}
        if not d.get("id") or not d.get("channel_id") or not author.get("id") or d.get("type", 0) not in _CONVERSATION_TYPES:
            return None
        me, guild = self.user_id, d.get("guild_id")
        mentioned = bool(me) and any(isinstance(u, dict) and str(u.get("id")) == me for u in d.get("mentions") or [])
        referenced = d.get("referenced_message") if isinstance(d.get("referenced_message"), dict) else {}
        replied = bool(me) and str((referenced.get("author") or {}).get("id")) == me
        text = str(d.get("content") or "")
        if guild and me:
            text = re.sub(rf"<@!?{re.escape(me)}>", " ", text)
            text = re.sub(r"[ \t]{2,}", " ", text).strip()
        kind = "text" if text.strip() else _kind(d)
        if kind is None:
            return None  # nothing to read: a reply without a mention hides its text from the bot
        return Inbound(
            channel=self.name, bot_id=self.bot_id, external_id=str(d["id"]), sender_id=str(author["id"]),
            chat_id=str(d["channel_id"]), text=text if kind == "text" else None, kind=kind, reply_to=str(d["id"]),
            is_group=bool(guild), addressed=not guild or mentioned or replied,
            from_bot=bool(author.get("bot")) or bool(d.get("webhook_id")) or str(author["id"]) == me,
        )

    def link_code(self, message: Inbound) -> str | None:
        match = _LINK.match(message.text or "")
        return match.group(1) if match else None

    # -- out ------------------------------------------------------------------------------
    def measure(self, text: str) -> int:
        return utf16_len(text)

    async def send(self, message: Outgoing) -> SendResult:
        if message.thread_id and message.thread_id.startswith(interactions.ROUTE_PREFIX):
            return await self._through_interaction(message.thread_id[len(interactions.ROUTE_PREFIX):], message)
        return await self._post(message.chat_id, message.text, message.reply_to)

    async def _post(self, chat_id: str, text: str, reply_to: str | None) -> SendResult:
        body: dict[str, Any] = {"content": text, "allowed_mentions": {"parse": [], "replied_user": True}}
        if reply_to:
            body["message_reference"] = {"message_id": reply_to, "fail_if_not_exists": False}
        answer = await self.rest.call("POST", "POST /channels/{id}/messages", chat_id, f"/channels/{chat_id}/messages",
                                      json=body)
        if answer.result.ok:
            answer.result.platform_id = str(answer.body.get("id") or "") or None
        return answer.result

    async def _through_interaction(self, interaction_id: str, message: Outgoing) -> SendResult:
        token = await self._token(interaction_id)
        if token is None:  # never into the channel: it may have been a private answer
            return SendResult(False, error=f"interaction {interaction_id} is not known here")
        age = now_ms() - token.created_ms
        if age > interactions.TOKEN_LIFETIME_MS - 30_000:
            if token.ephemeral:
                return SendResult(False, error="the command's 15 minutes passed before its private answer could be sent")
            return await self._post(message.chat_id, message.text, None)  # into the channel instead
        hook = f"/webhooks/{self.application_id}/{token.token}"
        resource = f"webhook:{interaction_id}"
        content = {"content": message.text, "allowed_mentions": _NO_PINGS}
        if not token.original_done:
            answer = await self.rest.call("PATCH", "PATCH /webhooks/{id}/{token}/messages/@original", resource,
                                          hook + "/messages/@original", json=content, bot_auth=False)
        else:
            if token.ephemeral:
                content["flags"] = interactions.EPHEMERAL
            answer = await self.rest.call("POST", "POST /webhooks/{id}/{token}", resource, hook, json=content,
                                          bot_auth=False, params={"wait": "true"})
        result = answer.result
        if result.ok:
            result.platform_id = str(answer.body.get("id") or "") or None
            if not token.original_done and not await self._mark_original(interaction_id):
                # Sent, but not noted: sending it again replaces the same message, where a
                # follow-up would have replaced this part with the next.
                return SendResult(False, error="could not note the reply's first part", retryable=True, uncertain=True)
            return result
        if answer.token_gone and age < _ACK_RACE_MS:
            return SendResult(False, error="the command's deferred answer is not with Discord yet", retryable=True,
                              retry_after_s=1.0)
        if answer.token_gone and not token.ephemeral:
            return await self._post(message.chat_id, message.text, None)
        return result

    async def _token(self, interaction_id: str) -> interactions.Token | None:
        hub = self._hub
        if hub is None:
            return None
        return await asyncio.to_thread(read, hub.runtime.engine, lambda c: interactions.token_of(c, interaction_id))

    async def _mark_original(self, interaction_id: str) -> bool:
        assert self._hub is not None
        try:
            await self._hub.runtime.runner.run(lambda c: interactions.original_done(c, interaction_id))
        except Exception:  # noqa: BLE001 - the part is then sent again, in place of itself
            log.exception("discord: could not note interaction %s's first part", interaction_id)
            return False
        return True

    async def typing(self, chat_id: str, reply_to: str | None, thread_id: str | None) -> None:
        if thread_id and thread_id.startswith(interactions.ROUTE_PREFIX):
            return  # a deferred command shows "thinking..." already
        await self.rest.call("POST", "POST /channels/{id}/typing", chat_id, f"/channels/{chat_id}/typing")


def _kind(d: Mapping[str, Any]) -> str | None:
    """What a message without text holds, or None when it holds nothing the bot can see."""
    for attachment in d.get("attachments") or []:
        if not isinstance(attachment, dict):
            continue
        media = str(attachment.get("content_type") or "")
        if media.startswith("audio/"):
            return "voice" if int(d.get("flags") or 0) & _VOICE_MESSAGE else "audio"
        if media.startswith("image/"):
            return "image"
        if media.startswith("video/"):
            return "video"
        return "file"
    if d.get("sticker_items"):
        return "sticker"
    if d.get("embeds") or d.get("poll"):
        return "other"
    return None
