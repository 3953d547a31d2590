"""The channel layer of one server process: the platforms that are on, and the work that runs
in every `switchboard serve` process like the reminder scheduler (no separate worker).

    hub = ChannelHub(assistant, settings)   # api.state builds it; api.app's lifespan starts it
    await hub.start()
    ... the webhooks call hub.intake.accept(channel, message) ...
    await hub.stop()

A channel is on when its configuration section is present and its secrets are set; a section
whose secrets are missing is logged and left off (`switchboard channels status` says why).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import httpx
from sqlalchemy import Connection, update

from switchboard.assistant.assistant import Assistant
from switchboard.billing.accounts import now_ms
from switchboard.channels.answer import Answerer
from switchboard.channels import outbox
from switchboard.channels.base import Channel, ChatMove, StatusUpdate
from switchboard.channels.delivery import Sender
from switchboard.channels.discord import Discord
from switchboard.channels.intake import Intake
from switchboard.channels.moves import move_chat
from switchboard.channels.reminder_feed import ReminderFeed
from switchboard.channels.telegram import Telegram
from switchboard.channels.whatsapp import WhatsApp
from switchboard.channels.worker import Worker
from switchboard.core.config import Settings
from switchboard.store.channels_schema import channel_state
from switchboard.store.conflict import insert_or_ignore

log = logging.getLogger(__name__)


def build_channels(settings: Settings, client: httpx.AsyncClient) -> tuple[dict[str, Channel], dict[str, str]]:
    """(the channels that are on, by name; why each configured one is off)."""
    config = settings.channels
    factories: list[tuple[str, object, Callable[[], Channel]]] = [
        ("telegram", config.telegram, lambda: Telegram(config.telegram, client)),  # type: ignore[arg-type]
        ("whatsapp", config.whatsapp, lambda: WhatsApp(config.whatsapp, client)),  # type: ignore[arg-type]
        ("discord", config.discord, lambda: Discord(config.discord, client)),  # type: ignore[arg-type]
    ]
    on, off = {}, {}
    for name, section, make in factories:
        if section is None:
            continue
        try:
            on[name] = make()
        except ValueError as exc:
            off[name] = str(exc)
    return on, off


class ChannelHub:
    def __init__(self, assistant: Assistant, settings: Settings) -> None:
        self.assistant = assistant
        self.services = assistant.services
        self.runtime = self.services.runtime
        self.settings = settings
        self.config = settings.channels
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(self.config.send_timeout_s, connect=10.0))
        self.adapters, self.off = build_channels(settings, self.client)
        self.intake = Intake(self)
        self.answerer = Answerer(self)
        self.sender = Sender(self)
        self.reminders = ReminderFeed(self)
        self.worker = Worker(self)
        self._starting: dict[str, asyncio.Task[None]] = {}
        self._attached: list[asyncio.Task[None]] = []  # what adapters run beside the worker (Discord's Gateway)

    @property
    def process_id(self) -> int | None:
        """This process's id in the registry (what claims record)."""
        return self.runtime.heartbeat.process_id

    def get(self, name: str) -> Channel | None:
        return self.adapters.get(name)

    async def start(self) -> None:
        for name, why in self.off.items():
            log.warning("channel %s is configured but off: %s", name, why)
        if not self.adapters:
            return
        self.assistant.scheduler.on_delivered.append(self.reminders.on_delivered)
        for name, channel in self.adapters.items():
            self._starting[name] = asyncio.create_task(self._introduce(name, channel))
            self._attached += [asyncio.ensure_future(work) for work in channel.attach(self)]
        self.worker.start()
        log.info("channels on: %s", ", ".join(sorted(self.adapters)))

    async def stop(self) -> None:
        for task in [*self._attached, *self._starting.values()]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.worker.stop()
        await self.client.aclose()

    async def ready(self, name: str, timeout_s: float = 2.0) -> None:
        """Wait (briefly) until the channel knows itself (Telegram's username, for mentions)."""
        task = self._starting.get(name)
        if task is not None and not task.done():
            with contextlib.suppress(asyncio.TimeoutError, Exception):
                await asyncio.wait_for(asyncio.shield(task), timeout_s)

    async def _introduce(self, name: str, channel: Channel) -> None:
        """The channel's start (getMe), retried with backoff until it answers."""
        delay = 1.0
        while True:
            try:
                detail = await channel.start()
                await self._state(name, detail=detail)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - recorded; messages are still received
                await self.note_error(name, f"could not reach the platform: {exc}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 300.0)

    async def statuses(self, channel: Channel, updates: list[StatusUpdate]) -> None:
        """The platform's word on what it was sent (WhatsApp `statuses`): a message it accepted
        and then could not deliver is marked failed and reported. Never a turn."""
        for status in updates:
            if status.status != "failed":
                continue
            changed = await self.runtime.runner.run(
                lambda c, s=status: outbox.failed_later(c, s.platform_message_id, s.error))
            if changed:
                await self.note_error(channel.name, f"a sent message failed on the platform: {status.error}")

    async def moved(self, channel: Channel, moves: list[ChatMove]) -> None:
        """Chats that have a new id (a Telegram group upgraded to a supergroup): their
        conversations and queued work move there (channels.moves). Never a turn; the same move
        again (Telegram says it in both groups, and retries) changes nothing."""
        for move in moves:
            done = await self.runtime.runner.run(
                lambda c, m=move: move_chat(c, channel.name, channel.bot_id, m.old_chat_id, m.new_chat_id))
            if done.any:
                log.info("%s chat %s is now %s: moved %s", channel.name, move.old_chat_id, move.new_chat_id, done)
        self.wake_inbox()
        self.wake_outbox()

    def wake_inbox(self) -> None:
        self.worker.inbox_event.set()

    def wake_outbox(self) -> None:
        self.worker.outbox_event.set()

    async def note_error(self, name: str, error: str) -> None:
        """Remember the channel's last error for `switchboard channels status` (and log it)."""
        log.warning("channel %s: %s", name, error)
        with contextlib.suppress(Exception):
            await self._state(name, last_error=error[:2000], last_error_ms=now_ms())

    async def _state(self, name: str, **values: object) -> None:
        at = now_ms()

        def work(conn: Connection) -> None:
            if not insert_or_ignore(conn, channel_state, {"channel": name, "updated_ms": at, **values}, ["channel"]):
                conn.execute(update(channel_state).where(channel_state.c.channel == name)
                             .values(updated_ms=at, **values))

        await self.runtime.runner.run(work)

