"""The assistant, as every entry point sees it: take a user's message in a conversation,
produce the reply as a stream of events.

    assistant = Assistant(services)
    await assistant.start()                      # the reminder scheduler
    target = await assistant.open(user_id, conversation_id)    # NotFound for another user's id
    async for event in assistant.send(target, "remind me at 6pm to call mum"):
        ...

A turn runs as a task of its own, detached from whoever listens: if the client goes away
mid-answer, the turn still finishes and its reply is stored (the user finds it in the
conversation), as a channel's turn must. Turns of one conversation run one at a time, across
processes (assistant.lease). Commands ("/help") are answered here, without a model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timezone

from sqlalchemy import Connection

from switchboard.assistant.commands import CommandContext, is_command, run_command
from switchboard.assistant.conversations import Conversation, Message
from switchboard.assistant.events import TextDelta, Totals, TurnCompleted, TurnEvent, TurnFailed
from switchboard.assistant.lease import ConversationLeases, Held
from switchboard.assistant.memory_hooks import MemoryHooks
from switchboard.assistant.profile import Profile, load_profile
from switchboard.assistant.reminders import Scheduler
from switchboard.assistant.services import AssistantServices
from switchboard.assistant.tools.builtin import builtin_tools
from switchboard.assistant.tools.memory_tools import memory_tools
from switchboard.assistant.tools.registry import ToolRegistry
from switchboard.assistant.turn import Turn
from switchboard.core.errors import InvalidRequest

log = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 32_000


@dataclass(slots=True)
class Target:
    """Where a message goes: whose it is and which conversation, as read at `loaded`."""

    profile: Profile
    conversation: Conversation
    loaded: float = field(default_factory=time.monotonic)


FRESH_S = 2.0  # a profile read this recently, with no turn run since, is not read again


@dataclass(slots=True)
class Opened:
    """What a turn starts from, read and written in the transaction that takes its lease."""

    asked: Message  # the user's message, stored
    conversation: Conversation
    history: list[Message]  # the newest messages after the summary, `asked` last


def default_registry() -> ToolRegistry:
    registry = ToolRegistry()
    registry.add(*builtin_tools())
    registry.add(*memory_tools())
    return registry


class Assistant:
    def __init__(self, services: AssistantServices, registry: ToolRegistry | None = None) -> None:
        self.services = services
        self.registry = registry or default_registry()
        settings = services.runtime.settings.assistant
        engine = services.runtime.engine
        self.leases = ConversationLeases(services.runtime.runner, lease_s=settings.lease_s)
        self.scheduler = Scheduler(engine, services.reminders, services.runtime.runner.run,
                                   interval_s=settings.reminder_interval_s)
        self._scheduling: asyncio.Task[None] | None = None
        self._turns: set[asyncio.Task[None]] = set()
        self.memory = MemoryHooks(services, services.memory)  # recall before a turn; keep and extract after

    async def start(self, *, schedule: bool = True) -> None:
        if schedule and self._scheduling is None:
            self._scheduling = asyncio.create_task(self.scheduler.run_forever())

    async def stop(self) -> None:
        await self.memory.stop()
        tasks = [t for t in (self._scheduling, *self._turns) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._scheduling = None

    async def open(self, user_id: int, conversation_id: str) -> Target:
        services = self.services

        def load(conn):  # type: ignore[no-untyped-def]
            return load_profile(conn, user_id), services.conversations.get(conn, user_id, conversation_id)

        profile, conversation = await services.read(user_id, load)
        return Target(profile, conversation)

    def send(self, target: Target, text: str, *, now: datetime | None = None,
             message_uid: str | None = None) -> AsyncIterator[TurnEvent]:
        """Start the turn now (it runs to its end whether or not the events are read) and return
        its events.

        `message_uid` names the user's message: a caller that may run the same message's turn
        again (a channel answering it after a crash) passes the same uid each time, and the
        message is stored once, however many times its turn starts."""
        if not isinstance(text, str) or not text.strip():
            raise InvalidRequest("content must be a non-empty string", param="content")
        if len(text) > MAX_MESSAGE_CHARS:
            raise InvalidRequest(f"content is longer than {MAX_MESSAGE_CHARS} characters", param="content")
        events: asyncio.Queue[TurnEvent | None] = asyncio.Queue()
        task = asyncio.create_task(self._run(target, text, now, message_uid, events))
        self._turns.add(task)
        task.add_done_callback(self._turns.discard)
        return _drain(events)

    async def _run(self, target: Target, text: str, now: datetime | None, message_uid: str | None,
                   events: asyncio.Queue[TurnEvent | None]) -> None:
        uid, conv_id = target.profile.user_id, target.conversation.id
        conversations = self.services.conversations
        kind = "command" if is_command(text) else "text"
        history_n = self.services.runtime.settings.assistant.history_messages

        def begin(c: Connection) -> Opened:
            """In the lease's transaction: the conversation as it is now, the user's message
            stored, and the history the turn starts from (what the last summary left out)."""
            conversation = conversations.get(c, uid, conv_id)
            asked = conversations.message_by_uid(c, uid, conv_id, message_uid) if message_uid is not None else None
            if asked is None:  # (else the same message's turn again: stored once)
                asked = conversations.add_message(c, uid, conv_id, role="user", kind=kind, content=text,
                                                  uid=message_uid)
            history = [] if asked.kind == "command" else conversations.messages(
                c, uid, conv_id, after=conversation.summary_upto, limit=history_n, newest=True)
            return Opened(asked, conversation, history)

        try:
            await self.services.keyring.prepare(uid)  # the data key, outside the writer's transaction
            async with self.leases.hold(conv_id, order_key=uid, first=begin) as held:
                opened = held.first
                assert opened is not None
                if held.waited or time.monotonic() - target.loaded > FRESH_S:
                    # Another turn ran since the profile was read (a time zone set), or a caller
                    # keeps targets (the terminal chat): read it again.
                    target.profile = await self.services.read(uid, lambda c: load_profile(c, uid))
                target.conversation, target.loaded = opened.conversation, time.monotonic()
                async for event in self._turn(target, text, opened, held, now):
                    events.put_nowait(event)
        except Exception as exc:  # noqa: BLE001 - told to the listener, never lost silently
            log.exception("assistant turn failed before it started")
            message = getattr(exc, "message", "the turn could not start")
            events.put_nowait(TurnFailed(None, message, getattr(exc, "code", None) or "error",
                                         getattr(exc, "status", 500), Totals()))
        finally:
            events.put_nowait(None)

    async def _turn(self, target: Target, text: str, opened: Opened, held: Held[Opened], now: datetime | None
                    ) -> AsyncIterator[TurnEvent]:
        """The turn for the user's message, already stored (`opened`); its last write releases
        the conversation's lease (`held`)."""
        services, uid = self.services, target.profile.user_id
        asked = opened.asked
        conv = target.conversation
        now = now or datetime.now(timezone.utc)
        conversations = services.conversations

        if asked.kind == "command":
            reply = await run_command(CommandContext(services, target.profile, conv, now), text)
            if reply.profile is not None:  # /timezone, /name: the caller's target follows
                target.profile = reply.profile
            message = await held.last_write(lambda w: services.write(uid, w), lambda c: conversations.add_message(
                c, uid, conv.id, role="assistant", kind="command", content=reply.text))
            if reply.new_conversation is not None:  # the new one is now the most recent on its channel
                fresh = reply.new_conversation
                await services.write(uid, lambda c: conversations.touch(c, uid, fresh.id))
            balance = await services.read(uid, lambda c: services.runtime.ledger.balance(c, uid))
            yield TextDelta(reply.text)
            yield TurnCompleted(message, Totals(remaining_ucr=balance.available_ucr),
                                conversation_id=reply.new_conversation.id if reply.new_conversation else None)
            return
        reply = None
        turn = Turn(services, self.registry, target.profile, conv, opened.history, now=now, memory_hooks=self.memory,
                    message=text, lease=held)
        async for event in turn.run():
            if isinstance(event, TurnCompleted):
                reply = event.message
            yield event
        target.profile = turn.profile  # a set_timezone tool call: the caller's target follows
        self.memory.after_turn(target.profile, conv.id, [asked] + ([reply] if reply is not None else []))


async def _drain(events: asyncio.Queue[TurnEvent | None]) -> AsyncIterator[TurnEvent]:
    while (event := await events.get()) is not None:
        yield event
