"""Who is talking: one-time link codes (valid, expired, reused, guessed), the unknown sender's
one message an hour, and accounts made on the spot where configured."""

from __future__ import annotations

import hashlib
import time

import pytest
from sqlalchemy import select, update

from switchboard.channels import linking
from switchboard.store.channels_schema import channel_identities, channel_link_codes
from switchboard.store.db import reading
from tests.api.conftest import wait_for
from tests.channels.conftest import TELEGRAM_SECRET, Channels
from tests.fakes.telegram_api import message_update, post_update
from tests.fakes.whatsapp_api import text_message

BOB = 5151


def _say(gw: Channels, sender: int, text: str) -> list[str]:
    response = post_update(gw.telegram_webhook, TELEGRAM_SECRET, message_update(sender, text))
    assert response.status_code == 200, response.text
    return response.json()["outcomes"]


def _linked_user(gw: Channels, channel: str, sender: str) -> int | None:
    with reading(gw.engine) as conn:
        return conn.execute(select(channel_identities.c.user_id).where(
            channel_identities.c.channel == channel, channel_identities.c.external_user_id == sender)).scalar()


def test_a_valid_code_links_once_and_is_stored_only_hashed(channels: Channels) -> None:
    code = channels.code()
    with reading(channels.engine) as conn:
        stored = conn.execute(select(channel_link_codes.c.code_hash)).scalars().all()
    assert stored == [hashlib.sha256(code.encode()).hexdigest()] and code not in str(stored)
    assert _say(channels, BOB, f"/start {code}") == ["linked"]
    wait_for(lambda: channels.telegram.texts(BOB))
    assert channels.telegram.texts(BOB)[0].startswith("Linked: this chat now talks to the Switchboard account a***@example.com")
    assert _linked_user(channels, "telegram", str(BOB)) == channels.user_id
    # Reused by someone else: refused, and that sender is not linked.
    assert _say(channels, BOB + 1, f"/start {code}") == ["refused"]
    wait_for(lambda: channels.telegram.texts(BOB + 1))
    assert channels.telegram.texts(BOB + 1)[0].startswith("That link code was used already")
    assert _linked_user(channels, "telegram", str(BOB + 1)) is None
    assert channels.upstream.chat_requests() == []


def test_an_expired_code_is_refused(channels: Channels) -> None:
    code = channels.code()
    with channels.engine.begin() as conn:
        conn.execute(update(channel_link_codes).values(expires_ms=int(time.time() * 1000) - 1))
    assert _say(channels, BOB, f"/start {code}") == ["refused"]
    wait_for(lambda: channels.telegram.texts(BOB))
    assert channels.telegram.texts(BOB)[0].startswith("That link code has expired")
    assert _linked_user(channels, "telegram", str(BOB)) is None


def test_the_same_link_update_retried_is_not_refused_as_reused(channels: Channels) -> None:
    update_ = message_update(BOB, f"/start {channels.code()}")
    assert post_update(channels.telegram_webhook, TELEGRAM_SECRET, update_).json()["outcomes"] == ["linked"]
    assert post_update(channels.telegram_webhook, TELEGRAM_SECRET, update_).json()["outcomes"] == ["duplicate"]
    wait_for(lambda: channels.telegram.texts(BOB))
    time.sleep(0.5)
    assert len(channels.telegram.texts(BOB)) == 1


def test_guessing_codes_stops_being_heard(channels: Channels) -> None:
    outcomes = [_say(channels, BOB, f"/start WRONGCODE{i}")[0] for i in range(linking.MAX_FAILURES + 2)]
    assert outcomes == ["refused"] * linking.MAX_FAILURES + ["ignored", "ignored"]
    # Even a valid code is not heard from this sender for the rest of the hour.
    assert _say(channels, BOB, f"/start {channels.code()}") == ["ignored"]


def test_an_unknown_sender_is_told_how_to_link_once_an_hour_and_no_model_runs(channels: Channels) -> None:
    assert _say(channels, BOB, "hello?") == ["told"]
    assert _say(channels, BOB, "anyone?") == ["ignored"]
    assert _say(channels, BOB, "/start") == ["ignored"]
    wait_for(lambda: channels.telegram.texts(BOB))
    time.sleep(0.5)
    [told] = channels.telegram.texts(BOB)
    assert "link" in told and "/start CODE" in told
    # An hour later, once more.
    with channels.engine.begin() as conn:
        conn.execute(update(channel_identities).values(help_sent_ms=int(time.time() * 1000) - 3_601_000))
    assert _say(channels, BOB, "still there?") == ["told"]
    wait_for(lambda: len(channels.telegram.texts(BOB)) == 2)
    assert channels.upstream.chat_requests() == [] and channels.usage_count() == 0


def test_whatsapp_link_and_a_bare_start_on_telegram(channels: Channels) -> None:
    phone = "447700900123"
    wa = channels.whatsapp
    response = wa.deliver(channels.whatsapp_webhook, text_message(wa, phone, f"link {channels.code().lower()}"))
    assert response.json()["outcomes"] == ["linked"]
    wait_for(lambda: wa.texts(phone))
    assert wa.texts(phone)[0].startswith("Linked")
    assert _say(channels, BOB, f"/start {channels.code()}") == ["linked"]
    assert _say(channels, BOB, "/start") == ["told"]
    wait_for(lambda: len(channels.telegram.texts(BOB)) == 2)
    assert channels.telegram.texts(BOB)[1].startswith("Hello! This chat is linked")


@pytest.mark.parametrize("channels", [{"channels": {"auto_create_accounts": True}}], indirect=True)
def test_an_unknown_sender_gets_a_free_account_when_configured(channels: Channels) -> None:
    assert _say(channels, BOB, "/balance") == ["recorded"]  # (the fake model is not open to Free)
    wait_for(lambda: any("100" in t for t in channels.telegram.texts(BOB)))
    user_id = _linked_user(channels, "telegram", str(BOB))
    assert user_id is not None and user_id != channels.user_id
    from switchboard.store.schema import users

    with reading(channels.engine) as conn:
        plan = conn.execute(select(users.c.plan).where(users.c.id == user_id)).scalar_one()
    assert plan == "free"
