"""Discord's slash commands: what they are (registered with `switchboard channels discord
register-commands`) and what each does when it arrives (discord.interactions says how).

    /ask text:  a question to the assistant, answered in the channel (deferred, then the reply)
    /link code: link this Discord account to a Switchboard account, privately

The answer to the interaction is decided here within its 3 seconds, after the command went
through the channel layer's intake (a fast write, no model call): deferred when a reply or a
notice will follow through the interaction's webhook, immediate otherwise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from switchboard.billing.accounts import now_ms
from switchboard.channels import replies
from switchboard.channels.discord import interactions
from switchboard.channels.discord.interactions import Interaction

if TYPE_CHECKING:
    from switchboard.channels.discord.adapter import Discord
    from switchboard.channels.hub import ChannelHub

STRING = 3
GUILD, BOT_DM = 0, 1  # the contexts a command may be used in
COMMANDS: list[dict[str, Any]] = [
    {"name": "ask", "type": 1, "description": "Ask the Switchboard assistant", "contexts": [GUILD, BOT_DM],
     "integration_types": [0],
     "options": [{"type": STRING, "name": "text", "description": "What to ask", "required": True, "max_length": 4000}]},
    {"name": "link", "type": 1, "description": "Link your Discord account to your Switchboard account (privately)",
     "contexts": [GUILD, BOT_DM], "integration_types": [0],
     "options": [{"type": STRING, "name": "code", "description": "The code from `switchboard channels link-code`",
                  "required": True, "min_length": 4, "max_length": 64}]},
]


async def register(channel: Discord, guild_id: str | None = None) -> list[dict[str, Any]]:
    """Put the commands in place of the application's (globally, or in one server: at once)."""
    app = channel.application_id
    path = f"/applications/{app}/guilds/{guild_id}/commands" if guild_id else f"/applications/{app}/commands"
    answer = await channel.rest.call("PUT", "PUT " + path, app, path, json=COMMANDS)
    if not answer.result.ok:
        raise RuntimeError(answer.result.error or "refused")
    body = answer.response.json() if answer.response is not None else []
    return body if isinstance(body, list) else []


async def respond(hub: ChannelHub, channel: Discord, interaction: Interaction) -> dict[str, Any]:
    """The interaction's immediate answer (and, through the intake, whatever follows it)."""
    if interaction.type == interactions.PING:
        return {"type": interactions.PONG}
    if interaction.type == interactions.AUTOCOMPLETE:
        return {"type": interactions.AUTOCOMPLETE_RESULT, "data": {"choices": []}}
    if interaction.type != interactions.APPLICATION_COMMAND:
        return interactions.message("That does not do anything any more.")
    if interaction.user_id is None or interaction.channel_id is None:
        return interactions.message("I can't tell who sent this or where from.")
    name = interaction.command
    if name == "ask":
        text = interaction.options.get("text", "").strip()
        if not text:
            return interactions.message("Ask me something: /ask followed by your question.")
        message, private = interactions.as_message(interaction, channel.bot_id, text, private=False), False
    elif name == "link":
        code = interaction.options.get("code", "").strip()
        message, private = interactions.as_message(interaction, channel.bot_id, f"LINK {code}", private=True), True
        if channel.link_code(message) is None:
            return interactions.message(replies.bad_code("unknown", channel.link_hint))
    else:
        return interactions.message(f"I don't know /{name}: try /ask or /link.")
    at = now_ms()
    await hub.runtime.runner.run(lambda c: interactions.keep(c, interaction.id, interaction.token,
                                                             ephemeral=private, at=at))
    outcome = await hub.intake.accept(channel, message)
    if outcome in ("recorded", "duplicate"):
        return interactions.deferred(ephemeral=private)  # the reply follows through the webhook
    if outcome in ("linked", "refused", "told"):
        return interactions.deferred(ephemeral=True)  # the channel layer's notice follows, privately
    if name == "link":  # ignored: too many wrong codes this hour
        return interactions.message("Too many wrong codes: try again in an hour with a new one.")
    return interactions.message(replies.how_to_link(channel.link_hint))  # not linked, told within the hour
