"""A fake Telegram Bot API on a real port, written from https://core.telegram.org/bots/api.

Requests are `POST {base}/bot<token>/<method>` with a JSON body; a wrong token is 401
`{"ok": false, "error_code": 401, "description": "Unauthorized"}`, an unknown method 404.
Answers are `{"ok": true, "result": ...}`. What it checks like Telegram does:

- sendMessage: `chat_id` and a non-empty `text`; with `parse_mode` HTML the text is parsed
  (only Telegram's tags, properly nested, entities unescaped) and its length after parsing,
  in UTF-16 code units, must be at most 4,096 ("Bad Request: message is too long");
- sendChatAction: a known action; setWebhook: `secret_token` of 1-256 of A-Z a-z 0-9 _ -.

Knobs: `fail(method, status, retry_after=..., times=n, chat_id=...)` answers the next calls
(naming that chat, if given) with an error (429 with `parameters.retry_after`, 5xx, 403 "bot
was blocked by the user"...); `stall(s)`
accepts the next sendMessage but answers only after `s` seconds (a client that gave up cannot
know it arrived). `upgrade(old, new)` makes group `old` a supergroup `new`, as Telegram does:
from then on every call naming the old chat is refused with 400 "Bad Request: group chat was
upgraded to a supergroup chat" and `parameters.migrate_to_chat_id` (ResponseParameters), and
`migration_updates(...)` builds the two service messages the bot receives about it. Every call
is recorded in `calls`; accepted messages in `sent` with the text as the user sees it.

Updates to a webhook are built with `message_update(...)` and POSTed with `post_update`, the
secret in X-Telegram-Bot-Api-Secret-Token, as Telegram does.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import threading
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.support.servers import ServerThread

ALLOWED_TAGS = {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "span", "tg-spoiler", "a", "code", "pre",
                "blockquote", "tg-emoji"}
ACTIONS = {"typing", "upload_photo", "record_video", "upload_video", "record_voice", "upload_voice",
           "upload_document", "choose_sticker", "find_location", "record_video_note", "upload_video_note"}
_SECRET = re.compile(r"[A-Za-z0-9_-]{1,256}")


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


class _Entities(HTMLParser):
    """Telegram's HTML parse mode: the visible text, or the error Telegram would give."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.stack: list[str] = []
        self.error: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ALLOWED_TAGS:
            self.error = self.error or f'Unsupported start tag "{tag}"'
        self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.error = self.error or f'Unexpected end tag "{tag}"'
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse_html(text: str) -> tuple[str, str | None]:
    parser = _Entities()
    parser.feed(text)
    parser.close()
    if parser.stack and parser.error is None:
        parser.error = f'Can\'t find end tag corresponding to start tag "{parser.stack[-1]}"'
    return "".join(parser.text), parser.error


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    at: float = field(default_factory=time.monotonic)


