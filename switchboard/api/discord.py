"""POST /channels/discord/interactions: Discord's slash commands, verified first, answered within
Discord's 3 seconds (channels.discord.commands; the reply follows through the interaction's
webhook). A request whose Ed25519 signature does not verify, or whose timestamp is stale, is
401 and goes no further; a signed body that is not an interaction is 400; Discord off is 404."""

from __future__ import annotations

import logging

import orjson
from starlette.requests import Request
from starlette.responses import Response

from switchboard.api.channels import SignatureInvalid, _channel
from switchboard.channels.base import BadPayload
from switchboard.channels.discord import Discord, commands, interactions
from switchboard.core.errors import InvalidRequest

log = logging.getLogger(__name__)


async def discord_interactions(request: Request) -> Response:
    hub, channel = _channel(request, "discord")
    assert isinstance(channel, Discord)
    raw = await request.body()
    if not channel.verify(request.headers, raw):
        log.info("discord interaction refused: bad, missing or stale signature (from %s)",
                 request.client.host if request.client else "?")
        raise SignatureInvalid("The request's signature does not verify.")
    try:
        interaction = interactions.parse(raw)
    except BadPayload as exc:
        raise InvalidRequest(f"Not a Discord interaction: {exc}.") from None
    answer = await commands.respond(hub, channel, interaction)
    return Response(orjson.dumps(answer), media_type="application/json")
