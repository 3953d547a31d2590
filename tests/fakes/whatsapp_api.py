"""A fake WhatsApp Cloud API (Meta Graph API) on a real port, written from Meta's documentation.

`POST /{version}/{phone_number_id}/messages` with `Authorization: Bearer <access token>`:

- a text message `{"messaging_product": "whatsapp", "recipient_type": "individual", "to": PHONE
  (or "recipient": BSUID), "type": "text", "text": {"body": ...}}`: the body at most 4,096
  characters; answered `{"messaging_product", "contacts": [{"input", "wa_id"}], "messages":
  [{"id": "wamid..."}]}`. Sent outside the 24-hour customer service window (no message from
  that user in the last 24 hours), it is accepted and then fails: a `statuses` webhook with
  status `failed` and error 131047 is POSTed to `webhook_url`, signed, as Meta does;
- a template message: the template must be one of `templates` (name, language);
- a read receipt with `typing_indicator`: `{"success": true}` for a message id it delivered.

Errors are Graph API errors: `{"error": {"message", "type", "code", "error_data": {"messaging_product",
"details"}, "fbtrace_id"}}` (190 for a bad token, 100 for a bad parameter). Knobs:
`fail(status, code, times)` (the next messages sent); `users_wrote[...]` (set by `deliver`) opens the window.

Webhook payloads are built with `text_message(...)`, `status_update(...)`, and delivered with
`deliver(...)`, signed with the app secret in X-Hub-Signature-256.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import threading
import time
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.support.servers import ServerThread

VERSION = "v23.0"
WINDOW_S = 24 * 3600
_wamids = itertools.count(1)


def wamid() -> str:
    return f"wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQz{next(_wamids):012d}AA=="


class FakeWhatsApp:
    def __init__(self, *, access_token: str = "EAAfakeToken", app_secret: str = "fake-app-secret",
                 phone_number_id: str = "106540352242922", display_phone_number: str = "15550783881") -> None:
        self.access_token, self.app_secret = access_token, app_secret
        self.phone_number_id, self.display_phone_number = phone_number_id, display_phone_number
        self.templates: set[tuple[str, str]] = set()
        self.requests: list[dict[str, Any]] = []  # every POST body
        self.sent: list[dict[str, Any]] = []  # accepted messages (text and template)
        self.typing: list[str] = []  # message ids a typing indicator was shown for
        self.users_wrote: dict[str, float] = {}  # phone or BSUID -> when they last wrote (time.time())
        self.delivered_ids: set[str] = set()  # inbound wamids (what read receipts may name)
        self.webhook_url: str | None = None  # where status webhooks go
        self._failures: list[tuple[int, int, str]] = []
        self._lock = threading.Lock()
        self._server = ServerThread(Starlette(routes=[
            Route("/" + VERSION + "/{phone_id}/messages", self._messages, methods=["POST"])]))
        self.url = self._server.url
        self.base_url = f"{self.url}/{VERSION}"

    def __enter__(self) -> "FakeWhatsApp":
        self._server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.__exit__(*exc)

    def fail(self, status: int, code: int, *, times: int = 1, message: str = "Service temporarily unavailable") -> None:
        with self._lock:
            self._failures.extend([(status, code, message)] * times)

    def texts(self, to: str | None = None) -> list[str]:
        return [m["text"]["body"] for m in self.sent if m.get("type") == "text" and (to is None or _to(m) == to)]

    # -- the API -------------------------------------------------------------------------------
    async def _messages(self, request: Request) -> JSONResponse:
        if request.headers.get("authorization") != f"Bearer {self.access_token}":
            return _error(401, 190, "Invalid OAuth access token - Cannot parse access token", "OAuthException")
        if request.path_params["phone_id"] != self.phone_number_id:
            return _error(400, 100, f"Unsupported post request. Object with ID '{request.path_params['phone_id']}' "
                          "does not exist")
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(400, 100, "Invalid parameter", details="the body is not JSON")
        self.requests.append(body)
        if body.get("messaging_product") != "whatsapp":
            return _error(400, 100, "Invalid parameter", details="messaging_product must be whatsapp")
        if body.get("status") == "read":
            if body.get("message_id") not in self.delivered_ids:
                return _error(400, 100, "Invalid parameter", details="message_id is not a received message")
            if body.get("typing_indicator") is not None:
                if (body["typing_indicator"] or {}).get("type") != "text":
                    return _error(400, 100, "Invalid parameter", details="typing_indicator.type must be text")
                self.typing.append(body["message_id"])
            return JSONResponse({"success": True})
        with self._lock:  # (failures are for messages sent; read receipts and typing go through)
            failure = self._failures.pop(0) if self._failures else None
        if failure is not None:
            status, code, message = failure
            return _error(status, code, message)
        to = _to(body)
        if not to:
            return _error(400, 100, "Invalid parameter", details="to or recipient is required")
        kind = body.get("type", "text")
        if kind == "text":
            text = (body.get("text") or {}).get("body")
            if not isinstance(text, str) or not text:
                return _error(400, 100, "Invalid parameter", details="text.body is required")
            if len(text) > 4096:
                return _error(400, 100, "Invalid parameter", details="text.body must be at most 4096 characters")
        elif kind == "template":
            template = body.get("template") or {}
            if (template.get("name"), (template.get("language") or {}).get("code")) not in self.templates:
                return _error(404, 132001, "Template name does not exist in the translation",
                              details=f"template name ({template.get('name')}) does not exist")
        else:
            return _error(400, 100, "Invalid parameter", details=f"unsupported type {kind}")
        message_id = wamid()
        self.sent.append({**body, "id": message_id})
        answer = JSONResponse({"messaging_product": "whatsapp", "contacts": [{"input": to, "wa_id": to}],
                               "messages": [{"id": message_id}]})
        if kind == "text" and time.time() - self.users_wrote.get(to, 0) > WINDOW_S and self.webhook_url:
            answer.background = BackgroundTask(self._report_failure, message_id, to)
        return answer

    async def _report_failure(self, message_id: str, to: str) -> None:
        """Meta reports a free-form message outside the window asynchronously, as a failed status."""
        assert self.webhook_url is not None
        payload = status_update(self.phone_number_id, self.display_phone_number, message_id, to, "failed", errors=[{
            "code": 131047, "title": "Re-engagement message", "message": "Re-engagement message",
            "error_data": {"details": "Message failed to send because more than 24 hours have passed since the "
                                      "customer last replied to this number."}}])
        body, signature = signed(self.app_secret, payload)
        async with httpx.AsyncClient() as client:
            await client.post(self.webhook_url, content=body,
                              headers={"content-type": "application/json", "x-hub-signature-256": signature})

    # -- inbound -------------------------------------------------------------------------------
    def deliver(self, webhook_url: str, payload: dict[str, Any], *, secret: str | None = None) -> httpx.Response:
        """POST a notification to the gateway, signed as Meta signs it; the senders' windows open."""
        for entry in payload.get("entry", []):
            for change in entry.get("changes", []):
                for m in change.get("value", {}).get("messages", []):
                    self.delivered_ids.add(m["id"])
                    for who in (m.get("from"), m.get("from_user_id")):
                        if who:
                            self.users_wrote[who] = time.time()
        body, signature = signed(secret or self.app_secret, payload)
        return httpx.post(webhook_url, content=body, timeout=10,
                          headers={"content-type": "application/json", "x-hub-signature-256": signature})


