"""Discord's slash commands at POST /channels/discord/interactions: signed by the fake's
interactions client with a real Ed25519 key, answered within Discord's 3 seconds, completed
through the interaction's webhook."""

from __future__ import annotations

import time

import httpx
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text

from switchboard.store.db import reading
from tests.api.conftest import wait_for
from tests.channels.discord_env import (GENERAL, GUILD, WORDY, DiscordGateway, Person, discord_gw,  # noqa: F401
                                        person, settle)
from tests.fakes.discord_api import Interaction
from tests.fakes.openai_upstream import Behaviour

HELLO = "Hello from the fake upstream."


def _link(gw: DiscordGateway, who: Person, code: str | None = None) -> Interaction:
    body = gw.discord.command("link", {"code": code or gw.code()}, author=who.author, channel_id=who.dm)
    response = gw.discord.interact(gw.interactions_url, body)
    assert response.status_code == 200, response.text
    return gw.discord.interaction(body)


def _shown(interaction: Interaction) -> str | None:
    return interaction.original["content"] if interaction.original else None


def test_ping_is_answered_pong(discord_gw: DiscordGateway) -> None:
    response = discord_gw.discord.interact(discord_gw.interactions_url, discord_gw.discord.ping())
    assert response.status_code == 200 and response.json() == {"type": 1}


@pytest.mark.parametrize("forgery", ["other key", "tampered body", "no signature", "stale", "from the future",
                                     "not hex"])
def test_forged_and_stale_signatures_are_refused_with_401_and_reach_nothing(discord_gw: DiscordGateway,
                                                                            forgery: str) -> None:
    gw, ada = discord_gw, person()
    body = gw.discord.command("ask", {"text": "hi"}, author=ada.author, channel_id=ada.dm)
    raw = orjson.dumps(body)
    headers = gw.discord.sign(raw)
    if forgery == "other key":
        stamp = headers["X-Signature-Timestamp"]
        headers["X-Signature-Ed25519"] = Ed25519PrivateKey.generate().sign(stamp.encode() + raw).hex()
    elif forgery == "tampered body":
        raw = raw.replace(b'"hi"', b'"hj"')
    elif forgery == "no signature":
        headers = {"content-type": "application/json"}
    elif forgery == "stale":  # a real request, recorded and sent again ten minutes later
        headers = gw.discord.sign(raw, str(int(time.time()) - 600))
    elif forgery == "from the future":
        headers = gw.discord.sign(raw, str(int(time.time()) + 600))
    else:
        headers["X-Signature-Ed25519"] = "zz" * 64
    response = httpx.post(gw.interactions_url, content=raw, headers=headers, timeout=10)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_signature"
    settle(0.5)
    assert gw.inbox() == [] and gw.outbox() == [] and gw.upstream.chat_requests() == []


def test_a_signed_body_that_is_not_an_interaction_is_400(discord_gw: DiscordGateway) -> None:
    raw = b'{"hello": "world"}'
    response = httpx.post(discord_gw.interactions_url, content=raw, headers=discord_gw.discord.sign(raw), timeout=10)
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"


def test_ask_is_deferred_within_3_seconds_and_completed_through_the_followup(discord_gw: DiscordGateway) -> None:
    gw, ada = discord_gw, person()
    gw.link(ada)
    gw.upstream.enqueue(Behaviour(text="Thought about it: 42.", first_byte_delay_s=4))  # slower than 3 s
    body = gw.discord.command("ask", {"text": "the answer to everything?"}, author=ada.author, channel_id=GENERAL,
                              guild_id=GUILD)
    response = gw.discord.interact(gw.interactions_url, body)
    interaction = gw.discord.interaction(body)
    assert response.status_code == 200 and response.json() == {"type": 5}  # deferred, public
    assert interaction.answer_s is not None and interaction.answer_s < 1.0
    wait_for(lambda: _shown(interaction) == "Thought about it: 42.", timeout=20)
    assert interaction.original["channel_id"] == GENERAL and not interaction.ephemeral
    assert gw.upstream.chat_requests()[-1].json["messages"][-1]["content"] == "the answer to everything?"
    assert GENERAL not in gw.discord.typing  # "thinking..." shows instead
    settle(1.0)
    assert interaction.followups == [] and [m for m in gw.discord.messages if m["via"] == "bot"
                                            and m["channel_id"] == GENERAL] == []


