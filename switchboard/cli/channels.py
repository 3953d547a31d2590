"""`switchboard channels ...`: link codes, each channel's state, Telegram's webhook (docs/channels.md)."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any, NoReturn

import httpx
import typer
from rich.markup import escape
from sqlalchemy import Connection, func, select

from switchboard.channels import connections, linking
from switchboard.channels.hub import build_channels
from switchboard.channels.telegram import Telegram
from switchboard.cli.common import err, error_line, load, open_store, out, utc
from switchboard.cli.discord import discord_app
from switchboard.core.config import Settings
from switchboard.store.channels_schema import channel_identities, channel_inbox, channel_outbox, channel_state

channels_app = typer.Typer(help="Chat channels: Telegram, WhatsApp, Discord (docs/channels.md).", no_args_is_help=True)
telegram_app = typer.Typer(help="Telegram's side of the channel.", no_args_is_help=True)
channels_app.add_typer(telegram_app, name="telegram")
channels_app.add_typer(discord_app, name="discord")
NAMES = ("telegram", "whatsapp", "discord")


@channels_app.command("link-code")
def link_code(email: str) -> None:
    """A one-time code that links a chat to the user's account (prints only the code).

    How to use it goes to stderr. It works once and expires (channels.link_code_ttl_s)."""
    store = open_store()
    user = store.user(email)
    ttl = store.settings.channels.link_code_ttl_s
    code = store.write(lambda conn: linking.create_code(conn, user.id, ttl))
    bot = store.read(lambda conn: conn.execute(select(channel_state.c.detail)
                                               .where(channel_state.c.channel == "telegram")).scalar())
    deep_link = f" (or open https://t.me/{bot.lstrip('@')}?start={code})" if bot else ""
    err.print(f"A link code for {user.email}, valid once for {ttl // 60} minutes. On Telegram send /start {code} "
              f"to the bot{deep_link}; on WhatsApp send LINK {code}; on Discord use /link {code}.",
              soft_wrap=True, highlight=False, markup=False)
    sys.stdout.write(code + "\n")


@channels_app.command("status")
def status(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Each channel: on or off (and why), what waits, what was not delivered, the last error.

    Also linked identities, the last message in and out, and Telegram's own view of its webhook."""
    store = open_store()
    settings = store.settings
    report = asyncio.run(_reports(settings, {name: store.read(lambda conn, n=name: _figures(conn, n)) for name in NAMES}))
    if as_json:
        sys.stdout.write(json.dumps(report) + "\n")
        return
    for r in report:
        detail = f" ({r['detail']})" if r.get("detail") else ""
        out.print(f"[bold]{r['channel']}[/bold]: {escape(r['state'] + detail)}", soft_wrap=True, highlight=False)
        if r["state"] != "on" and not r["linked"] and not r["received"]:
            continue
        out.print(f"  linked identities: {r['linked']}; messages received: {r['received']}, waiting: "
                  f"{r['waiting']}; replies delivered: {r['delivered']}, waiting: {r['sending']}, "
                  f"not delivered: {r['failed']}", soft_wrap=True, highlight=False)
        out.print(f"  last message in: {utc(r['last_in_ms'])}; last delivery: {utc(r['last_out_ms'])}",
                  highlight=False)
        if r.get("last_error"):
            out.print(f"  last error ({utc(r['last_error_ms'])}): {r['last_error']}", soft_wrap=True,
                      highlight=False, markup=False)
        if r.get("webhook"):
            out.print(f"  Telegram's webhook: {r['webhook']}", soft_wrap=True, highlight=False, markup=False)
        if r.get("connection"):
            out.print(f"  connection: {r['connection']}", soft_wrap=True, highlight=False, markup=False)


