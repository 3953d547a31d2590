"""The Gateway connection under faults, against the fake Gateway's real websocket protocol: a
connection cut mid-stream and resumed, Discord asking for a reconnect, invalidating the
session, heartbeats left unacknowledged, a refused token; no message lost or answered twice."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from switchboard.channels import connections
from switchboard.channels.discord import gateway
from switchboard.store.channels_schema import channel_state
from switchboard.store.db import reading
from tests.api.conftest import wait_for
from tests.channels.discord_env import DiscordGateway, Person, discord_gw, person, settle  # noqa: F401

HELLO = "Hello from the fake upstream."


def _burst(gw: DiscordGateway, ada: Person, n: int) -> list[str]:
    texts = [f"question number {i}" for i in range(n)]
    for text in texts:
        gw.dm(ada, text)
    return texts


def _asked(gw: DiscordGateway) -> list[str]:
    return [r.json["messages"][-1]["content"] for r in gw.upstream.chat_requests()]


def _answered_each_once(gw: DiscordGateway, ada: Person, texts: list[str]) -> None:
    wait_for(lambda: gw.discord.texts(ada.dm).count(HELLO) >= len(texts), timeout=30)
    settle(1.5)
    assert sorted(_asked(gw)) == sorted(texts)  # each asked once: none lost, none twice
    assert gw.discord.texts(ada.dm).count(HELLO) == len(texts)


def test_a_connection_cut_mid_stream_is_resumed_with_nothing_lost_or_answered_twice(discord_gw: DiscordGateway) -> None:
    gw, ada = discord_gw, person()
    gw.link(ada)
    gw.discord.drop_after(3)  # the TCP connection cut after 3 of the 8 messages went out
    texts = _burst(gw, ada, 8)
    _answered_each_once(gw, ada, texts)
    assert len(gw.discord.identifies) == 1 and len(gw.discord.resumes) == 1
    assert gw.discord.max_connections_open == 1


def test_reconnect_requested_by_discord_resumes_the_session(discord_gw: DiscordGateway) -> None:
    gw, ada = discord_gw, person()
    gw.link(ada)
    gw.discord.request_reconnect()
    texts = _burst(gw, ada, 3)  # sent while the client reconnects: replayed on RESUME
    _answered_each_once(gw, ada, texts)
    assert len(gw.discord.identifies) == 1 and len(gw.discord.resumes) == 1
    assert 1000 not in gw.discord.closes and 1001 not in gw.discord.closes  # those would end the session


def test_an_unacknowledged_heartbeat_means_a_zombie_connection_resumed(discord_gw: DiscordGateway) -> None:
    gw, ada = discord_gw, person()
    gw.link(ada)
    beats = len(gw.discord.heartbeats)
    gw.discord.ask_heartbeat()  # Discord may ask for one at once
    wait_for(lambda: len(gw.discord.heartbeats) > beats)
    assert gw.discord.heartbeats[-1] == gw.discord.last_seq  # the last seq handled
    gw.discord.pause_acks(True)
    wait_for(lambda: gw.discord.resumes, timeout=10)
    gw.discord.pause_acks(False)
    texts = _burst(gw, ada, 2)
    _answered_each_once(gw, ada, texts)
    assert len(gw.discord.identifies) == 1


@pytest.mark.parametrize("resumable", [True, False])
def test_an_invalidated_session_is_resumed_or_started_afresh(discord_gw: DiscordGateway, resumable: bool,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway, "INVALID_SESSION_WAIT_S", (0.2, 0.5))
    gw, ada = discord_gw, person()
    gw.link(ada)
    gw.discord.invalidate(resumable)
    wait_for(lambda: gw.discord.resumes if resumable else len(gw.discord.identifies) == 2, timeout=15)
    wait_for(lambda: gw.discord.connected)
    texts = _burst(gw, ada, 2)
    _answered_each_once(gw, ada, texts)
    with reading(gw.engine) as conn:  # the session recorded for the next holder is the live one
        held = connections.holder(conn, "discord")
    assert held is not None and held.session.session_id is not None
    wait_for(lambda: _recorded_seq(gw) == gw.discord.last_seq, timeout=5)


def _recorded_seq(gw: DiscordGateway) -> int | None:
    with reading(gw.engine) as conn:
        held = connections.holder(conn, "discord")
    return held.session.seq if held else None


def test_a_refused_token_stops_reconnecting_and_says_why(discord_gw: DiscordGateway) -> None:
    gw = discord_gw
    gw.discord.token = "someone-rotated-it"  # the next IDENTIFY is refused: 4004
    gw.discord.invalidate(False)

    def last_error() -> str | None:
        with reading(gw.engine) as conn:
            return conn.execute(select(channel_state.c.last_error).where(channel_state.c.channel == "discord")).scalar()

    wait_for(lambda: "4004" in (last_error() or ""), timeout=15)
    tries = len(gw.discord.identifies) + gw.discord.connections_total
    settle(2.0)
    assert len(gw.discord.identifies) + gw.discord.connections_total == tries  # no reconnect loop
