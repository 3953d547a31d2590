"""What the channel layer itself says: to people who are not linked yet, about linking, about
messages it cannot handle, about a part sent again; and the out-of-credits reply with a way to
pay. The assistant's own replies come from its turn (switchboard.assistant)."""

from __future__ import annotations

import asyncio
import logging

from switchboard.assistant.events import TurnCompleted, TurnFailed
from switchboard.billing.checkout import StripeGateway
from switchboard.core.config import Settings

log = logging.getLogger(__name__)

# Put before a part whose earlier sending may have arrived (the sender died mid-send, or the
# platform did not answer): the user may see it twice, and is told so.
RESENT = "(Sent again: I could not confirm that this arrived, so you may see it twice.)\n\n"
RESERVE = len(RESENT) + 8  # room kept in every part for that note

_CANNOT = {
    "voice": "listen to voice messages", "audio": "listen to audio", "image": "see images", "video": "watch videos",
    "file": "read files", "sticker": "read stickers", "location": "use locations", "contact": "use contact cards",
}


def how_to_link(hint: str) -> str:
    return ("Hi! I'm the Switchboard assistant. To talk with me, link this chat to your Switchboard account: "
            f"get a link code (`switchboard channels link-code YOUR_EMAIL`), then {hint}.")


def linked(email: str) -> str:
    return (f"Linked: this chat now talks to the Switchboard account {mask_email(email)}. Just write to me; "
            "/help lists what else I can do.")


def welcome_back(email: str) -> str:
    return (f"Hello! This chat is linked to the Switchboard account {mask_email(email)}: just write to me. "
            "/help lists what else I can do.")


def bad_code(status: str, hint: str) -> str:
    why = {"expired": "That link code has expired (codes last a few minutes).",
           "used": "That link code was used already: each code works once."}.get(
        status, "That is not a valid link code.")
    return f"{why} Get a new one and {hint}."


def cannot_handle(kind: str) -> str:
    what = _CANNOT.get(kind, "handle this kind of message")
    return f"Sorry, I can't {what} yet. Please send your message as text."


def mask_email(email: str) -> str:
    """ada.lovelace@example.com -> a***@example.com: enough to recognise, not to harvest."""
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}" if domain else "***"


def turn_reply(event: TurnCompleted | TurnFailed) -> str:
    """The text a finished turn sends: the stored reply, or the stored failure message."""
    if isinstance(event, TurnCompleted):
        return event.message.content or "(no answer)"
    if event.message is not None and event.message.content:
        return event.message.content
    return event.error


async def checkout_line(settings: Settings, user_id: int, email: str) -> str | None:
    """A Stripe Checkout link for the smallest top-up pack, where Stripe is configured; None
    otherwise, or if Stripe could not make one (the reply then goes without it)."""
    if not settings.stripe.api_key() or not settings.packs:
        return None
    name, pack = min(settings.packs.items(), key=lambda item: item[1].usd)
    try:
        session = await asyncio.to_thread(StripeGateway(settings.stripe).checkout, settings, user_id, email, pack=name)
    except Exception as exc:  # noqa: BLE001 - the reply still says what happened, without a link
        log.warning("no checkout link for user %s: %s", user_id, getattr(exc, "message", exc))
        return None
    return f"Top up {pack.credits:,} credits for ${pack.usd}: {session['url']}"
