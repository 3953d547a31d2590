"""Discord's slash commands, as they arrive at POST /channels/discord/interactions.

Every request is signed by Discord with the application's Ed25519 key: `X-Signature-Ed25519`
(hex) over `X-Signature-Timestamp` + the raw body. A request that does not verify is 401 (Discord
sends forged ones on purpose and removes endpoints that accept them), and so is one whose
timestamp is more than five minutes off: a request recorded and sent again later.

An interaction must be answered within 3 seconds, so nothing here waits for a model:

- PING (type 1): PONG.
- /ask TEXT: recorded in the inbox like any message (deduplicated by the interaction's id),
  answered at once with a deferred response ("thinking..."); the turn runs in the background and
  its reply replaces that message through the interaction's webhook, longer replies continuing
  as follow-ups (adapter.Discord.send), within the token's 15 minutes.
- /link CODE: the channel layer's link command, privately (ephemeral): deferred, then the
  outcome ("Linked", or why not) in place of the deferred message.
- A sender who is not linked yet gets how to link, privately, at once.

The interaction's token is kept (discord_interactions) until its reply is out: the process that
sends the reply is not always the one that received the command.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Connection, delete, select, update

from switchboard.channels.base import BadPayload, Inbound
from switchboard.store.channels_schema import discord_interactions
from switchboard.store.conflict import insert_or_ignore

SIGNATURE_HEADER = "x-signature-ed25519"
TIMESTAMP_HEADER = "x-signature-timestamp"
MAX_SKEW_S = 300
TOKEN_LIFETIME_MS = 15 * 60 * 1000
KEEP_MS = 24 * 3600 * 1000
MAX_TOKEN = 2000  # an interaction token's length: far more than Discord's
_SNOWFLAKE = re.compile(r"[0-9]{1,20}")
ROUTE_PREFIX = "i:"  # an Inbound's thread_id that routes its reply through an interaction's webhook

PING, APPLICATION_COMMAND, MESSAGE_COMPONENT, AUTOCOMPLETE, MODAL_SUBMIT = 1, 2, 3, 4, 5
PONG, MESSAGE, DEFERRED_MESSAGE, AUTOCOMPLETE_RESULT = 1, 4, 5, 8
EPHEMERAL = 1 << 6


def verify(key: Ed25519PublicKey, headers: Mapping[str, str], raw: bytes, *, now_s: float | None = None) -> bool:
    """The signature over timestamp + body, and a timestamp within five minutes of now."""
    signature, stamp = headers.get(SIGNATURE_HEADER), headers.get(TIMESTAMP_HEADER)
    if not signature or not stamp or len(stamp) > 20:
        return False
    try:
        key.verify(bytes.fromhex(signature), stamp.encode("ascii") + raw)
        sent = int(stamp)
    except (InvalidSignature, ValueError, UnicodeEncodeError):
        return False
    now = time.time() if now_s is None else now_s
    return abs(now - sent) <= MAX_SKEW_S


@dataclass(frozen=True, slots=True)
class Interaction:
    id: str
    type: int
    token: str
    application_id: str
    command: str | None  # the slash command's name
    options: dict[str, str]  # its options' values, by name
    user_id: str | None
    user_is_bot: bool
    channel_id: str | None
    guild_id: str | None


def parse(raw: bytes) -> Interaction:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadPayload("the body is not JSON") from None
    if not isinstance(body, dict):
        raise BadPayload("not an interaction")
    kind, ident, token = body.get("type"), _snowflake(body.get("id")), body.get("token")
    if isinstance(kind, bool) or not isinstance(kind, int) or ident is None or not isinstance(token, str) \
            or not 0 < len(token) <= MAX_TOKEN:
        raise BadPayload("not an interaction (id, type and token are required)")
    data = _dict(body.get("data"))
    member = _dict(body.get("member"))
    user = _dict(member.get("user")) or _dict(body.get("user"))
    options = {str(o["name"]): str(o["value"]) for o in _list(data.get("options"))
               if isinstance(o, dict) and isinstance(o.get("name"), str) and isinstance(o.get("value"), (str, int, float))}
    return Interaction(
        id=ident, type=kind, token=token, application_id=_snowflake(body.get("application_id")) or "",
        command=data.get("name") if isinstance(data.get("name"), str) else None, options=options,
        user_id=_snowflake(user.get("id")), user_is_bot=user.get("bot") is True,
        channel_id=_snowflake(body.get("channel_id")) or _snowflake(_dict(body.get("channel")).get("id")),
        guild_id=_snowflake(body.get("guild_id")),
    )


def _snowflake(value: object) -> str | None:
    """Discord's ids: decimal strings of a 64-bit number; anything else is not one."""
    return value if isinstance(value, str) and _SNOWFLAKE.fullmatch(value) else None


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def as_message(interaction: Interaction, bot_id: str, text: str, *, private: bool) -> Inbound:
    """The command as a channel-layer message: its reply is routed through the interaction."""
    assert interaction.user_id is not None and interaction.channel_id is not None
    return Inbound(
        channel="discord", bot_id=bot_id, external_id=f"interaction:{interaction.id}",
        sender_id=interaction.user_id, chat_id=interaction.channel_id, text=text,
        thread_id=ROUTE_PREFIX + interaction.id, is_group=interaction.guild_id is not None and not private,
        addressed=True, from_bot=interaction.user_is_bot,
    )


def message(text: str, *, ephemeral: bool = True) -> dict[str, Any]:
    """An immediate answer (CHANNEL_MESSAGE_WITH_SOURCE)."""
    data: dict[str, Any] = {"content": text, "allowed_mentions": {"parse": []}}
    if ephemeral:
        data["flags"] = EPHEMERAL
    return {"type": MESSAGE, "data": data}


def deferred(*, ephemeral: bool) -> dict[str, Any]:
    """DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE: "thinking...", replaced by the reply later."""
    return {"type": DEFERRED_MESSAGE, "data": {"flags": EPHEMERAL}} if ephemeral else {"type": DEFERRED_MESSAGE}


# -- the tokens, until the reply is out (functions run in the caller's transaction) -------------
@dataclass(frozen=True, slots=True)
class Token:
    token: str
    ephemeral: bool
    original_done: bool
    created_ms: int


def keep(conn: Connection, interaction_id: str, token: str, *, ephemeral: bool, at: int) -> None:
    insert_or_ignore(conn, discord_interactions, {"id": interaction_id, "token": token, "ephemeral": ephemeral,
                                                  "created_ms": at}, ["id"])


def token_of(conn: Connection, interaction_id: str) -> Token | None:
    row = conn.execute(select(discord_interactions).where(discord_interactions.c.id == interaction_id)).first()
    if row is None:
        return None
    return Token(row.token, bool(row.ephemeral), bool(row.original_done), int(row.created_ms))


def original_done(conn: Connection, interaction_id: str) -> None:
    conn.execute(update(discord_interactions).where(discord_interactions.c.id == interaction_id)
                 .values(original_done=True))


def forget_old(conn: Connection, at: int) -> int:
    """Tokens a day old: long past their 15 minutes (kept that long only to say whether a late
    reply was private, and so may not go into the channel instead)."""
    return conn.execute(delete(discord_interactions)
                        .where(discord_interactions.c.created_ms < at - KEEP_MS)).rowcount
