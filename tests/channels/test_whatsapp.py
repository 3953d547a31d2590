"""WhatsApp end to end: a real gateway, the fake Cloud API, the fake model upstream."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.api.conftest import wait_for
from tests.channels.conftest import WHATSAPP_VERIFY, Channels, linked_on_whatsapp
from tests.fakes.whatsapp_api import signed, status_update, text_message

PHONE = "16505551234"


def test_the_verification_handshake(channels: Channels) -> None:
    good = {"hub.mode": "subscribe", "hub.verify_token": WHATSAPP_VERIFY, "hub.challenge": "1158201444"}
    response = httpx.get(channels.whatsapp_webhook, params=good)
    assert response.status_code == 200 and response.text == "1158201444"
    for bad in ({**good, "hub.verify_token": "nope"}, {**good, "hub.mode": "unsubscribe"},
                {k: v for k, v in good.items() if k != "hub.verify_token"}):
        refused = httpx.get(channels.whatsapp_webhook, params=bad)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "verify_token_mismatch"


def test_a_linked_user_is_answered_with_the_typing_indicator(channels: Channels) -> None:
    linked_on_whatsapp(channels, PHONE)
    channels.upstream.configure(text="Hi Ada!", chunks=1)
    payload = text_message(channels.whatsapp, PHONE, "hello")
    response = channels.whatsapp.deliver(channels.whatsapp_webhook, payload)
    assert response.status_code == 200 and response.json()["outcomes"] == ["recorded"]
    wait_for(lambda: "Hi Ada!" in channels.whatsapp.texts(PHONE))
    sent = channels.whatsapp.sent[-1]
    assert sent["to"] == PHONE and sent["recipient_type"] == "individual" and sent["type"] == "text"
    wamid = payload["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
    assert channels.whatsapp.typing[-1] == wamid


def test_forged_missing_and_replayed_signatures_are_refused_with_no_turn(channels: Channels) -> None:
    linked_on_whatsapp(channels, PHONE)
    requests_before = len(channels.whatsapp.requests)
    genuine = text_message(channels.whatsapp, PHONE, "first")
    _, genuine_signature = signed(channels.whatsapp.app_secret, genuine)
    other = json.dumps(text_message(channels.whatsapp, PHONE, "second")).encode()
    forged_body, forged_signature = signed("not-the-app-secret", text_message(channels.whatsapp, PHONE, "third"))
    attempts = [
        (other, {}),  # missing
        (forged_body, {"x-hub-signature-256": forged_signature}),  # signed with another secret
        (other, {"x-hub-signature-256": genuine_signature}),  # a genuine signature replayed on another body
        (other, {"x-hub-signature-256": "sha256="}),
        (other, {"x-hub-signature-256": genuine_signature.removeprefix("sha256=")}),
    ]
    for body, headers in attempts:
        response = httpx.post(channels.whatsapp_webhook, content=body,
                              headers={"content-type": "application/json", **headers})
        assert response.status_code == 401, response.text
    time.sleep(0.5)
    assert len(channels.inbox()) == 1  # the LINK message only
    assert channels.upstream.chat_requests() == [] and len(channels.whatsapp.requests) == requests_before


def test_the_same_message_twice_is_answered_once_and_statuses_never_start_a_turn(channels: Channels) -> None:
    linked_on_whatsapp(channels, PHONE)
    payload = text_message(channels.whatsapp, PHONE, "only once")
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        channels.whatsapp.deliver(channels.whatsapp_webhook, payload).json()["outcomes"])) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [["duplicate"]] * 3 + [["recorded"]]
    wait_for(lambda: "Hello from the fake upstream." in channels.whatsapp.texts(PHONE))
    reply_id = channels.whatsapp.sent[-1]["id"]
    for status in ("sent", "delivered", "read"):
        response = channels.whatsapp.deliver(channels.whatsapp_webhook, status_update(
            channels.whatsapp.phone_number_id, channels.whatsapp.display_phone_number, reply_id, PHONE, status))
        assert response.status_code == 200 and response.json()["outcomes"] == []
    time.sleep(1.0)
    assert channels.whatsapp.texts(PHONE).count("Hello from the fake upstream.") == 1
    assert len(channels.upstream.chat_requests()) == 1 and channels.usage_count() == 1


def test_identities_are_keyed_on_the_business_scoped_id(channels: Channels) -> None:
    bsuid = "US.13491208655302741918"
    linked_on_whatsapp(channels, PHONE)  # linked while webhooks carried only the phone number
    # Now the webhook carries the business-scoped id: still Ada, re-keyed.
    channels.whatsapp.deliver(channels.whatsapp_webhook, text_message(channels.whatsapp, PHONE, "hi", bsuid=bsuid))
    wait_for(lambda: "Hello from the fake upstream." in channels.whatsapp.texts(PHONE))
    # A user known only by their business-scoped id (a username, no phone number) is written to by it.
    other = "BR.99887766554433221100"
    channels.whatsapp.deliver(channels.whatsapp_webhook, text_message(channels.whatsapp, None, "hello", bsuid=other))
    wait_for(lambda: any(m.get("recipient") == other for m in channels.whatsapp.sent))
    assert "link" in [m for m in channels.whatsapp.sent if m.get("recipient") == other][0]["text"]["body"].lower()


def test_a_throttled_send_is_retried_once_accepted(channels: Channels) -> None:
    linked_on_whatsapp(channels, PHONE)
    channels.whatsapp.fail(400, 130429, message="Rate limit hit")
    channels.whatsapp.deliver(channels.whatsapp_webhook, text_message(channels.whatsapp, PHONE, "hello"))
    wait_for(lambda: "Hello from the fake upstream." in channels.whatsapp.texts(PHONE), timeout=15)
    assert channels.whatsapp.texts(PHONE).count("Hello from the fake upstream.") == 1


def test_a_voice_note_gets_a_clear_reply(channels: Channels) -> None:
    linked_on_whatsapp(channels, PHONE)
    channels.whatsapp.deliver(channels.whatsapp_webhook, text_message(channels.whatsapp, PHONE, kind="audio"))
    wait_for(lambda: any("voice messages" in t for t in channels.whatsapp.texts(PHONE)))
    assert channels.upstream.chat_requests() == []


@pytest.mark.parametrize("channels", [{"channels": {"whatsapp": {"reminder_template": "reminder_v1"}}}], indirect=True)
def test_a_reminder_outside_the_24_hour_window_goes_out_as_the_template(channels: Channels) -> None:
    channels.whatsapp.templates.add(("reminder_v1", "en_US"))
    linked_on_whatsapp(channels, PHONE)
    channels.whatsapp.deliver(channels.whatsapp_webhook, text_message(channels.whatsapp, PHONE, "/remind in 2 seconds stretch"))
    wait_for(lambda: any("set" in t for t in channels.whatsapp.texts(PHONE)[1:]))
    _close_window(channels, PHONE)
    wait_for(lambda: any(m.get("type") == "template" for m in channels.whatsapp.sent), timeout=15)
    template = [m for m in channels.whatsapp.sent if m.get("type") == "template"][0]["template"]
    assert template["name"] == "reminder_v1" and "stretch" in template["components"][0]["parameters"][0]["text"]


def test_a_reminder_outside_the_window_without_a_template_is_recorded_undeliverable(channels: Channels) -> None:
    linked_on_whatsapp(channels, PHONE)
    channels.whatsapp.deliver(channels.whatsapp_webhook, text_message(channels.whatsapp, PHONE, "/remind in 2 seconds stretch"))
    wait_for(lambda: len(channels.whatsapp.texts(PHONE)) == 2)
    _close_window(channels, PHONE)
    wait_for(lambda: channels.outbox_count("failed") == 1, timeout=15)
    [failed] = [row for row in channels.outbox() if row.status == "failed"]
    assert failed.kind == "reminder" and "24-hour" in failed.last_error
    assert not any("stretch" in t for t in channels.whatsapp.texts(PHONE)[2:])


def test_a_message_the_platform_reports_failed_is_marked_failed(channels: Channels) -> None:
    linked_on_whatsapp(channels, PHONE)
    channels.whatsapp.deliver(channels.whatsapp_webhook, text_message(channels.whatsapp, PHONE, "hello"))
    wait_for(lambda: "Hello from the fake upstream." in channels.whatsapp.texts(PHONE))
    reply_id = channels.whatsapp.sent[-1]["id"]
    channels.whatsapp.deliver(channels.whatsapp_webhook, status_update(
        channels.whatsapp.phone_number_id, channels.whatsapp.display_phone_number, reply_id, PHONE, "failed",
        errors=[{"code": 131026, "title": "Message undeliverable", "message": "Message undeliverable"}]))
    wait_for(lambda: channels.outbox_count("failed") == 1)
    assert "131026" in [r for r in channels.outbox() if r.status == "failed"][0].last_error


def _close_window(gw: Channels, phone: str) -> None:
    """As if the user's last message were 25 hours old."""
    from sqlalchemy import update

    from switchboard.store.channels_schema import channel_identities

    with gw.engine.begin() as conn:
        conn.execute(update(channel_identities).where(channel_identities.c.chat_id == phone)
                     .values(last_inbound_ms=int((time.time() - 25 * 3600) * 1000)))
    gw.whatsapp.users_wrote[phone] = time.time() - 25 * 3600


