"""What the user gets back: long replies whole (split at each platform's limit, code blocks
closed and reopened, escaped text counted as Telegram counts it), out of credits with a way to
pay, reminders through the channel they were set in."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from switchboard.core.config import PlanConfig
from tests.api.conftest import add_user, wait_for
from tests.channels.conftest import TELEGRAM_SECRET, Channels, linked_on_telegram, linked_on_whatsapp, roomy_plans, running_channels
from tests.fakes import stripe_api as fs
from tests.fakes.telegram_api import message_update, parse_html, post_update, utf16_len
from tests.fakes.whatsapp_api import text_message

ADA = 4242
PHONE = "16505551234"
# A model that may write a long reply (the default fake's output stops at 100 tokens).
WORDY = {"models": [{"name": "fake-small", "provider": "fake", "upstream_name": "fake-model", "context_window": 32000,
                     "input_usd_per_mtok": 1, "output_usd_per_mtok": 2, "max_output_tokens": 8000}]}


def _long_reply() -> str:
    """Prose with HTML-special characters, a long code block, prose again: about 14,000 characters."""
    prose = " ".join(f"Sentence {i} says a < b && c > d." for i in range(130))
    code = "\n".join(f"    if x{i} < {i} and y > 0: total += x{i}  # <tag> & more" for i in range(90))
    return f"{prose}\n\n```python\n{code}\n```\n\n{prose}"


def _code_lines(text: str) -> list[str]:
    return [line for line in text.split("\n") if "total +=" in line]


@pytest.mark.parametrize("channels", [WORDY], indirect=True)
def test_a_long_reply_arrives_whole_on_telegram(channels: Channels) -> None:
    linked_on_telegram(channels, ADA)
    reply = _long_reply()
    channels.upstream.configure(text=reply, chunks=20)
    post_update(channels.telegram_webhook, TELEGRAM_SECRET, message_update(ADA, "write a lot"))
    wait_for(lambda: len(channels.telegram.texts(ADA)) >= 4, timeout=20)
    wait_for(lambda: channels.outbox_count("pending") == 0 and channels.outbox_count("sending") == 0)
    sent = [m for m in channels.telegram.sent if str(m["chat_id"]) == str(ADA)][1:]  # after "Linked"
    assert len(sent) >= 3
    for message in sent:
        visible, problem = parse_html(message["text"])
        assert problem is None and utf16_len(visible) <= 4096  # Telegram's count, after entity parsing
        assert message["text"].count("<pre>") == message["text"].count("</pre>")
    visible = [m["visible"] for m in sent]
    # Every line of code arrives once, in order, inside a code block; the prose, whole and in order.
    code_parts = [m for m in sent if "<pre>" in m["text"]]
    assert all('class="language-python"' in m["text"] for m in code_parts)
    assert [line.strip() for v in visible for line in _code_lines(v)] == [line.strip() for line in _code_lines(reply)]
    words = lambda text: re.sub(r"\s+", " ", text).split(" ")  # noqa: E731
    prose = [w for v in visible for w in words(v) if w.startswith(("Sentence", "says"))]
    assert prose == [w for w in words(reply) if w.startswith(("Sentence", "says"))]
    # Escaped characters count once, as Telegram counts them: parts are not cut short for them.
    assert max(utf16_len(v) for v in visible) > 3500


@pytest.mark.parametrize("channels", [WORDY], indirect=True)
def test_a_long_reply_arrives_whole_on_whatsapp(channels: Channels) -> None:
    linked_on_whatsapp(channels, PHONE)
    reply = _long_reply()
    channels.upstream.configure(text=reply, chunks=20)
    channels.whatsapp.deliver(channels.whatsapp_webhook, text_message(channels.whatsapp, PHONE, "write a lot"))
    wait_for(lambda: len(channels.whatsapp.texts(PHONE)) >= 4, timeout=20)
    wait_for(lambda: channels.outbox_count("pending") == 0 and channels.outbox_count("sending") == 0)
    bodies = channels.whatsapp.texts(PHONE)[1:]
    assert all(len(b) <= 4096 for b in bodies) and len(bodies) >= 3
    assert all(b.count("```") % 2 == 0 for b in bodies)  # every part's code block is closed
    assert [line.strip() for b in bodies for line in _code_lines(b)] == [line.strip() for line in _code_lines(reply)]


@pytest.fixture
def broke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Channels, fs.FakeStripe, int]]:
    """The gateway with Stripe (a fake) and a user whose plan leaves them 1 credit."""
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_fake")
    with fs.FakeStripe("sk_test_fake") as stripe:
        plans = roomy_plans()
        plans["tiny"] = PlanConfig(name="tiny", monthly_usd=0, monthly_credits=1, turn_credits=1000)
        with running_channels(tmp_path, monkeypatch, {"plans": plans, "stripe": {"api_base": stripe.url}}) as gw:
            user_id, _ = add_user(gw.engine, gw.settings, "broke@example.com", "tiny")
            yield gw, stripe, user_id


def test_out_of_credits_says_so_with_a_checkout_link_and_no_model_call(broke: tuple[Channels, fs.FakeStripe, int]) -> None:
    gw, stripe, user_id = broke
    code = gw.code(user_id)
    post_update(gw.telegram_webhook, TELEGRAM_SECRET, message_update(ADA, f"/start {code}"))
    post_update(gw.telegram_webhook, TELEGRAM_SECRET, message_update(ADA, "Tell me a long story"))
    wait_for(lambda: len(gw.telegram.texts(ADA)) == 2)
    reply = gw.telegram.texts(ADA)[1]
    assert "out of credits" in reply
    assert re.search(r"Top up 600 credits for \$3(\.00)?: https://checkout\.stripe\.test/c/pay/cs_test\d+", reply)
    assert stripe.sessions[-1]["metadata"] == {"user_id": str(user_id), "kind": "pack", "pack": "600"}
    # The same on WhatsApp.
    gw.whatsapp.deliver(gw.whatsapp_webhook, text_message(gw.whatsapp, PHONE, f"LINK {gw.code(user_id)}"))
    gw.whatsapp.deliver(gw.whatsapp_webhook, text_message(gw.whatsapp, PHONE, "And another story"))
    wait_for(lambda: len(gw.whatsapp.texts(PHONE)) == 2)
    assert "out of credits" in gw.whatsapp.texts(PHONE)[1] and "https://checkout.stripe.test/" in gw.whatsapp.texts(PHONE)[1]
    assert gw.upstream.chat_requests() == []


def test_a_reminder_is_delivered_through_the_channel_it_was_set_in(channels: Channels) -> None:
    linked_on_telegram(channels, ADA)
    post_update(channels.telegram_webhook, TELEGRAM_SECRET, message_update(ADA, "/remind in 2 seconds stretch"))
    wait_for(lambda: len(channels.telegram.texts(ADA)) == 2)
    assert "stretch" in channels.telegram.texts(ADA)[1]
    wait_for(lambda: any(t.startswith("⏰ Reminder: stretch") for t in channels.telegram.texts(ADA)), timeout=15)
    # Once, whatever sweeps and hooks ran.
    import time

    time.sleep(6)  # past the next sweep
    assert sum(t.startswith("⏰ Reminder") for t in channels.telegram.texts(ADA)) == 1
    assert channels.upstream.chat_requests() == []
