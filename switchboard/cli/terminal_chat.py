"""The chat behind `switchboard assistant EMAIL` (cli.assistant): the assistant in the terminal.

The very same Assistant the API serves, run in this process on the same database (as
`switchboard chat` runs the metered path): every turn is metered and charged to the user, and
the conversation is the user's latest on the `cli` channel, so it continues across runs and is
readable through the API (`--new` starts another). Text is shown as it streams, tool calls as
they start and finish, and after each turn what it cost and the credits left. Chat commands
(/help, /remind, /new...) work as on every channel; /quit, /exit or Ctrl-D leave.

Reminders while the chat is open: reminders of this user's terminal conversations that fall
due are delivered by this process (the same guarded, exactly-once delivery as a server's, so a
server running beside it does no harm) and shown as they arrive, along with any a server
delivered into the open conversation. Reminders of other users and other channels are left to
the servers, which alone can deliver through a channel. With the chat closed and no server
running, a reminder waits and is delivered, marked late, when either runs again.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable

from rich.console import Console
from rich.markup import escape
from sqlalchemy import Connection, Engine, select

from switchboard.accounts import users as users_mod
from switchboard.assistant.assistant import Assistant, Target
from switchboard.assistant.conversations import Conversation, Message
from switchboard.assistant.events import TextDelta, ToolFinished, ToolStarted, Totals, TurnCompleted, TurnFailed, TurnEvent
from switchboard.assistant.services import AssistantServices
from switchboard.billing.accounts import now_ms
from switchboard.core.config import Settings
from switchboard.core.errors import SwitchboardError
from switchboard.core.money import format_credits
from switchboard.crypto import CryptoError, keyring_for
from switchboard.inference.runtime import Runtime
from switchboard.store.assistant_schema import conversations, reminders
from switchboard.store.db import reading

CHANNEL = "cli"
QUIT = frozenset({"/quit", "/exit", "/q"})
RECENT = 6  # messages shown when a conversation is continued
PREVIEW_CHARS = 300


class Lines:
    """Lines typed by the user, each read on a daemon thread of its own, so that the event loop
    goes on (streaming, reminders) while the user types, and leaving never waits for input."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.echo = not sys.stdin.isatty()  # piped input: show it, so the transcript reads well
        if not self.echo:
            import readline  # noqa: F401 - line editing and history for input()

    async def read(self, prompt: str) -> str | None:
        """The next line, or None at the end of input (Ctrl-D)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[str | None] = loop.create_future()

        def work() -> None:
            try:
                line: str | None = self.console.input(prompt)
            except (EOFError, OSError, ValueError):
                line = None

            def settle() -> None:
                if not done.done():
                    done.set_result(line)

            try:
                loop.call_soon_threadsafe(settle)
            except RuntimeError:  # the chat ended meanwhile
                pass

        threading.Thread(target=work, name="assistant-input", daemon=True).start()
        line = await done
        if line is not None and self.echo:
            self.console.print(line, markup=False, highlight=False)
        return line


def due_here(conn: Connection, user_id: int, at_ms: int) -> list[tuple[int, int]]:
    """(id, next run) of the user's active reminders in terminal conversations due at `at_ms`."""
    rows = conn.execute(
        select(reminders.c.id, reminders.c.next_run_ms)
        .join(conversations, conversations.c.id == reminders.c.conversation_id)
        .where(reminders.c.user_id == user_id, reminders.c.status == "active", reminders.c.next_run_ms <= at_ms,
               conversations.c.channel == CHANNEL)
        .order_by(reminders.c.next_run_ms).limit(100)
    ).all()
    return [(int(r.id), int(r.next_run_ms)) for r in rows]


