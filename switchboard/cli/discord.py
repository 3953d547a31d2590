"""`switchboard channels discord ...`: Discord's side of the channel (docs/channels.md)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import typer
from rich.markup import escape

from switchboard.channels.discord import Discord, commands
from switchboard.cli.common import error_line, load, out

discord_app = typer.Typer(help="Discord's side of the channel.", no_args_is_help=True)


@discord_app.command("register-commands")
def register_commands(guild: str = typer.Option(None, "--guild", help="Register in this server only (at once), "
                                                                        "instead of everywhere the bot is")) -> None:
    """Register the slash commands /ask and /link with Discord (replacing the application's own).

    Point the application's Interactions Endpoint URL at https://YOUR-HOST/channels/discord/interactions."""
    settings = load()
    config = settings.channels.discord
    if config is None:
        error_line(escape("Discord is not configured: add a [channels.discord] section (docs/channels.md)"))

    async def register() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(timeout=30) as client:
            return await commands.register(Discord(config, client), guild)

    try:
        registered = asyncio.run(register())
    except ValueError as exc:  # the section is incomplete (Discord's constructor says what is missing)
        error_line(escape(str(exc)))
    except RuntimeError as exc:
        error_line(escape(f"Discord refused the commands: {exc}"))
    names = ", ".join("/" + str(c.get("name")) for c in registered)
    where = f"in server {guild}" if guild else "for every server the bot is in and its direct messages"
    out.print(f"Registered {names} {where}.", soft_wrap=True, highlight=False, markup=False)