def test_a_slow_model_is_still_acknowledged_within_a_second(channels: Channels) -> None:
    linked_on_whatsapp(channels, PHONE)
    channels.upstream.configure(text="slow but sure", chunks=2, first_byte_delay_s=3.0)
    started = time.monotonic()
    response = channels.whatsapp.deliver(channels.whatsapp_webhook, text_message(channels.whatsapp, PHONE, "hm?"))
    assert response.status_code == 200 and time.monotonic() - started < 1.0
    wait_for(lambda: "slow but sure" in channels.whatsapp.texts(PHONE), timeout=15)


def test_429_is_retried_and_nothing_is_sent_twice(channels: Channels) -> None:
    linked_on_whatsapp(channels, PHONE)
    channels.whatsapp.fail(429, 4, message="Application request limit reached")
    channels.whatsapp.deliver(channels.whatsapp_webhook, text_message(channels.whatsapp, PHONE, "hello"))
    wait_for(lambda: "Hello from the fake upstream." in channels.whatsapp.texts(PHONE), timeout=15)
    tries = [r for r in channels.whatsapp.requests if (r.get("text") or {}).get("body") == "Hello from the fake upstream."]
    assert len(tries) == 2 and channels.whatsapp.texts(PHONE).count("Hello from the fake upstream.") == 1