class TerminalChat:
    """One user's chat: reads lines, runs turns, shows their events."""

    def __init__(self, assistant: Assistant, target: Target, out: Console, *, reminder_interval_s: float = 1.0,
                 clock: Callable[[], int] = now_ms) -> None:
        self.assistant = assistant
        self.services = assistant.services
        self.target = target
        self.out = out
        self.reminder_interval_s = reminder_interval_s
        self.clock = clock
        self.prompt = "[bold cyan]you[/bold cyan] › "
        self._busy = False  # a turn is showing: reminders wait for its end
        self._seen = 0  # the newest message id of the open conversation looked at for reminders
        self._at_line_start = True
        self._said = False  # the turn showing has shown something (text or a tool)

    @property
    def user_id(self) -> int:
        return self.target.profile.user_id

    async def run(self, lines: Lines) -> None:
        await self._greet()
        watcher = asyncio.create_task(self._watch_reminders(lines))
        try:
            while (line := await lines.read(self.prompt)) is not None:
                text = line.strip()
                if not text:
                    continue
                if text.lower() in QUIT:
                    break
                await self.turn(text)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        self._newline()

    # -- a turn ---------------------------------------------------------------------------------
    async def turn(self, text: str) -> None:
        self._busy = True
        try:
            try:
                events = self.assistant.send(self.target, text)
            except SwitchboardError as exc:
                self.out.print(f"[red]{escape(exc.message)}[/red]", soft_wrap=True)
                return
            self.out.print("[bold magenta]assistant[/bold magenta] › ", end="")
            self._at_line_start, self._said = False, False
            async for event in events:
                await self.show(event)
        finally:
            self._busy = False

    async def show(self, event: TurnEvent) -> None:
        out = self.out
        if isinstance(event, TextDelta):
            if event.text:
                out.print(event.text, end="", markup=False, highlight=False, soft_wrap=True)
                self._at_line_start, self._said = event.text.endswith("\n"), True
        elif isinstance(event, ToolStarted):
            self._newline()
            self._said = True
            out.print(f"[dim]  ⚙ {escape(event.name)}({escape(_short(event.arguments, 120))}) …[/dim]", soft_wrap=True)
        elif isinstance(event, ToolFinished):
            mark = "✓" if event.outcome == "ok" else "✗"
            cost = f", {format_credits(event.credits_ucr)} credits" if event.credits_ucr else ""
            out.print(f"[dim]  {mark} {escape(event.name)}: {event.outcome}{cost}[/dim]", soft_wrap=True)
        elif isinstance(event, TurnCompleted):
            self._newline()
            stopped = f" · stopped ({event.stopped})" if event.stopped else ""
            out.print(f"[dim]{_totals(event.totals)}{stopped}[/dim]", soft_wrap=True)
            if event.conversation_id:  # /new: what follows goes to the new conversation
                self.target = await self.assistant.open(self.user_id, event.conversation_id)
                self._seen = 0
        elif isinstance(event, TurnFailed):
            if self._said:  # what was said before the failure stays; the failure on a line of its own
                self._newline()
            out.print(f"[red]{escape(event.error)}[/red]", soft_wrap=True)
            self._at_line_start = True
            out.print(f"[dim]{_totals(event.totals)}[/dim]", soft_wrap=True)

    def _newline(self) -> None:
        if not self._at_line_start:
            self.out.print()
            self._at_line_start = True

    # -- the start --------------------------------------------------------------------------------
    async def _greet(self) -> None:
        conv, profile, uid = self.target.conversation, self.target.profile, self.user_id
        services = self.services
        recent: list[Message] = await services.read(uid, lambda c: services.conversations.messages(
            c, uid, conv.id, limit=RECENT, newest=True))
        balance = await services.read(uid, lambda c: services.runtime.ledger.balance(c, uid))
        self._seen = recent[-1].id if recent else 0
        state = "continued" if recent else "new"
        self.out.rule(f"Switchboard assistant · {escape(profile.email)} ({escape(profile.plan)} plan)")
        self.out.print(f"[dim]conversation {conv.id} ({state}) · {format_credits(balance.available_ucr)} credits "
                       f"available[/dim]", soft_wrap=True)
        self.out.print("[dim]/help for commands, /quit or Ctrl-D to leave[/dim]")
        for message in recent:
            if message.role in ("user", "assistant") and message.content:
                who = "you" if message.role == "user" else "assistant"
                self.out.print(f"[dim]{who} › {escape(_short(message.content, PREVIEW_CHARS))}[/dim]", soft_wrap=True)

    # -- reminders while the chat is open --------------------------------------------------------
    async def _watch_reminders(self, lines: Lines) -> None:
        while True:
            await asyncio.sleep(self.reminder_interval_s)
            try:
                await self._deliver_due()
                if not self._busy:
                    await self._show_reminders(lines)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - tried again at the next look
                self.out.print(f"[dim]reminders: {escape(str(exc))}[/dim]")

    async def _deliver_due(self) -> None:
        services, uid, at = self.services, self.user_id, self.clock()
        for rid, due_ms in await services.read(uid, lambda c: due_here(c, uid, at)):
            await services.write(uid, lambda c, rid=rid, due_ms=due_ms: services.reminders.deliver(c, rid, due_ms, at))

    async def _show_reminders(self, lines: Lines) -> None:
        services, uid, conv_id = self.services, self.user_id, self.target.conversation.id
        after = self._seen
        new = await services.read(uid, lambda c: services.conversations.messages(c, uid, conv_id, after=after))
        if self._busy or self.target.conversation.id != conv_id or not new:
            return  # a turn started meanwhile (it shows its own messages), or /new switched
        self._seen = new[-1].id
        shown = [m for m in new if m.kind == "reminder"]
        for message in shown:
            self.out.print()
            self.out.print(f"[bold yellow]{escape(message.content or '')}[/bold yellow]", soft_wrap=True)
        if shown:
            self.out.print(self.prompt, end="")  # the user was at the prompt: show it again


def _short(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _totals(totals: Totals) -> str:
    cost = "free" if not totals.charged_ucr else f"{format_credits(totals.charged_ucr)} credits"
    left = "" if totals.remaining_ucr is None else f" · {format_credits(totals.remaining_ucr)} left"
    models = f" · {', '.join(totals.models)}" if totals.models else ""
    return cost + left + models


async def _conversation(services: AssistantServices, user_id: int, new: bool) -> Conversation:
    """The user's latest terminal conversation, or a new one (`new`, or none yet)."""
    latest = None if new else await services.read(user_id, lambda c: services.conversations.latest(c, user_id, CHANNEL))
    if latest is not None:
        return latest
    return await services.write(user_id, lambda c: services.conversations.create(c, user_id, channel=CHANNEL))


async def run_assistant(settings: Settings, engine: Engine, email: str, new: bool, out: Console, err: Console) -> int:
    """The chat until the input ends; the exit status."""
    try:
        with reading(engine) as conn:
            user = users_mod.find_user(conn, email)
        keyring = keyring_for(settings, engine)
    except SwitchboardError as exc:
        err.print(f"[red]error:[/red] {escape(exc.message)}", soft_wrap=True)
        return 1
    except CryptoError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        return 2
    runtime = Runtime(settings, engine)
    await runtime.start(sweep=False)
    assistant = Assistant(AssistantServices(runtime, keyring))
    await assistant.start(schedule=False)  # this user's terminal reminders only: TerminalChat
    try:
        conv = await _conversation(assistant.services, user.id, new)
        target = await assistant.open(user.id, conv.id)
        chat = TerminalChat(assistant, target, out, reminder_interval_s=settings.assistant.reminder_interval_s)
        await chat.run(Lines(out))
        return 0
    except CryptoError as exc:  # the user's data key was destroyed, or the master key is wrong
        err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        return 1
    finally:
        await assistant.stop()
        await runtime.stop()
