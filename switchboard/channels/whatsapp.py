"""WhatsApp, over Meta's Cloud API (https://developers.facebook.com/docs/whatsapp/cloud-api), by webhook.

In: the app's webhook. `GET` is the verification handshake (`hub.mode=subscribe`,
`hub.verify_token` equal to ours: echo `hub.challenge`; else 403). `POST` bodies are signed:
`X-Hub-Signature-256: sha256=HEX(HMAC-SHA256(app secret, raw body))`. A body is
`{"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "messages", "value":
{"metadata": {"phone_number_id"}, "contacts": [...], "messages": [...], "statuses": [...]}}]}]}`.
Messages are deduplicated by their id (`wamid....`); `statuses` (sent, delivered, read,
failed) never start a turn. A sender is keyed on the business-scoped user id (`from_user_id`,
`contacts[].user_id`) where the webhook carries one, on the phone number (`from`, `wa_id`)
otherwise.

Out: `POST /{phone_number_id}/messages` with a bearer token: text up to 4,096 characters,
`to` a phone number or `recipient` a business-scoped id; the typing indicator is a read receipt
with `typing_indicator` (shown up to 25 s, so repeated every 20 s). Free-form messages may only
go out within 24 hours of the user's last message (the customer service window); outside it, a
reminder goes out as an approved template (`reminder_template`), or is recorded undeliverable.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from typing import Any

import httpx
import orjson

from switchboard.channels.base import (
    BadPayload,
    Channel,
    Inbound,
    Outgoing,
    Parsed,
    SendResult,
    StatusUpdate,
    same_secret,
    transport_failure,
)
from switchboard.core.config import WhatsAppChannelConfig

SIGNATURE_HEADER = "x-hub-signature-256"
WINDOW_MS = 24 * 3600 * 1000
_LINK = re.compile(r"^\s*link\s+([A-Za-z0-9-]{4,64})\s*$", re.IGNORECASE)
_FENCE_INFO = re.compile(r"^( {0,3})(`{3,})[\w+#.-]+\s*$", re.MULTILINE)
# Graph API codes worth another try: unknown/service errors, rate and throughput limits.
_RETRYABLE = {1, 2, 4, 17, 341, 613, 80007, 130429, 131000, 131016, 131056, 133004}
_OUTSIDE_WINDOW = 131047
_KINDS = {"text": "text", "audio": "audio", "image": "image", "video": "video", "document": "file",
          "sticker": "sticker", "location": "location", "contacts": "contact"}
_NOT_MESSAGES = {"reaction", "system", "ephemeral", "request_welcome"}


class WhatsApp(Channel):
    name = "whatsapp"
    limit = 4096
    typing_every_s = 20.0
    link_hint = "send LINK CODE here"

    def __init__(self, config: WhatsAppChannelConfig, client: httpx.AsyncClient) -> None:
        super().__init__(client)
        token, secret, verify = config.access_token(), config.app_secret(), config.verify_token()
        if not (token and secret and verify and config.phone_number_id):
            raise ValueError(f"WhatsApp needs phone_number_id, {config.access_token_env}, {config.app_secret_env} "
                             f"and {config.verify_token_env}")
        self._token, self._secret, self._verify_token = token, secret, verify
        self._number = config.phone_number_id
        self._base = config.api_base_url.rstrip("/")
        self._template = (config.reminder_template, config.reminder_template_language)

    @property
    def bot_id(self) -> str:
        return self._number

    # -- in -------------------------------------------------------------------------------
    def handshake(self, mode: str | None, token: str | None, challenge: str | None) -> str | None:
        """The GET verification: the challenge to echo, or None (403)."""
        if mode != "subscribe" or challenge is None or not same_secret(token, self._verify_token):
            return None
        return challenge

    def verify(self, headers: Mapping[str, str], raw: bytes) -> bool:
        given = headers.get(SIGNATURE_HEADER) or ""
        expected = "sha256=" + hmac.new(self._secret.encode(), raw, hashlib.sha256).hexdigest()
        return same_secret(given.lower(), expected)

    def parse(self, raw: bytes) -> Parsed:
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BadPayload("the body is not JSON") from None
        if not isinstance(payload, dict) or payload.get("object") != "whatsapp_business_account":
            raise BadPayload("not a WhatsApp Business Account notification")
        parsed = Parsed()
        for entry in _list(payload.get("entry")):
            for change in _list(entry.get("changes") if isinstance(entry, dict) else None):
                if not isinstance(change, dict) or change.get("field") != "messages":
                    continue
                value = change.get("value")
                if not isinstance(value, dict):
                    continue
                meta = value.get("metadata") or {}
                if str(meta.get("phone_number_id")) != self._number:
                    continue  # another number of the same app
                self._messages(value, str(meta.get("display_phone_number") or ""), parsed)
                for status in _list(value.get("statuses")):
                    if isinstance(status, dict) and status.get("id"):
                        errors = _list(status.get("errors"))
                        error = _error_text(errors[0]) if errors and isinstance(errors[0], dict) else None
                        parsed.statuses.append(StatusUpdate(str(status["id"]), str(status.get("status")), error))
        return parsed

    def _messages(self, value: dict[str, Any], display_number: str, parsed: Parsed) -> None:
        contacts = [c for c in _list(value.get("contacts")) if isinstance(c, dict)]
        for m in _list(value.get("messages")):
            if not isinstance(m, dict) or not m.get("id") or m.get("type") in _NOT_MESSAGES:
                continue
            phone = str(m["from"]) if m.get("from") else None
            bsuid = str(m["from_user_id"]) if m.get("from_user_id") else None
            if bsuid is None:
                contact = next((c for c in contacts if phone and str(c.get("wa_id")) == phone), None)
                if contact is None and len(contacts) == 1:
                    contact = contacts[0]
                bsuid = str(contact["user_id"]) if contact and contact.get("user_id") else None
            sender = bsuid or phone
            if sender is None:
                continue
            group = str(m["group_id"]) if m.get("group_id") else None
            kind, text = _content(m)
            context = m.get("context") or {}
            replied_to_us = bool(display_number) and str(context.get("from") or "") == display_number
            mentioned = bool(display_number) and f"@{display_number}" in (text or "")
            parsed.messages.append(Inbound(
                channel=self.name, bot_id=self.bot_id, external_id=str(m["id"]), sender_id=sender,
                sender_alt_id=phone if bsuid else None, chat_id=group or phone or sender, text=text, kind=kind,
                reply_to=str(m["id"]), is_group=group is not None,
                addressed=group is None or replied_to_us or mentioned,
            ))

    def link_code(self, message: Inbound) -> str | None:
        match = _LINK.match(message.text or "")
        return match.group(1) if match else None

    # -- out ------------------------------------------------------------------------------
    async def _post(self, body: dict[str, Any]) -> httpx.Response:
        return await self.client.post(f"{self._base}/{self._number}/messages", json=body,
                                      headers={"Authorization": f"Bearer {self._token}"})

    def _addressed_to(self, chat_id: str) -> dict[str, Any]:
        """A phone number is digits; a business-scoped user id looks like "US.13491208655302741918";
        anything else is a group (the Groups API's id)."""
        if chat_id.isdigit():
            return {"recipient_type": "individual", "to": chat_id}
        if "." in chat_id and chat_id.split(".", 1)[0].isalpha():
            return {"recipient_type": "individual", "recipient": chat_id}
        return {"recipient_type": "group", "to": chat_id}  # a Groups API group id

    async def send(self, message: Outgoing) -> SendResult:
        body: dict[str, Any] = {"messaging_product": "whatsapp", **self._addressed_to(message.chat_id)}
        if message.template:
            body["type"] = "template"
            body["template"] = {"name": message.template, "language": {"code": message.template_language or "en_US"},
                                "components": [{"type": "body",
                                                "parameters": [{"type": "text", "text": message.text[:1024]}]}]}
        else:
            body["type"] = "text"
            body["text"] = {"body": _FENCE_INFO.sub(r"\1\2", message.text), "preview_url": False}
        if message.reply_to:
            body["context"] = {"message_id": message.reply_to}
        try:
            response = await self._post(body)
        except httpx.HTTPError as exc:
            return transport_failure(exc)
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        answer = answer if isinstance(answer, dict) else {}
        if response.status_code == 200 and _list(answer.get("messages")):
            return SendResult(True, platform_id=str(answer["messages"][0].get("id")))
        error = answer.get("error") if isinstance(answer.get("error"), dict) else {}
        code = error.get("code")
        text = _error_text(error) if error else f"HTTP {response.status_code}"
        retry_after = _retry_after(response)
        if code == _OUTSIDE_WINDOW:
            return SendResult(False, error=text, outside_window=True)
        retryable = response.status_code in (429, 503) or response.status_code >= 500 or code in _RETRYABLE or not error
        return SendResult(False, error=text, retryable=retryable, retry_after_s=retry_after)

    async def typing(self, chat_id: str, reply_to: str | None, thread_id: str | None) -> None:
        if reply_to:
            await self._post({"messaging_product": "whatsapp", "status": "read", "message_id": reply_to,
                              "typing_indicator": {"type": "text"}})

    def window_open(self, last_inbound_ms: int | None, now_ms: int) -> bool:
        return last_inbound_ms is not None and now_ms - last_inbound_ms < WINDOW_MS

    def reminder_template(self) -> tuple[str, str] | None:
        name, language = self._template
        return (name, language) if name else None


def _content(m: dict[str, Any]) -> tuple[str, str | None]:
    """(kind, text) of a message."""
    kind = m.get("type")
    if kind == "text":
        return "text", str((m.get("text") or {}).get("body") or "")
    if kind == "button":
        return "text", str((m.get("button") or {}).get("text") or "")
    if kind == "interactive":
        reply = m.get("interactive") or {}
        chosen = reply.get(str(reply.get("type"))) or {}
        return "text", str(chosen.get("title") or "")
    if kind == "audio":
        return ("voice" if (m.get("audio") or {}).get("voice") else "audio"), None
    return _KINDS.get(str(kind), "other"), None


def _error_text(error: dict[str, Any]) -> str:
    details = (error.get("error_data") or {}).get("details") if isinstance(error.get("error_data"), dict) else None
    return f"({error.get('code')}) {error.get('message') or error.get('title') or 'error'}" + (
        f": {details}" if details else "")


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    return float(value) if value and value.isdigit() else None


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
