"""Discord end to end over the Gateway: a real gateway, the fake Discord (its websocket Gateway
and REST API), the fake model upstream."""

from __future__ import annotations

import pytest

from tests.api.conftest import wait_for
from tests.channels.discord_env import GENERAL, WORDY, DiscordGateway, discord_gw, person, settle  # noqa: F401
from tests.fakes.discord_api import MESSAGE_CONTENT, user

HELLO = "Hello from the fake upstream."


def test_a_direct_message_is_answered_once_with_typing(discord_gw: DiscordGateway) -> None:
    gw, ada = discord_gw, person()
    identify = gw.discord.identifies[0]
    assert identify["intents"] & MESSAGE_CONTENT == 0  # no privileged intent asked for
    gw.link(ada)
    gw.upstream.configure(text="Paris is the capital.", chunks=2)
    sent = gw.dm(ada, "Capital of France?")
    wait_for(lambda: "Paris is the capital." in gw.discord.texts(ada.dm))
    gw.discord.send_message(sent)  # the same message again (a replay after a resume): answered once
    settle(1.5)
    assert gw.discord.texts(ada.dm).count("Paris is the capital.") == 1
    assert len(gw.upstream.chat_requests()) == 1
    assert ada.dm in gw.discord.typing
    reply = gw.discord.messages[-1]
    assert reply["allowed_mentions"]["parse"] == [] and reply["message_reference"] is None  # a DM: no reply quote
    # The bot's own messages came back over the Gateway and were ignored (nothing recorded).
    assert [row.external_id for row in gw.inbox()] == [gw.inbox()[0].external_id, sent["id"]]


def test_a_server_message_is_answered_only_when_the_bot_is_mentioned_or_replied_to(discord_gw: DiscordGateway) -> None:
    gw, ada = discord_gw, person()
    gw.link(ada)
    gw.say(ada, "just chatting with friends")
    settle(1.0)
    assert gw.discord.texts(GENERAL) == [] and gw.upstream.chat_requests() == []
    mention = gw.say(ada, "what is 2+2?", mentions_bot=True)
    wait_for(lambda: HELLO in gw.discord.texts(GENERAL))
    answer = gw.discord.messages[-1]
    assert answer["message_reference"]["message_id"] == mention["id"]
    assert gw.upstream.chat_requests()[-1].json["messages"][-1]["content"] == "what is 2+2?"  # the mention taken out
    gw.say(ada, "and 3+3?", reply_to_bot=True)
    wait_for(lambda: gw.discord.texts(GENERAL).count(HELLO) == 2)
    bot = user("1300000000000009999", "otherbot", bot=True)
    gw.discord.send_message(gw.discord.message_create(bot, "hey", channel_id=GENERAL, guild_id="1300000000000000777",
                                                      mentions_bot=True))
    settle(1.0)
    assert gw.discord.texts(GENERAL).count(HELLO) == 2 and len(gw.upstream.chat_requests()) == 2


def test_an_unknown_user_gets_one_linking_message_in_dms_and_in_a_server_only_when_mentioned(
    discord_gw: DiscordGateway,
) -> None:
    gw, stranger = discord_gw, person("bob")
    gw.dm(stranger, "hi there")
    wait_for(lambda: gw.discord.texts(stranger.dm))
    gw.dm(stranger, "hello?")
    gw.say(stranger, "hey everyone")  # not addressed: nothing
    settle(1.5)
    [told] = gw.discord.texts(stranger.dm)
    assert "/link" in told and "link-code" in told
    assert gw.discord.texts(GENERAL) == [] and gw.upstream.chat_requests() == []
    other = person("cy")
    gw.say(other, "who are you?", mentions_bot=True)
    wait_for(lambda: gw.discord.texts(GENERAL))
    gw.say(other, "hello??", mentions_bot=True)
    settle(1.0)
    assert len(gw.discord.texts(GENERAL)) == 1 and gw.upstream.chat_requests() == []