def _figures(conn: Connection, name: str) -> dict[str, Any]:
    inbox_by = dict(conn.execute(select(channel_inbox.c.status, func.count()).where(channel_inbox.c.channel == name)
                                 .group_by(channel_inbox.c.status)).all())
    outbox_by = dict(conn.execute(select(channel_outbox.c.status, func.count()).where(channel_outbox.c.channel == name)
                                  .group_by(channel_outbox.c.status)).all())
    state = conn.execute(select(channel_state).where(channel_state.c.channel == name)).first()
    return {
        "linked": int(conn.execute(select(func.count()).select_from(channel_identities).where(
            channel_identities.c.channel == name, channel_identities.c.user_id.is_not(None))).scalar_one()),
        "received": int(sum(inbox_by.values())),
        "waiting": int(inbox_by.get("pending", 0) + inbox_by.get("running", 0)),
        "delivered": int(outbox_by.get("delivered", 0)),
        "sending": int(outbox_by.get("pending", 0) + outbox_by.get("sending", 0)),
        "failed": int(outbox_by.get("failed", 0)),
        "last_in_ms": conn.execute(select(func.max(channel_inbox.c.received_ms))
                                   .where(channel_inbox.c.channel == name)).scalar(),
        "last_out_ms": conn.execute(select(func.max(channel_outbox.c.delivered_ms))
                                    .where(channel_outbox.c.channel == name)).scalar(),
        "detail": state.detail if state else None,
        "last_error": state.last_error if state else None,
        "last_error_ms": state.last_error_ms if state else None,
        "connection": _connection(conn, name),
    }


def _connection(conn: Connection, name: str) -> str | None:
    """Who holds a channel's one connection (Discord's Gateway), if it has one."""
    held = connections.holder(conn, name)
    if held is None:
        return None
    if held.process_id is None:
        return "not held by any server process" + (" (its session can be resumed)" if held.session.session_id else "")
    since = utc(held.connected_ms) if held.connected_ms else "?"
    return f"held by server process {held.process_id} since {since}; lease until {utc(held.lease_until_ms)}"


async def _reports(settings: Settings, figures: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(timeout=10) as client:
        on, off = build_channels(settings, client)
        reports = []
        for name in NAMES:
            if name in on:
                state = "on"
            elif name in off:
                state = f"off: {off[name]}"
            else:
                state = f"off: no [channels.{name}] section in the configuration"
            report = {"channel": name, "state": state, **figures[name]}
            channel = on.get(name)
            if isinstance(channel, Telegram):
                report["webhook"] = await _webhook_info(channel)
            reports.append(report)
        return reports


async def _webhook_info(channel: Telegram) -> str:
    try:
        info = await channel.webhook_info()
    except httpx.HTTPError as exc:
        return f"Telegram could not be reached ({type(exc).__name__})"
    if not info.get("ok"):
        return f"Telegram refused: {info.get('description')}"
    result = info.get("result") or {}
    text = f"{result.get('url') or 'not set'}; {result.get('pending_update_count', 0)} update(s) waiting"
    if result.get("last_error_message"):
        text += f"; Telegram's last error: {result['last_error_message']} (at {utc(int(result.get('last_error_date', 0)) * 1000)})"
    return text


def _fail(message: str) -> NoReturn:
    error_line(escape(message))  # (square brackets are text here, not markup)


@telegram_app.command("set-webhook")
def set_webhook(url: str) -> None:
    """Register URL (https://YOUR-HOST/channels/telegram/webhook) with Telegram.

    With the secret token from TELEGRAM_WEBHOOK_SECRET, which every update must then carry."""
    settings = load()
    config = settings.channels.telegram
    if config is None:
        _fail("Telegram is not configured: add a [channels.telegram] section (docs/channels.md)")
    if not config.bot_token() or not config.webhook_secret():
        _fail(f"Telegram needs {config.bot_token_env} and {config.webhook_secret_env} in the environment")

    async def register() -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=30) as client:
            return await Telegram(config, client).set_webhook(url)

    try:
        answer = asyncio.run(register())
    except httpx.HTTPError as exc:
        _fail(f"Telegram could not be reached at {config.api_base_url} ({type(exc).__name__})")
    if not answer.get("ok"):
        _fail(f"Telegram refused the webhook: {answer.get('description') or answer}")
    out.print(f"Telegram now sends the bot's updates to {url}, with the secret token. "
              "Check with `switchboard channels status`.", soft_wrap=True, highlight=False, markup=False)