def _to(body: dict[str, Any]) -> str | None:
    return body.get("to") or body.get("recipient")


def _error(status: int, code: int, message: str, type_: str = "OAuthException", *, details: str | None = None
           ) -> JSONResponse:
    return JSONResponse({"error": {"message": f"(#{code}) {message}", "type": type_, "code": code,
                                   "error_data": {"messaging_product": "whatsapp", "details": details or message},
                                   "fbtrace_id": "AfakeTraceId"}}, status)


def signed(app_secret: str, payload: dict[str, Any]) -> tuple[bytes, str]:
    body = json.dumps(payload).encode()
    return body, "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def notification(phone_number_id: str, display_phone_number: str, value: dict[str, Any]) -> dict[str, Any]:
    return {"object": "whatsapp_business_account", "entry": [{"id": "102290129340398", "changes": [{
        "field": "messages",
        "value": {"messaging_product": "whatsapp",
                  "metadata": {"display_phone_number": display_phone_number, "phone_number_id": phone_number_id},
                  **value}}]}]}


def text_message(fake: FakeWhatsApp, sender: str | None, text: str | None = None, *, bsuid: str | None = None,
                 message_id: str | None = None, group_id: str | None = None, kind: str = "text",
                 context: dict[str, Any] | None = None, name: str = "Ada") -> dict[str, Any]:
    """A `messages` notification from `sender` (a phone number; None: only the business-scoped id)."""
    message: dict[str, Any] = {"id": message_id or wamid(), "timestamp": str(int(time.time())), "type": kind}
    contact: dict[str, Any] = {"profile": {"name": name}}
    if sender:
        message["from"] = sender
        contact["wa_id"] = sender
    if bsuid:
        message["from_user_id"] = bsuid
        contact["user_id"] = bsuid
    if kind == "text":
        message["text"] = {"body": text or ""}
    elif kind == "audio":
        message["audio"] = {"id": "1234", "mime_type": "audio/ogg; codecs=opus", "voice": True}
    elif kind == "image":
        message["image"] = {"id": "5678", "mime_type": "image/jpeg", "sha256": "abc"}
    if group_id:
        message["group_id"] = group_id
    if context:
        message["context"] = context
    return notification(fake.phone_number_id, fake.display_phone_number, {"contacts": [contact], "messages": [message]})


def status_update(phone_number_id: str, display_phone_number: str, message_id: str, recipient: str, status: str,
                  errors: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": message_id, "status": status, "timestamp": str(int(time.time())),
                             "recipient_id": recipient}
    if errors:
        entry["errors"] = errors
    else:
        entry["pricing"] = {"billable": True, "pricing_model": "PMP", "category": "service"}
    return notification(phone_number_id, display_phone_number, {"statuses": [entry]})