@pytest.mark.parametrize("discord_gw", [WORDY], indirect=True)
def test_a_long_reply_is_split_at_2000_characters_with_code_blocks_whole(discord_gw: DiscordGateway) -> None:
    gw, ada = discord_gw, person()
    gw.link(ada)
    code = "```python\n" + "\n".join(f"print({i})  # a line of code" for i in range(60)) + "\n```"
    prose = " ".join(f"Sentence number {i} says something." for i in range(150))
    gw.upstream.configure(text=prose + "\n\n" + code + "\n\nThat is all.", chunks=5)
    gw.dm(ada, "a long one please")
    wait_for(lambda: any("That is all." in t for t in gw.discord.texts(ada.dm)), timeout=20)
    parts = gw.discord.texts(ada.dm)[1:]  # after "Linked"
    assert len(parts) >= 3 and all(len(p) <= 2000 for p in parts)
    for part in parts:
        assert part.count("```") % 2 == 0  # every block opened in a part is closed in it
    joined = " ".join(parts)
    assert all(f"Sentence number {i} says" in joined for i in range(150))
    assert all(f"print({i})" in joined for i in range(60))


def test_a_rate_limited_send_waits_for_retry_after_and_is_sent_once(discord_gw: DiscordGateway) -> None:
    gw, ada = discord_gw, person()
    gw.link(ada)
    gw.discord.fail("message", 429, retry_after=1.5)
    gw.dm(ada, "hi")
    wait_for(lambda: HELLO in gw.discord.texts(ada.dm), timeout=15)
    settle(1.0)
    assert gw.discord.texts(ada.dm).count(HELLO) == 1 and gw.discord.rate_limited == ["message"]
    [row] = [r for r in gw.outbox() if r.kind == "reply"]
    assert row.status == "delivered" and row.attempts == 2
    assert row.delivered_ms - row.created_ms >= 1400  # not before Discord's retry_after


@pytest.mark.parametrize("kind,expected", [("audio/ogg", "listen to"), ("image/png", "see images")])
def test_attachments_without_text_are_answered_plainly(discord_gw: DiscordGateway, kind: str, expected: str) -> None:
    gw, ada = discord_gw, person()
    gw.link(ada)
    gw.dm(ada, "", attachments=[{"id": "1", "filename": "x", "content_type": kind, "size": 10, "url": "https://x"}])
    wait_for(lambda: any(expected in t for t in gw.discord.texts(ada.dm)))
    assert gw.upstream.chat_requests() == []


@pytest.mark.parametrize("discord_gw", [WORDY], indirect=True)
def test_a_reply_of_many_parts_waits_for_discords_rate_limit_instead_of_hitting_it(discord_gw: DiscordGateway) -> None:
    """Discord allows 5 messages per 5 s in a channel and says so in X-RateLimit-Remaining and
    X-RateLimit-Reset-After: the sixth part waits for the reset rather than getting a 429."""
    gw, ada = discord_gw, person()
    gw.link(ada)
    words = [f"word{i:05d}" for i in range(2400)]  # about 24,000 characters: 13 parts
    gw.upstream.configure(text=" ".join(words), chunks=10)
    gw.dm(ada, "as long as you can")
    wait_for(lambda: any("word02399" in t for t in gw.discord.texts(ada.dm)), timeout=60)
    parts = gw.discord.texts(ada.dm)[1:]
    assert len(parts) > 5 and all(len(p) <= 2000 for p in parts)
    assert " ".join(parts).split() == words  # whole, in order
    assert gw.discord.rate_limited == []  # never over the limit


def test_a_reminder_set_in_a_dm_is_delivered_there_once(discord_gw: DiscordGateway) -> None:
    gw, ada = discord_gw, person()
    gw.link(ada)
    gw.dm(ada, "/remind in 2 seconds stretch")
    wait_for(lambda: len(gw.discord.texts(ada.dm)) == 2)
    assert "stretch" in gw.discord.texts(ada.dm)[1]
    wait_for(lambda: any(t.startswith("⏰ Reminder: stretch") for t in gw.discord.texts(ada.dm)), timeout=15)
    settle(6)  # past the next sweep: once, whatever sweeps and hooks ran
    assert sum(t.startswith("⏰ Reminder") for t in gw.discord.texts(ada.dm)) == 1
    assert gw.upstream.chat_requests() == []