def test_a_reply_that_cannot_be_delivered_is_retried_then_reported(channels: Channels) -> None:
    linked_on_whatsapp(channels, PHONE)
    attempts = channels.settings.channels.delivery_attempts
    channels.whatsapp.fail(500, 2, times=attempts)
    channels.whatsapp.deliver(channels.whatsapp_webhook, text_message(channels.whatsapp, PHONE, "hello"))
    wait_for(lambda: channels.outbox_count("failed") == 1, timeout=30)
    [failed] = [row for row in channels.outbox() if row.status == "failed"]
    assert failed.attempts == attempts and "(2)" in failed.last_error


def test_linking_codes_expired_reused_and_the_unknown_sender_told_once(channels: Channels) -> None:
    wa, other = channels.whatsapp, "447700900555"
    code = channels.code()
    assert wa.deliver(channels.whatsapp_webhook, text_message(wa, PHONE, f"LINK {code}")).json()["outcomes"] == ["linked"]
    assert wa.deliver(channels.whatsapp_webhook, text_message(wa, other, f"LINK {code}")).json()["outcomes"] == ["refused"]
    expired = channels.code(ttl_s=60)
    from sqlalchemy import update

    from switchboard.store.channels_schema import channel_link_codes

    with channels.engine.begin() as conn:
        conn.execute(update(channel_link_codes).where(channel_link_codes.c.used_ms.is_(None))
                     .values(expires_ms=int(time.time() * 1000) - 1))
    assert wa.deliver(channels.whatsapp_webhook, text_message(wa, other, f"LINK {expired}")).json()["outcomes"] == ["refused"]
    wait_for(lambda: len(wa.texts(other)) == 2)
    assert wa.texts(other)[0].startswith("That link code was used already")
    assert wa.texts(other)[1].startswith("That link code has expired")
    stranger = "447700900777"
    outcomes = [wa.deliver(channels.whatsapp_webhook, text_message(wa, stranger, t)).json()["outcomes"][0]
                for t in ("hi", "hello?", "anyone?")]
    assert outcomes == ["told", "ignored", "ignored"]
    wait_for(lambda: wa.texts(stranger))
    time.sleep(0.5)
    assert len(wa.texts(stranger)) == 1 and "LINK CODE" in wa.texts(stranger)[0]
    assert channels.upstream.chat_requests() == []


def test_groups_are_answered_only_when_replied_to_or_mentioned(channels: Channels) -> None:
    linked_on_whatsapp(channels, PHONE)
    wa, group = channels.whatsapp, "Y2FwaV9ncm91cDoxNzA1NTU1MDEzOToxMjAzNjM0MDQ2OTQyMzM4MjAZD"
    quiet = text_message(wa, PHONE, "lunch anyone?", group_id=group)
    mentioned = text_message(wa, PHONE, f"@{wa.display_phone_number} what time is it in Tokyo?", group_id=group)
    replied = text_message(wa, PHONE, "and in Paris?", group_id=group,
                           context={"from": wa.display_phone_number, "id": "wamid.earlier"})
    stranger = text_message(wa, "447700900999", f"@{wa.display_phone_number} hi", group_id=group)
    outcomes = [wa.deliver(channels.whatsapp_webhook, p).json()["outcomes"] for p in (quiet, mentioned, replied, stranger)]
    assert outcomes == [["ignored"], ["recorded"], ["recorded"], ["ignored"]]
    wait_for(lambda: len([m for m in wa.sent if m.get("to") == group]) == 2)
    to_group = [m for m in wa.sent if m.get("to") == group]
    assert all(m["recipient_type"] == "group" for m in to_group)
    assert to_group[0]["context"]["message_id"] == mentioned["entry"][0]["changes"][0]["value"]["messages"][0]["id"]


def test_a_reminder_within_the_window_is_sent_as_text(channels: Channels) -> None:
    linked_on_whatsapp(channels, PHONE)
    channels.whatsapp.deliver(channels.whatsapp_webhook, text_message(channels.whatsapp, PHONE, "/remind in 2 seconds drink water"))
    wait_for(lambda: any(t.startswith("⏰ Reminder: drink water") for t in channels.whatsapp.texts(PHONE)), timeout=15)
    assert not any(m.get("type") == "template" for m in channels.whatsapp.sent)