@pytest.mark.parametrize("discord_gw", [WORDY], indirect=True)
def test_a_long_answer_to_ask_continues_in_followups(discord_gw: DiscordGateway) -> None:
    gw, ada = discord_gw, person()
    gw.link(ada)
    gw.upstream.configure(text=" ".join(f"Point {i} is made here." for i in range(300)) + " The end.", chunks=4)
    body = gw.discord.command("ask", {"text": "tell me everything"}, author=ada.author, channel_id=ada.dm)
    assert gw.discord.interact(gw.interactions_url, body).json() == {"type": 5}
    interaction = gw.discord.interaction(body)
    wait_for(lambda: any("The end." in m["content"] for m in interaction.followups), timeout=20)
    parts = [_shown(interaction) or ""] + [m["content"] for m in interaction.followups]
    assert len(parts) >= 3 and all(len(p) <= 2000 for p in parts)
    assert parts[0].startswith("Point 0 is made here.")
    joined = " ".join(parts)
    assert all(f"Point {i} is made" in joined for i in range(300))


def test_link_with_a_valid_an_expired_and_a_reused_code(discord_gw: DiscordGateway) -> None:
    gw, ada, bob = discord_gw, person(), person("bob")
    code = gw.code()
    first = _link(gw, ada, code)
    assert first.answer == {"type": 5, "data": {"flags": 64}}  # deferred, privately
    wait_for(lambda: _shown(first))
    assert _shown(first).startswith("Linked") and "a***@example.com" in _shown(first) and first.ephemeral
    reused = _link(gw, bob, code)
    wait_for(lambda: _shown(reused))
    assert "used already" in _shown(reused) and reused.ephemeral
    expired = gw.code(ttl_s=60)
    with gw.engine.begin() as conn:  # its minute passes
        conn.exec_driver_sql("UPDATE channel_link_codes SET expires_ms = expires_ms - 120000 WHERE used_ms IS NULL")
    late = _link(gw, bob, expired)
    wait_for(lambda: _shown(late))
    assert "expired" in _shown(late)
    bogus = _link(gw, bob, "no")  # not even the shape of a code: told at once
    assert bogus.answer["type"] == 4 and "not a valid link code" in bogus.answer["data"]["content"]
    # Ada is linked: /ask answers her; Bob is not: he is told how to link, privately, no model call.
    ask = gw.discord.command("ask", {"text": "hello"}, author=ada.author, channel_id=ada.dm)
    gw.discord.interact(gw.interactions_url, ask)
    wait_for(lambda: _shown(gw.discord.interaction(ask)) == HELLO)
    calls = len(gw.upstream.chat_requests())
    for _ in range(2):  # told each time they ask: a command is always answered
        ask = gw.discord.command("ask", {"text": "hello"}, author=bob.author, channel_id=GENERAL, guild_id=GUILD)
        gw.discord.interact(gw.interactions_url, ask)
        told = gw.discord.interaction(ask)
        wait_for(lambda told=told: _shown(told))
        assert "/link" in _shown(told) and told.ephemeral
    assert len(gw.upstream.chat_requests()) == calls


def test_a_reply_racing_the_deferred_answer_is_retried_not_lost(discord_gw: DiscordGateway) -> None:
    """The reply is ready before Discord has the deferred answer (the webhook is 404 until then):
    it is sent again a moment later, once."""
    gw, ada = discord_gw, person()
    gw.link(ada)
    body = gw.discord.command("ask", {"text": "quick"}, author=ada.author, channel_id=ada.dm)
    raw = orjson.dumps(body)
    interaction = Interaction(str(body["id"]), str(body["token"]), body)
    gw.discord.interactions[interaction.token] = interaction
    response = httpx.post(gw.interactions_url, content=raw, headers=gw.discord.sign(raw), timeout=10)
    assert response.json() == {"type": 5}
    settle(1.0)  # meanwhile the reply was tried: Discord does not know the interaction yet (10015)
    interaction.answer, interaction.answered = response.json(), True
    wait_for(lambda: _shown(interaction) == HELLO, timeout=10)
    settle(1.0)
    assert interaction.followups == [] and gw.discord.texts(ada.dm).count(HELLO) == 1
    with reading(gw.engine) as conn:
        [row] = list(conn.execute(text("SELECT attempts, status FROM channel_outbox WHERE kind = 'reply'")))
    assert row.status == "delivered" and row.attempts >= 2
