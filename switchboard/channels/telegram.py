"""Telegram, over the Bot API (https://core.telegram.org/bots/api), by webhook.

In: `Update` objects POSTed to /channels/telegram/webhook with the secret set by `setWebhook`
in `X-Telegram-Bot-Api-Secret-Token`. Updates are deduplicated by `update_id` (per bot: the
bot id is the token's number). Only `message` updates are answered: edits, channel posts and
membership changes are not conversation. In groups the bot answers when it is mentioned
(@username, a text mention, /command@username) or replied to, and never to a bot. A group
upgraded to a supergroup gets a new chat id: the service messages that say so
(`migrate_to_chat_id` in the old group, `migrate_from_chat_id` in the new) are a `ChatMove`,
never a turn (channels.moves).

Out: `sendMessage` with `parse_mode` HTML (fenced code as <pre><code>, inline code as <code>,
everything else escaped), at most 4,096 characters after entity parsing, counted here in UTF-16
code units as Telegram counts entities (never less than the characters); `sendChatAction`
typing, repeated every 4 s (it shows for 5). A 429 carries `parameters.retry_after`; a 400
with `parameters.migrate_to_chat_id` (the group became a supergroup) is sent again, once, there.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import httpx
import orjson

from switchboard.channels.base import (
    BadPayload,
    Channel,
    ChatMove,
    Inbound,
    Outgoing,
    Parsed,
    SendResult,
    same_secret,
    transport_failure,
)
from switchboard.channels.split import utf16_len
from switchboard.core.config import TelegramChannelConfig

SECRET_HEADER = "x-telegram-bot-api-secret-token"
_START = re.compile(r"^/start(?:@\w+)?(?:\s+(\S+))?\s*$", re.IGNORECASE)
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*).*$")
_INLINE_CODE = re.compile(r"`([^`\n]+)`")
_MEDIA = (("voice", "voice"), ("audio", "audio"), ("photo", "image"), ("animation", "image"), ("video", "video"),
          ("video_note", "video"), ("document", "file"), ("sticker", "sticker"), ("location", "location"),
          ("venue", "location"), ("contact", "contact"), ("poll", "other"), ("dice", "other"))


def render_html(text: str) -> str:
    """Markdown-ish text as Telegram HTML: fenced blocks as <pre><code class="language-x">,
    `inline code` as <code>, the rest escaped. What Telegram shows is never longer than `text`."""
    out: list[str] = []
    code: list[str] | None = None
    lang = ""
    for line in text.split("\n"):
        fence = _FENCE.match(line)
        if code is None:
            if fence:
                code, lang = [], fence.group(2)
                continue
            out.append(_INLINE_CODE.sub(lambda m: f"<code>{m.group(1)}</code>", html.escape(line, quote=False)))
        elif fence and not fence.group(2):
            attr = f' class="language-{html.escape(lang)}"' if lang else ""
            out.append(f"<pre><code{attr}>{html.escape(chr(10).join(code), quote=False)}</code></pre>")
            code = None
        else:
            code.append(line)
    if code is not None:  # never closed: show what there is as code
        out.append(f"<pre><code>{html.escape(chr(10).join(code), quote=False)}</code></pre>")
    return "\n".join(out)


class Telegram(Channel):
    name = "telegram"
    limit = 4096
    typing_every_s = 4.0
    link_hint = "send /start CODE here (or open the link you were given)"

    def __init__(self, config: TelegramChannelConfig, client: httpx.AsyncClient) -> None:
        super().__init__(client)
        token, secret = config.bot_token(), config.webhook_secret()
        if not token or not secret:
            raise ValueError(f"Telegram needs {config.bot_token_env} and {config.webhook_secret_env}")
        self._token = token
        self._secret = secret
        self._base = config.api_base_url.rstrip("/")
        self.username: str | None = None  # learned from getMe (mentions in groups)

    @property
    def bot_id(self) -> str:
        return self._token.split(":", 1)[0]

    # -- the Bot API ------------------------------------------------------------------------
    async def call(self, method: str, params: dict[str, Any]) -> httpx.Response:
        return await self.client.post(f"{self._base}/bot{self._token}/{method}", json=params)

    async def start(self) -> str | None:
        response = await self.call("getMe", {})
        body = _json(response)
        if not body.get("ok"):
            raise RuntimeError(f"getMe failed: {body.get('description') or response.status_code}")
        self.username = str(body["result"].get("username") or "") or None
        return f"@{self.username}" if self.username else None

    async def set_webhook(self, url: str) -> dict[str, Any]:
        """Register `url` with the secret (`switchboard channels telegram set-webhook URL`)."""
        response = await self.call("setWebhook", {"url": url, "secret_token": self._secret,
                                                  "allowed_updates": ["message"]})
        return _json(response)

    async def webhook_info(self) -> dict[str, Any]:
        return _json(await self.call("getWebhookInfo", {}))

    # -- in -------------------------------------------------------------------------------
    def verify(self, headers: Mapping[str, str], raw: bytes) -> bool:
        return same_secret(headers.get(SECRET_HEADER), self._secret)

    def parse(self, raw: bytes) -> Parsed:
        try:
            update = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BadPayload("the body is not JSON") from None
        if not isinstance(update, dict) or not isinstance(update.get("update_id"), int):
            raise BadPayload("not a Telegram Update (no update_id)")
        msg = update.get("message")
        if not isinstance(msg, dict) or not isinstance(msg.get("chat"), dict):
            return Parsed()  # edits, channel posts, membership changes: nothing to answer
        chat, sender = msg["chat"], msg.get("from") or {}
        move = _chat_move(msg)
        if move is not None:
            return Parsed(moves=[move])
        if chat.get("type") == "channel" or "id" not in chat or "id" not in sender:
            return Parsed()
        text = msg.get("text")
        kind = "text" if isinstance(text, str) else next((k for key, k in _MEDIA if key in msg), "other")
        is_group = chat.get("type") in ("group", "supergroup")
        addressed = not is_group or self._addressed(msg)
        if is_group and isinstance(text, str):
            text = self._without_mention(text)
        thread = msg.get("message_thread_id") if msg.get("is_topic_message") else None
        return Parsed([Inbound(
            channel=self.name, bot_id=self.bot_id, external_id=str(update["update_id"]),
            sender_id=str(sender["id"]), chat_id=str(chat["id"]), text=text if isinstance(text, str) else None,
            kind=kind, reply_to=str(msg.get("message_id")) if msg.get("message_id") is not None else None,
            thread_id=str(thread) if thread is not None else None, is_group=is_group, addressed=addressed,
            from_bot=bool(sender.get("is_bot")) or str(sender["id"]) == self.bot_id,
        )])

    def _addressed(self, msg: dict[str, Any]) -> bool:
        replied = msg.get("reply_to_message") or {}
        if str((replied.get("from") or {}).get("id")) == self.bot_id:
            return True
        text = msg.get("text") or msg.get("caption") or ""
        me = (self.username or "").lower()
        for entity in msg.get("entities") or msg.get("caption_entities") or []:
            kind = entity.get("type")
            if kind == "text_mention" and str((entity.get("user") or {}).get("id")) == self.bot_id:
                return True
            piece = _entity_text(text, entity)
            if me and kind == "mention" and piece.lower() == "@" + me:
                return True
            if me and kind == "bot_command" and piece.lower().endswith("@" + me):
                return True
        return False

    def _without_mention(self, text: str) -> str:
        if not self.username:
            return text
        stripped = re.sub(rf"(?<![\w/])@{re.escape(self.username)}\b", "", text, flags=re.IGNORECASE)
        return re.sub(r"\s{2,}", " ", stripped).strip() or text

    def link_code(self, message: Inbound) -> str | None:
        match = _START.match((message.text or "").strip())
        return match.group(1) if match and match.group(1) else None

    def is_start(self, message: Inbound) -> bool:
        match = _START.match((message.text or "").strip())
        return bool(match) and not match.group(1)  # type: ignore[union-attr]

    # -- out ------------------------------------------------------------------------------
    def measure(self, text: str) -> int:
        return utf16_len(text)

    async def send(self, message: Outgoing) -> SendResult:
        params: dict[str, Any] = {"chat_id": message.chat_id, "text": render_html(message.text), "parse_mode": "HTML",
                                  "link_preview_options": {"is_disabled": True}}
        if message.thread_id:
            params["message_thread_id"] = int(message.thread_id)
        if message.reply_to:
            params["reply_parameters"] = {"message_id": int(message.reply_to), "allow_sending_without_reply": True}
        result = await self._send(params)
        if result.moved_to is not None:
            # Never delivered to the old group (it is gone): once to the supergroup, never more.
            params["chat_id"] = result.moved_to
            again = await self._send(params)
            result = replace(again, moved_to=again.moved_to or result.moved_to)
        if not result.ok and not result.retryable and "can't parse entities" in (result.error or ""):
            # Our HTML was refused: the same text, plain, rather than nothing.
            params.pop("parse_mode")
            params["text"] = message.text
            result = await self._send(params)
        return result

    async def _send(self, params: dict[str, Any]) -> SendResult:
        try:
            response = await self.call("sendMessage", params)
        except httpx.HTTPError as exc:
            return transport_failure(exc)
        body = _json(response)
        if response.status_code == 200 and body.get("ok"):
            return SendResult(True, platform_id=str((body.get("result") or {}).get("message_id")))
        description = str(body.get("description") or f"HTTP {response.status_code}")
        parameters = body.get("parameters") if isinstance(body.get("parameters"), dict) else {}
        moved_to = _chat_id(parameters.get("migrate_to_chat_id"))
        if moved_to is not None:
            return SendResult(False, error=description, moved_to=moved_to)
        retry_after = parameters.get("retry_after")
        if response.status_code == 429 or isinstance(retry_after, (int, float)):
            return SendResult(False, error=description, retryable=True,
                              retry_after_s=float(retry_after) if isinstance(retry_after, (int, float)) else None)
        # 5xx and answers that are not the Bot API's: transient. 400/403 (blocked, chat gone): final.
        return SendResult(False, error=description, retryable=response.status_code >= 500 or not body)

    async def typing(self, chat_id: str, reply_to: str | None, thread_id: str | None) -> None:
        params: dict[str, Any] = {"chat_id": chat_id, "action": "typing"}
        if thread_id:
            params["message_thread_id"] = int(thread_id)
        await self.call("sendChatAction", params)


def _chat_id(value: Any) -> str | None:
    """A chat id as Telegram sends one (an integer, never a boolean), as text; None otherwise."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _chat_move(msg: dict[str, Any]) -> ChatMove | None:
    """The service message of a group upgraded to a supergroup: in the old group it carries
    `migrate_to_chat_id`, in the supergroup `migrate_from_chat_id`; either says the same move."""
    here = _chat_id(msg["chat"].get("id"))
    to, came_from = _chat_id(msg.get("migrate_to_chat_id")), _chat_id(msg.get("migrate_from_chat_id"))
    if here is None:
        return None
    if to is not None:
        return ChatMove(here, to)
    if came_from is not None:
        return ChatMove(came_from, here)
    return None


def _entity_text(text: str, entity: dict[str, Any]) -> str:
    """The text an entity covers: its offset and length count UTF-16 code units."""
    try:
        offset, length = int(entity["offset"]), int(entity["length"])
    except (KeyError, TypeError, ValueError):
        return ""
    encoded = text.encode("utf-16-le")
    return encoded[offset * 2:(offset + length) * 2].decode("utf-16-le", errors="ignore")


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