class FakeTelegram:
    def __init__(self, token: str = "123456789:AAHfakeTokenForTests", username: str = "SwitchboardTestBot") -> None:
        self.token = token
        self.bot_id = int(token.split(":")[0])
        self.username = username
        self.calls: list[Call] = []
        self.sent: list[dict[str, Any]] = []  # accepted sendMessage: params plus "visible" text
        self.webhook: dict[str, Any] = {}
        self._failures: list[tuple[str, int, int | None, str | None, str | None]] = []
        self._stalls: list[float] = []
        self._upgraded: dict[str, int] = {}  # a group's old chat id -> its supergroup's
        self._ids = itertools.count(1000)
        self._lock = threading.Lock()
        self._server = ServerThread(Starlette(routes=[Route("/bot{token}/{method}", self._call, methods=["GET", "POST"])]))
        self.url = self._server.url

    def __enter__(self) -> "FakeTelegram":
        self._server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.__exit__(*exc)

    # -- knobs ---------------------------------------------------------------------------------
    def fail(self, method: str, status: int, *, retry_after: int | None = None, times: int = 1,
             description: str | None = None, chat_id: int | None = None) -> None:
        where = None if chat_id is None else str(chat_id)
        with self._lock:
            self._failures.extend([(method, status, retry_after, description, where)] * times)

    def stall(self, seconds: float) -> None:
        """Accept the next sendMessage, but answer only after `seconds`."""
        self._stalls.append(seconds)

    def upgrade(self, old_chat_id: int, new_chat_id: int) -> None:
        """Group `old_chat_id` is now supergroup `new_chat_id`; the old id is refused from now on."""
        with self._lock:
            self._upgraded[str(old_chat_id)] = new_chat_id

    def calls_of(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def texts(self, chat_id: int | str | None = None) -> list[str]:
        return [m["visible"] for m in self.sent if chat_id is None or str(m["chat_id"]) == str(chat_id)]

    # -- the API -------------------------------------------------------------------------------
    async def _call(self, request: Request) -> JSONResponse:
        if request.path_params["token"] != self.token:
            return _error(401, "Unauthorized")
        method = request.path_params["method"]
        try:
            params = await request.json() if await request.body() else dict(request.query_params)
        except ValueError:
            return _error(400, "Bad Request: invalid JSON")
        self.calls.append(Call(method, params))
        with self._lock:
            failure = next((f for f in self._failures
                            if f[0] == method and f[4] in (None, str(params.get("chat_id")))), None)
            if failure is not None:
                self._failures.remove(failure)
        if failure is not None:
            _, status, retry_after, description, _ = failure
            if status == 429:
                return _error(429, description or f"Too Many Requests: retry after {retry_after}",
                              {"retry_after": retry_after or 1})
            return _error(status, description or {403: "Forbidden: bot was blocked by the user"}.get(
                status, "Internal Server Error"))
        moved_to = self._upgraded.get(str(params.get("chat_id")))
        if moved_to is not None:
            return _error(400, "Bad Request: group chat was upgraded to a supergroup chat",
                          {"migrate_to_chat_id": moved_to})
        handler = {"getMe": self._get_me, "sendMessage": self._send_message, "sendChatAction": self._chat_action,
                   "setWebhook": self._set_webhook, "getWebhookInfo": self._webhook_info}.get(method)
        if handler is None:
            return _error(404, "Not Found")
        return await handler(params)

    async def _get_me(self, params: dict[str, Any]) -> JSONResponse:
        return _ok({"id": self.bot_id, "is_bot": True, "first_name": "Switchboard", "username": self.username,
                    "can_join_groups": True, "can_read_all_group_messages": False, "supports_inline_queries": False})

    async def _send_message(self, params: dict[str, Any]) -> JSONResponse:
        if "chat_id" not in params:
            return _error(400, "Bad Request: chat_id is empty")
        text = params.get("text")
        if not isinstance(text, str) or not text.strip():
            return _error(400, "Bad Request: message text is empty")
        visible = text
        if params.get("parse_mode") == "HTML":
            visible, problem = parse_html(text)
            if problem:
                return _error(400, f"Bad Request: can't parse entities: {problem}")
        elif params.get("parse_mode") not in (None, ""):
            return _error(400, "Bad Request: unsupported parse_mode")
        if not visible.strip():
            return _error(400, "Bad Request: message text is empty")
        if utf16_len(visible) > 4096:
            return _error(400, "Bad Request: message is too long")
        message_id = next(self._ids)
        self.sent.append({**params, "visible": visible, "message_id": message_id})
        if self._stalls:
            await asyncio.sleep(self._stalls.pop(0))
        chat_id = params["chat_id"]
        return _ok({"message_id": message_id, "date": int(time.time()),
                    "chat": {"id": int(chat_id) if str(chat_id).lstrip("-").isdigit() else chat_id, "type": "private"},
                    "from": {"id": self.bot_id, "is_bot": True, "first_name": "Switchboard", "username": self.username},
                    "text": visible})

    async def _chat_action(self, params: dict[str, Any]) -> JSONResponse:
        if "chat_id" not in params or params.get("action") not in ACTIONS:
            return _error(400, "Bad Request: wrong parameter action in request")
        return _ok(True)

    async def _set_webhook(self, params: dict[str, Any]) -> JSONResponse:
        secret = params.get("secret_token")
        if secret is not None and not _SECRET.fullmatch(str(secret)):
            return _error(400, "Bad Request: secret token contains unallowed characters")
        if not params.get("url"):
            return _error(400, "Bad Request: bad webhook: An HTTPS URL must be provided for webhook")
        self.webhook = dict(params)
        return JSONResponse({"ok": True, "result": True, "description": "Webhook was set"})

    async def _webhook_info(self, params: dict[str, Any]) -> JSONResponse:
        return _ok({"url": self.webhook.get("url", ""), "has_custom_certificate": False, "pending_update_count": 0,
                    "allowed_updates": self.webhook.get("allowed_updates", [])})


def _ok(result: Any) -> JSONResponse:
    return JSONResponse({"ok": True, "result": result})


def _error(status: int, description: str, parameters: dict[str, Any] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if parameters:
        body["parameters"] = parameters
    return JSONResponse(body, status)


# -- updates, as Telegram sends them --------------------------------------------------------------
_update_ids = itertools.count(500_000)
_message_ids = itertools.count(1)


def user(user_id: int, first_name: str = "Ada", *, is_bot: bool = False, username: str | None = None) -> dict[str, Any]:
    u: dict[str, Any] = {"id": user_id, "is_bot": is_bot, "first_name": first_name, "language_code": "en"}
    if username:
        u["username"] = username
    return u


def message_update(sender: int, text: str | None = None, *, chat_id: int | None = None, chat_type: str = "private",
                   update_id: int | None = None, entities: list[dict[str, Any]] | None = None,
                   reply_to: dict[str, Any] | None = None, is_bot: bool = False, extra: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
    """An Update with a message from user `sender` in chat `chat_id` (their private chat by default)."""
    chat: dict[str, Any] = {"id": sender if chat_id is None else chat_id, "type": chat_type}
    if chat_type == "private":
        chat["first_name"] = "Ada"
    else:
        chat["title"] = "Test group"
    message: dict[str, Any] = {"message_id": next(_message_ids), "from": user(sender, is_bot=is_bot), "chat": chat,
                               "date": int(time.time())}
    if text is not None:
        message["text"] = text
    if entities:
        message["entities"] = entities
    if reply_to is not None:
        message["reply_to_message"] = reply_to
    message.update(extra or {})
    return {"update_id": next(_update_ids) if update_id is None else update_id, "message": message}


def migration_updates(old_chat_id: int, new_chat_id: int, by: int, title: str = "Test group"
                      ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The two service messages a bot in group `old_chat_id` gets when user `by` upgrades it to
    supergroup `new_chat_id`: in the old group, `migrate_to_chat_id`; in the new, `migrate_from_chat_id`."""
    when = int(time.time())
    old = {"message_id": next(_message_ids), "from": user(by), "date": when,
           "chat": {"id": old_chat_id, "type": "group", "title": title}, "migrate_to_chat_id": new_chat_id}
    new = {"message_id": 1, "from": user(by), "date": when,
           "chat": {"id": new_chat_id, "type": "supergroup", "title": title}, "migrate_from_chat_id": old_chat_id}
    return {"update_id": next(_update_ids), "message": old}, {"update_id": next(_update_ids), "message": new}


def mention(text: str, username: str) -> list[dict[str, Any]]:
    """The `mention` entity of @username in `text` (offsets in UTF-16 code units)."""
    at = text.index("@" + username)
    return [{"type": "mention", "offset": utf16_len(text[:at]), "length": utf16_len("@" + username)}]


def post_update(webhook_url: str, secret: str | None, update: dict[str, Any], *, timeout: float = 10) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if secret is not None:
        headers["x-telegram-bot-api-secret-token"] = secret
    return httpx.post(webhook_url, json=update, headers=headers, timeout=timeout)
