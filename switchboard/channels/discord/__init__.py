"""Discord: direct messages and mentions over the Gateway websocket (one connection per bot,
held by one server process), slash commands at the interactions endpoint, replies through the
shared channel layer. See adapter.py (the platform's wire format), gateway.py (the websocket
protocol), keeper.py (which process holds it), interactions.py (slash commands), rest.py (the
HTTP API and its rate limits), commands.py (registering the commands); docs/channels.md."""

from switchboard.channels.discord.adapter import Discord

__all__ = ["Discord"]
