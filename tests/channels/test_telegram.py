"""Telegram end to end: a real gateway, the fake Bot API, the fake model upstream."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.api.conftest import wait_for
from tests.channels.conftest import TELEGRAM_SECRET, Channels, linked_on_telegram
from tests.fakes.telegram_api import mention, message_update, post_update, user

ADA = 4242


def test_a_linked_user_is_answered_with_typing_and_html(channels: Channels) -> None:
    linked_on_telegram(channels, ADA)
    channels.upstream.configure(text="Paris is the capital.", chunks=2)
    response = post_update(channels.telegram_webhook, TELEGRAM_SECRET, message_update(ADA, "Capital of France?"))
    assert response.status_code == 200 and response.json()["ok"] is True
    wait_for(lambda: "Paris is the capital." in channels.telegram.texts(ADA))
    sent = channels.telegram.sent[-1]
    assert sent["parse_mode"] == "HTML" and str(sent["chat_id"]) == str(ADA)
    assert channels.telegram.calls_of("sendChatAction")[0].params == {"chat_id": str(ADA), "action": "typing"}
    # Stored encrypted in a conversation of the telegram channel, like every conversation.
    [conv] = channels.api("/v1/conversations")["data"]
    assert conv["channel"] == "telegram"
    contents = [m["content"] for m in channels.api(f"/v1/conversations/{conv['id']}/messages")["data"]]
    assert contents == ["Capital of France?", "Paris is the capital."]


@pytest.mark.parametrize("headers", [{}, {"x-telegram-bot-api-secret-token": "wrong"},
                                     {"x-telegram-bot-api-secret-token": TELEGRAM_SECRET + "x"}])
def test_missing_or_forged_secret_is_401_and_reaches_nothing(channels: Channels, headers: dict[str, str]) -> None:
    linked_on_telegram(channels, ADA)
    sent_before, usage_before = len(channels.telegram.sent), channels.usage_count()
    response = httpx.post(channels.telegram_webhook, json=message_update(ADA, "hello"),
                          headers={"content-type": "application/json", **headers})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_signature"
    time.sleep(0.5)
    assert len(channels.inbox()) == 1  # only the /start of the linking
    assert len(channels.telegram.sent) == sent_before and channels.usage_count() == usage_before
    assert channels.upstream.chat_requests() == []


def test_the_same_update_twice_is_answered_once_and_charged_once(channels: Channels) -> None:
    linked_on_telegram(channels, ADA)
    update = message_update(ADA, "Say hi")
    first = post_update(channels.telegram_webhook, TELEGRAM_SECRET, update)
    second = post_update(channels.telegram_webhook, TELEGRAM_SECRET, update)  # Telegram retries
    assert first.status_code == second.status_code == 200
    assert second.json()["outcomes"] == ["duplicate"]
    wait_for(lambda: channels.outbox_count("delivered") >= 2)
    time.sleep(1.0)
    assert channels.telegram.texts(ADA).count("Hello from the fake upstream.") == 1
    assert len(channels.upstream.chat_requests()) == 1 and channels.usage_count() == 1


def test_the_same_update_at_once_from_many_connections_is_one_turn(channels: Channels) -> None:
    linked_on_telegram(channels, ADA)
    update = message_update(ADA, "Once only")
    statuses: list[int] = []

    def post() -> None:
        statuses.append(post_update(channels.telegram_webhook, TELEGRAM_SECRET, update).status_code)

    threads = [threading.Thread(target=post) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 8
    wait_for(lambda: "Hello from the fake upstream." in channels.telegram.texts(ADA))
    time.sleep(1.0)
    assert channels.telegram.texts(ADA).count("Hello from the fake upstream.") == 1
    assert len(channels.upstream.chat_requests()) == 1


def test_a_slow_model_is_still_acknowledged_within_a_second(channels: Channels) -> None:
    linked_on_telegram(channels, ADA)
    channels.upstream.configure(text="slow but sure", chunks=2, first_byte_delay_s=3.0)
    started = time.monotonic()
    response = post_update(channels.telegram_webhook, TELEGRAM_SECRET, message_update(ADA, "take your time"))
    assert response.status_code == 200 and time.monotonic() - started < 1.0
    wait_for(lambda: "slow but sure" in channels.telegram.texts(ADA), timeout=15)
    # Typing was shown (and repeated every 4 s) while the model thought.
    assert len(channels.telegram.calls_of("sendChatAction")) >= 1


def test_429_retry_after_is_honoured_and_nothing_is_sent_twice(channels: Channels) -> None:
    linked_on_telegram(channels, ADA)
    channels.telegram.fail("sendMessage", 429, retry_after=2)
    post_update(channels.telegram_webhook, TELEGRAM_SECRET, message_update(ADA, "hello?"))
    wait_for(lambda: "Hello from the fake upstream." in channels.telegram.texts(ADA), timeout=15)
    attempts = [c for c in channels.telegram.calls_of("sendMessage") if "fake upstream" in c.params["text"]]
    assert len(attempts) == 2  # refused once, accepted once
    assert attempts[1].at - attempts[0].at >= 2.0  # not before Telegram's retry_after
    assert channels.telegram.texts(ADA).count("Hello from the fake upstream.") == 1


def test_a_send_that_timed_out_is_sent_again_saying_so(channels: Channels) -> None:
    linked_on_telegram(channels, ADA)
    channels.telegram.stall(6.0)  # accepted, but the answer comes after our 3 s timeout
    post_update(channels.telegram_webhook, TELEGRAM_SECRET, message_update(ADA, "hello?"))
    wait_for(lambda: len([t for t in channels.telegram.texts(ADA) if "fake upstream" in t]) == 2, timeout=20)
    first, second = [t for t in channels.telegram.texts(ADA) if "fake upstream" in t]
    assert first == "Hello from the fake upstream."
    assert second.startswith("(Sent again: I could not confirm that this arrived")


def test_a_reply_that_cannot_be_delivered_is_retried_then_reported(channels: Channels) -> None:
    linked_on_telegram(channels, ADA)
    attempts = channels.settings.channels.delivery_attempts
    channels.telegram.fail("sendMessage", 502, times=attempts)
    post_update(channels.telegram_webhook, TELEGRAM_SECRET, message_update(ADA, "are you there?"))
    wait_for(lambda: channels.outbox_count("failed") == 1, timeout=30)
    [failed] = [row for row in channels.outbox() if row.status == "failed"]
    assert failed.attempts == attempts and "Internal Server Error" in failed.last_error
    # Never lost: the reply is in the conversation, where the user (or the API) finds it.
    [conv] = channels.api("/v1/conversations")["data"]
    assert channels.api(f"/v1/conversations/{conv['id']}/messages")["data"][-1]["content"] == \
        "Hello from the fake upstream."


def test_groups_are_answered_only_when_mentioned_or_replied_to(channels: Channels) -> None:
    linked_on_telegram(channels, ADA)
    group = -100123
    bot = channels.telegram.username
    quiet = message_update(ADA, "just chatting", chat_id=group, chat_type="supergroup")
    text = f"@{bot} what is 2+2?"
    mentioned = message_update(ADA, text, chat_id=group, chat_type="supergroup", entities=mention(text, bot))
    bot_reply = {"message_id": 77, "from": user(channels.telegram.bot_id, "Switchboard", is_bot=True),
                 "chat": {"id": group, "type": "supergroup"}, "date": 0, "text": "earlier answer"}
    replied = message_update(ADA, "and 3+3?", chat_id=group, chat_type="supergroup", reply_to=bot_reply)
    other_bot = message_update(999, f"@{bot} ping", chat_id=group, chat_type="supergroup", is_bot=True,
                               entities=mention(f"@{bot} ping", bot))
    stranger = message_update(31337, f"@{bot} hi", chat_id=group, chat_type="supergroup",
                              entities=mention(f"@{bot} hi", bot))
    code_in_group = message_update(ADA, f"/start@{bot} {channels.code()}", chat_id=group, chat_type="supergroup",
                                   entities=[{"type": "bot_command", "offset": 0, "length": len(f"/start@{bot}")}])
    outcomes = [post_update(channels.telegram_webhook, TELEGRAM_SECRET, u).json()["outcomes"]
                for u in (quiet, mentioned, replied, other_bot, stranger, code_in_group)]
    assert outcomes == [["ignored"], ["recorded"], ["recorded"], ["ignored"], ["ignored"], ["ignored"]]
    wait_for(lambda: len(channels.telegram.texts(group)) == 2)
    time.sleep(0.5)
    assert len(channels.telegram.texts(group)) == 2  # the stranger got no linking message in the group
    assert [m.json["messages"][-1]["content"] for m in channels.upstream.chat_requests()] == ["what is 2+2?", "and 3+3?"]
    first = [m for m in channels.telegram.sent if str(m["chat_id"]) == str(group)][0]
    assert first["reply_parameters"]["message_id"] == mentioned["message"]["message_id"]


def test_a_voice_note_gets_a_clear_reply_and_no_model_call(channels: Channels) -> None:
    linked_on_telegram(channels, ADA)
    voice = message_update(ADA, None, extra={"voice": {"file_id": "abc", "file_unique_id": "u", "duration": 3}})
    post_update(channels.telegram_webhook, TELEGRAM_SECRET, voice)
    wait_for(lambda: any("voice messages" in t for t in channels.telegram.texts(ADA)))
    assert "Please send your message as text" in channels.telegram.texts(ADA)[-1]
    assert channels.upstream.chat_requests() == []


def test_chat_commands_work_on_telegram(channels: Channels) -> None:
    linked_on_telegram(channels, ADA)
    post_update(channels.telegram_webhook, TELEGRAM_SECRET, message_update(ADA, "/help"))
    wait_for(lambda: any("/remind WHEN WHAT" in t for t in channels.telegram.texts(ADA)))
    post_update(channels.telegram_webhook, TELEGRAM_SECRET, message_update(ADA, "/balance"))
    wait_for(lambda: any("credits" in t.lower() for t in channels.telegram.texts(ADA)[-1:]))
    assert channels.upstream.chat_requests() == []
    # /new: the chat's next message goes to a new conversation.
    post_update(channels.telegram_webhook, TELEGRAM_SECRET, message_update(ADA, "/new"))
    wait_for(lambda: channels.telegram.texts(ADA)[-1].startswith("Started a new conversation"))
    post_update(channels.telegram_webhook, TELEGRAM_SECRET, message_update(ADA, "fresh start"))
    wait_for(lambda: channels.telegram.texts(ADA)[-1] == "Hello from the fake upstream.")
    newest, older = channels.api("/v1/conversations")["data"]
    assert newest["channel"] == older["channel"] == "telegram"
    assert [m["content"] for m in channels.api(f"/v1/conversations/{newest['id']}/messages")["data"]] == [
        "fresh start", "Hello from the fake upstream."]


def test_a_message_that_cannot_be_read_is_set_aside_and_the_chat_goes_on(channels: Channels) -> None:
    """A record whose ciphertext no longer decrypts (its user deleted, say) is never retried in
    a loop and never blocks the chat's next message."""
    from switchboard.store.channels_schema import channel_inbox

    linked_on_telegram(channels, ADA)
    with channels.engine.begin() as conn:
        conn.execute(channel_inbox.insert().values(
            channel="telegram", bot_id=str(channels.telegram.bot_id), external_id="999999999", user_id=channels.user_id,
            chat_id=str(ADA), chat_key=f"telegram:{channels.telegram.bot_id}:{ADA}", kind="text",
            text_ct=b"\x01not a ciphertext", status="pending", received_ms=int(time.time() * 1000)))
    post_update(channels.telegram_webhook, TELEGRAM_SECRET, message_update(ADA, "still there?"))
    wait_for(lambda: "Hello from the fake upstream." in channels.telegram.texts(ADA))
    statuses = {row.external_id: (row.status, row.attempts) for row in channels.inbox()}
    assert statuses["999999999"] == ("failed", 1)


def test_a_message_from_a_deleted_users_chat_never_fails_the_webhook(channels: Channels) -> None:
    from switchboard.crypto import keyring_for

    linked_on_telegram(channels, ADA)
    keyring = keyring_for(channels.settings, channels.engine)
    with channels.engine.begin() as conn:  # what `switchboard users delete` does to the key
        keyring.destroy(conn, channels.user_id)
    time.sleep(1)  # (a server checks a cached key again within its verify interval; this one never loaded it)
    response = post_update(channels.telegram_webhook, TELEGRAM_SECRET, message_update(ADA, "hello?"))
    assert response.status_code == 200
