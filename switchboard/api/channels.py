"""The chat platforms' webhooks: verified first, recorded, answered 200 at once.

Nothing here waits for a model: a message is verified over the raw body (in constant time),
deduplicated and recorded durably (channels.intake), and the webhook answers; the turn runs in
the background (channels.worker). A request that fails verification is 401 and goes no
further; a channel that is not on answers 404.
"""

from __future__ import annotations

import logging

import orjson
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from switchboard.api.params import TextQuery
from switchboard.api.state import AppState
from switchboard.channels.base import BadPayload, Channel
from switchboard.channels.hub import ChannelHub
from switchboard.channels.whatsapp import WhatsApp
from switchboard.core.errors import NotFound, SwitchboardError

log = logging.getLogger(__name__)
HANDSHAKE = (TextQuery("hub.mode", "subscribe"), TextQuery("hub.verify_token", "The verify token configured with Meta"),
             TextQuery("hub.challenge", "Echoed back when the token matches"))


class SignatureInvalid(SwitchboardError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_signature"


class VerifyTokenMismatch(SwitchboardError):
    status = 403
    type = "invalid_request_error"
    code = "verify_token_mismatch"


def _channel(request: Request, name: str) -> tuple[ChannelHub, Channel]:
    state: AppState = request.app.state.sb
    hub = state.channels
    channel = hub.get(name)
    if channel is None:
        raise NotFound(f"The {name} channel is not configured on this server.")
    return hub, channel


def _ok(body: dict[str, object]) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


async def _receive(request: Request, name: str) -> Response:
    hub, channel = _channel(request, name)
    raw = await request.body()
    if not channel.verify(request.headers, raw):
        log.warning("%s webhook refused: bad or missing signature (from %s)", name,
                    request.client.host if request.client else "?")
        raise SignatureInvalid("The request's signature does not verify.")
    try:
        parsed = channel.parse(raw)
    except BadPayload as exc:  # signed by the platform, yet not what it documents: retrying will not help
        log.warning("%s webhook: a verified body that could not be read (%s); acknowledged", name, exc)
        return _ok({"ok": True, "ignored": str(exc)})
    if parsed.messages and name == "telegram":
        await hub.ready(name)  # the bot's username, to see mentions in groups
    outcomes = [await hub.intake.accept(channel, message) for message in parsed.messages]
    if parsed.statuses:
        await hub.statuses(channel, parsed.statuses)
    if parsed.moves:  # a Telegram group upgraded to a supergroup: never a turn
        await hub.moved(channel, parsed.moves)
        outcomes += ["moved"] * len(parsed.moves)
    return _ok({"ok": True, "outcomes": outcomes})


async def telegram_webhook(request: Request) -> Response:
    """POST /channels/telegram/webhook: Telegram's updates (X-Telegram-Bot-Api-Secret-Token)."""
    return await _receive(request, "telegram")


async def whatsapp_webhook(request: Request) -> Response:
    """POST /channels/whatsapp/webhook: WhatsApp's notifications (X-Hub-Signature-256)."""
    return await _receive(request, "whatsapp")


async def whatsapp_verify(request: Request) -> Response:
    """GET /channels/whatsapp/webhook: Meta's verification handshake (hub.challenge echoed)."""
    _, channel = _channel(request, "whatsapp")
    assert isinstance(channel, WhatsApp)
    mode, token, challenge_asked = (param.parse(request) for param in HANDSHAKE)
    challenge = channel.handshake(mode, token, challenge_asked)
    if challenge is None:
        raise VerifyTokenMismatch("hub.mode must be subscribe and hub.verify_token must match the configured token.")
    return PlainTextResponse(challenge)
