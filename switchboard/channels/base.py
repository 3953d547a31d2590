"""What a chat platform adapter is: the thin part that differs per platform.

Everything that must hold on every channel (verify first, deduplicate durably, acknowledge at
once, answer once, deliver whole, link identities) lives in the shared layer: intake, inbox,
outbox, worker, linking, split. An adapter only knows its platform's wire format:

- `verify(headers, raw body)`: is this request really from the platform (constant time)?
- `parse(raw body)`: the platform's payload as `Inbound` messages (and delivery statuses);
- `send(Outgoing)`: one message out, its outcome as a `SendResult` (accepted, or why not and
  whether to retry, after how long, and whether the platform may have it anyway);
- `typing(...)`: the typing indicator; `render`/`measure`/`limit`: how text is counted and shown.

Discord (channels/discord/) is one more such adapter; what it runs beside the webhooks (its
Gateway connection) it hands the hub through `attach`.
"""

from __future__ import annotations

import abc
import hmac
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import httpx

from switchboard.channels.split import split_text

if TYPE_CHECKING:
    from switchboard.channels.hub import ChannelHub


def chat_key(channel: str, bot_id: str, chat_id: str) -> str:
    """What orders one chat's inbox and outbox rows and names where they go: channel, bot, chat."""
    return f"{channel}:{bot_id}:{chat_id}"


@dataclass(slots=True)
class Inbound:
    """One platform message, normalised."""

    channel: str
    bot_id: str
    external_id: str  # what deduplicates it: Telegram's update_id, WhatsApp's wamid
    sender_id: str  # the platform identity (Telegram user id; WhatsApp business-scoped id, else phone)
    chat_id: str  # where the answer goes
    text: str | None
    kind: str = "text"  # text | voice | audio | image | video | file | sticker | location | contact | other
    sender_alt_id: str | None = None  # WhatsApp: the phone number beside a business-scoped id
    reply_to: str | None = None  # the platform's id of this message (to reply to it, to mark it read)
    thread_id: str | None = None  # a forum topic (Telegram)
    is_group: bool = False
    addressed: bool = True  # in a group: the bot was mentioned or replied to
    from_bot: bool = False  # sent by a bot (this one included): never answered

    @property
    def chat_key(self) -> str:
        return chat_key(self.channel, self.bot_id, self.chat_id)


@dataclass(slots=True)
class StatusUpdate:
    """The platform's word on a message it was sent (WhatsApp `statuses`): never a turn."""

    platform_message_id: str
    status: str  # sent | delivered | read | failed
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ChatMove:
    """A chat that now has another id (a Telegram group upgraded to a supergroup): what was
    kept under `old_chat_id` belongs to `new_chat_id` from now on. Never a turn."""

    old_chat_id: str
    new_chat_id: str


@dataclass(slots=True)
class Parsed:
    messages: list[Inbound] = field(default_factory=list)
    statuses: list[StatusUpdate] = field(default_factory=list)
    moves: list[ChatMove] = field(default_factory=list)


@dataclass(slots=True)
class Outgoing:
    """One message to send: a part of a reply, a reminder, a notice, or a template."""

    chat_id: str
    text: str
    reply_to: str | None = None
    thread_id: str | None = None
    template: str | None = None  # WhatsApp: send this approved template, `text` as its parameter
    template_language: str | None = None


@dataclass(slots=True)
class SendResult:
    ok: bool
    platform_id: str | None = None
    error: str | None = None
    retryable: bool = False  # a transient failure: try again (after retry_after_s if the platform said)
    retry_after_s: float | None = None
    uncertain: bool = False  # the request may have reached the platform: a resend must say so
    outside_window: bool = False  # WhatsApp: free-form messages are closed (24 hours passed)
    moved_to: str | None = None  # the chat has a new id (Telegram's migrate_to_chat_id): this outcome is from there


class BadPayload(ValueError):
    """A verified request whose body is not what the platform documents."""


def same_secret(given: str | bytes | None, expected: str | bytes) -> bool:
    """Constant-time comparison; a missing value never matches."""
    if given is None:
        return False
    a = given.encode() if isinstance(given, str) else given
    b = expected.encode() if isinstance(expected, str) else expected
    return hmac.compare_digest(a, b)


def transport_failure(exc: httpx.HTTPError) -> SendResult:
    """A call that did not get an answer. Not connected (or no connection free): the platform
    cannot have it, retry. Cut off after the request went out (a read timeout, a dropped
    connection): it may have arrived, so a resend must say so."""
    certain = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
    return SendResult(False, error=f"{type(exc).__name__}: the platform did not answer", retryable=True,
                      uncertain=not certain)


class Channel(abc.ABC):
    """A platform adapter. One instance per process, built from the settings; `client` is the
    process's HTTP client for the platform's API."""

    name: ClassVar[str]
    limit: ClassVar[int]  # the most a message may hold, as `measure` counts
    typing_every_s: ClassVar[float]  # how often the typing indicator is repeated while a turn runs
    link_hint: ClassVar[str]  # how a user sends a link code here
    link_help_in_groups: ClassVar[bool] = False  # an unknown sender who addresses the bot in a group is told how to link

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    def attach(self, hub: ChannelHub) -> list[Awaitable[None]]:
        """What this channel runs for as long as the server does, beside the shared worker
        (Discord's Gateway connection); the hub runs each as a task and cancels it at stop."""
        return []

    @property
    @abc.abstractmethod
    def bot_id(self) -> str: ...

    async def start(self) -> str | None:
        """Learn what the adapter needs from the platform (the bot's name); what to show in
        `channels status`. Failures are the caller's to record; the channel still receives."""
        return None

    @abc.abstractmethod
    def verify(self, headers: Mapping[str, str], raw: bytes) -> bool: ...

    @abc.abstractmethod
    def parse(self, raw: bytes) -> Parsed: ...

    @abc.abstractmethod
    async def send(self, message: Outgoing) -> SendResult: ...

    @abc.abstractmethod
    async def typing(self, chat_id: str, reply_to: str | None, thread_id: str | None) -> None: ...

    def measure(self, text: str) -> int:
        return len(text)

    def split(self, text: str, reserve: int = 0) -> list[str]:
        """A reply as the parts this platform accepts, `reserve` left free in each (for a note)."""
        return split_text(text, self.limit - reserve, measure=self.measure)

    def link_code(self, message: Inbound) -> str | None:
        """The code of a link command ("/start CODE", "LINK CODE"), or None."""
        return None

    def is_start(self, message: Inbound) -> bool:
        """A bare greeting command (Telegram's /start) answered by the channel layer."""
        return False

    def window_open(self, last_inbound_ms: int | None, now_ms: int) -> bool:
        """Whether a free-form message may be sent now (WhatsApp: 24 hours after the user's last)."""
        return True

    def reminder_template(self) -> tuple[str, str] | None:
        """(template, language) for a reminder outside the window, where the platform needs one."""
        return None
