"""A Telegram group upgraded to a supergroup (a new chat id) keeps its conversations and loses
no reply: against the fake Bot API, which refuses the old id as Telegram does."""

from __future__ import annotations

import time

import httpx
import orjson
import pytest

from switchboard.channels.base import ChatMove
from switchboard.channels.telegram import Telegram
from switchboard.core.config import TelegramChannelConfig
from tests.api.conftest import wait_for
from tests.channels.conftest import TELEGRAM_SECRET, Channels, linked_on_telegram
from tests.fakes.telegram_api import mention, message_update, migration_updates, post_update

ADA = 4242
OLD = -4001234  # a (basic) group
NEW = -1004001234  # the supergroup it became
ANSWER = "Hello from the fake upstream."


def _ask(channels: Channels, chat_id: int, question: str) -> dict:
    bot = channels.telegram.username
    text = f"@{bot} {question}"
    chat_type = "group" if chat_id == OLD else "supergroup"
    update = message_update(ADA, text, chat_id=chat_id, chat_type=chat_type, entities=mention(text, bot))
    response = post_update(channels.telegram_webhook, TELEGRAM_SECRET, update)
    assert response.status_code == 200
    return response.json()


def _answer_calls(channels: Channels) -> list:
    return [c for c in channels.telegram.calls_of("sendMessage") if ANSWER in c.params["text"]]


def _history(channels: Channels) -> list[str]:
    [conv] = channels.api("/v1/conversations")["data"]  # one conversation, not one per chat id
    return [m["content"] for m in channels.api(f"/v1/conversations/{conv['id']}/messages")["data"]]


def test_the_upgrade_messages_move_the_conversation_and_start_no_turn(channels: Channels) -> None:
    linked_on_telegram(channels, ADA)
    _ask(channels, OLD, "first question")
    wait_for(lambda: ANSWER in channels.telegram.texts(OLD))

    channels.telegram.upgrade(OLD, NEW)
    to_new, from_old = migration_updates(OLD, NEW, by=ADA)
    outcomes = [post_update(channels.telegram_webhook, TELEGRAM_SECRET, u).json()["outcomes"] for u in (to_new, from_old)]
    assert outcomes == [["moved"], ["moved"]]
    # Telegram retries an update: the same move again changes nothing.
    assert post_update(channels.telegram_webhook, TELEGRAM_SECRET, to_new).status_code == 200
    time.sleep(0.5)
    assert len(channels.upstream.chat_requests()) == 1  # no turn, no charge, nothing said
    assert len(channels.telegram.sent) == 2  # "Linked ..." and the first answer

    _ask(channels, NEW, "second question")
    wait_for(lambda: ANSWER in channels.telegram.texts(NEW))
    assert _history(channels) == ["first question", ANSWER, "second question", ANSWER]
    asked = [m["content"] for m in channels.upstream.chat_requests()[-1].json["messages"]]
    assert "first question" in asked  # the model saw the group's history
    assert [str(c.params["chat_id"]) for c in _answer_calls(channels)] == [str(OLD), str(NEW)]


def test_a_reply_refused_for_the_old_group_is_sent_once_to_the_supergroup(channels: Channels) -> None:
    """The upgrade happened while the turn ran (the service message not seen yet)."""
    linked_on_telegram(channels, ADA)
    channels.telegram.upgrade(OLD, NEW)
    _ask(channels, OLD, "first question")
    wait_for(lambda: ANSWER in channels.telegram.texts(NEW))
    time.sleep(0.5)
    assert [str(c.params["chat_id"]) for c in _answer_calls(channels)] == [str(OLD), str(NEW)]
    assert channels.telegram.texts(OLD) == [] and channels.telegram.texts(NEW).count(ANSWER) == 1
    [part] = [row for row in channels.outbox() if row.inbox_id is not None]
    assert (part.status, part.attempts) == ("delivered", 1)

    # The conversation moved with it: the supergroup goes on with the same history.
    _ask(channels, NEW, "second question")
    wait_for(lambda: channels.telegram.texts(NEW).count(ANSWER) == 2)
    assert _history(channels) == ["first question", ANSWER, "second question", ANSWER]
    assert [str(c.params["chat_id"]) for c in _answer_calls(channels)] == [str(OLD), str(NEW), str(NEW)]


def test_a_429_on_the_resend_is_retried_to_the_supergroup_after_retry_after(channels: Channels) -> None:
    linked_on_telegram(channels, ADA)
    channels.telegram.upgrade(OLD, NEW)
    channels.telegram.fail("sendMessage", 429, retry_after=2, chat_id=NEW)
    _ask(channels, OLD, "first question")
    wait_for(lambda: ANSWER in channels.telegram.texts(NEW), timeout=15)
    time.sleep(0.5)
    calls = _answer_calls(channels)
    # Refused by the old group, rate limited in the new, then sent there (not to the old id again).
    assert [str(c.params["chat_id"]) for c in calls] == [str(OLD), str(NEW), str(NEW)]
    assert calls[2].at - calls[1].at >= 2.0
    assert channels.telegram.texts(NEW).count(ANSWER) == 1


def test_a_reply_waiting_when_the_group_moves_goes_straight_to_the_supergroup(channels: Channels) -> None:
    linked_on_telegram(channels, ADA)
    channels.telegram.fail("sendMessage", 429, retry_after=3, chat_id=OLD)
    _ask(channels, OLD, "first question")
    wait_for(lambda: len(_answer_calls(channels)) == 1)  # refused for now: it waits in the outbox
    channels.telegram.upgrade(OLD, NEW)
    for update in migration_updates(OLD, NEW, by=ADA):
        post_update(channels.telegram_webhook, TELEGRAM_SECRET, update)
    wait_for(lambda: ANSWER in channels.telegram.texts(NEW), timeout=15)
    time.sleep(0.5)
    assert [str(c.params["chat_id"]) for c in _answer_calls(channels)] == [str(OLD), str(NEW)]
    assert channels.telegram.texts(NEW).count(ANSWER) == 1


@pytest.fixture
def adapter(monkeypatch: pytest.MonkeyPatch) -> Telegram:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "123:abc")
    monkeypatch.setenv("TELEGRAM_WEBHOOK_SECRET", "s")
    return Telegram(TelegramChannelConfig(), httpx.AsyncClient())


def test_both_service_messages_say_the_same_move_and_are_never_a_message(adapter: Telegram) -> None:
    for update in migration_updates(OLD, NEW, by=ADA):
        parsed = adapter.parse(orjson.dumps(update))
        assert parsed.moves == [ChatMove(str(OLD), str(NEW))] and parsed.messages == []
    ordinary = adapter.parse(orjson.dumps(message_update(ADA, "hi", chat_id=NEW, chat_type="supergroup")))
    assert ordinary.moves == [] and len(ordinary.messages) == 1
