"""Chat commands: a message starting with "/" is answered at once, with no model and no charge.

They work on every channel and every plan, which is how a Free user on the embedded model
(which cannot call tools) sets reminders.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from switchboard.accounts.usage import list_usage
from switchboard.assistant.conversations import Conversation
from switchboard.assistant.profile import Profile, set_name
from switchboard.assistant.services import AssistantServices
from switchboard.assistant.tools.builtin import (
    cancel_text,
    change_time_zone,
    confirmation,
    local_time_text,
    reminders_text,
)
from switchboard.assistant.tools.registry import ToolContext, ToolFailed
from switchboard.assistant.when import WhenError, split_when
from switchboard.core.errors import SwitchboardError
from switchboard.core.money import format_credits

HELP = """Commands (free, answered at once):
/help: this list
/new: start a new conversation
/balance: your credits
/usage: your last requests and what each cost
/model NAME or /model auto: pin a model for this conversation, or let Switchboard pick
/remind WHEN WHAT: e.g. /remind in 10 minutes stretch, /remind every Monday at 9 standup
/reminders: your reminders
/cancel ID: cancel a reminder (rem_...)
/timezone ZONE: your time zone, e.g. /timezone Europe/Paris
/name NAME: what I call you"""


@dataclass(slots=True)
class CommandReply:
    text: str
    new_conversation: Conversation | None = None
    profile: Profile | None = None  # the profile as the command left it (time zone, name)


@dataclass(slots=True)
class CommandContext:
    services: AssistantServices
    profile: Profile
    conversation: Conversation
    now: datetime

    def tool_context(self) -> ToolContext:
        p = self.profile
        return ToolContext(p.user_id, p.plan, p.name, p.time_zone, self.conversation.id, self.now, self.services)


def is_command(text: str) -> bool:
    return text.lstrip().startswith("/")


async def run_command(ctx: CommandContext, text: str) -> CommandReply:
    word, _, rest = text.strip().partition(" ")
    name = word[1:].split("@", 1)[0].lower()  # "/help@SwitchboardBot" in Telegram groups
    handler = _COMMANDS.get(name)
    if handler is None:
        return CommandReply(f"Unknown command /{name}. Type /help to see what I can do.")
    try:
        return await handler(ctx, rest.strip())
    except ToolFailed as exc:
        return CommandReply(str(exc))
    except SwitchboardError as exc:
        return CommandReply(exc.message)


async def _help(ctx: CommandContext, rest: str) -> CommandReply:
    return CommandReply(HELP)


async def _new(ctx: CommandContext, rest: str) -> CommandReply:
    conv, uid = ctx.conversation, ctx.profile.user_id
    conversations = ctx.services.conversations
    fresh = await ctx.services.write(uid, lambda c: conversations.create(
        c, uid, channel=conv.channel, title=rest or None, external_chat_id=conv.external_chat_id))
    return CommandReply(f"Started a new conversation ({fresh.id}). What's on your mind?", new_conversation=fresh)


async def _balance(ctx: CommandContext, rest: str) -> CommandReply:
    uid = ctx.profile.user_id
    ledger = ctx.services.runtime.ledger
    balance = await ctx.services.read(uid, lambda c: ledger.balance(c, uid))
    renews = datetime.fromtimestamp(balance.period_end_ms / 1000, timezone.utc)
    lines = [f"Available: {format_credits(balance.available_ucr)} credits ({ctx.profile.plan} plan)."]
    if balance.held_ucr:
        lines.append(f"Held for requests in progress: {format_credits(balance.held_ucr)}.")
    if balance.debt_ucr:
        lines.append(f"Owed: {format_credits(balance.debt_ucr)}.")
    lines.append(f"Your monthly credits renew on {local_time_text(renews, ctx.profile.time_zone)}.")
    return CommandReply("\n".join(lines))


async def _usage(ctx: CommandContext, rest: str) -> CommandReply:
    uid = ctx.profile.user_id
    records, _ = await ctx.services.read(uid, lambda c: list_usage(c, uid, 8))
    if not records:
        return CommandReply("No usage yet.")
    lines = ["Your last requests:"]
    for r in records:
        at = datetime.fromtimestamp(r["created_ms"] / 1000, timezone.utc)
        lines.append(f"{local_time_text(at, ctx.profile.time_zone)}: {r['model']}, "
                     f"{r['prompt_tokens']}+{r['completion_tokens']} tokens, {r['credits_charged_exact']} credits")
    return CommandReply("\n".join(lines))


async def _model(ctx: CommandContext, rest: str) -> CommandReply:
    conv, uid = ctx.conversation, ctx.profile.user_id
    if not rest:
        return CommandReply(f"This conversation uses {conv.model or 'auto'}. "
                            f"Type /model NAME to pin one, /model auto to let Switchboard pick.")
    name = rest.split()[0]
    if name == "auto":
        pinned = None
    else:
        ctx.services.runtime.inference.router.named(name)  # ModelNotFound, with what is available
        pinned = name
    await ctx.services.write(uid, lambda c: ctx.services.conversations.set_model(c, uid, conv.id, pinned))
    conv.model = pinned
    return CommandReply("Switchboard will pick the model for each message." if pinned is None
                        else f"This conversation now uses {pinned}.")


async def _remind(ctx: CommandContext, rest: str) -> CommandReply:
    usage = "Tell me when and what, e.g. /remind in 10 minutes stretch, or /remind every Monday at 9 standup."
    if not rest:
        return CommandReply(usage)
    try:
        found = split_when(rest, ctx.profile.time_zone, ctx.now)
    except WhenError as exc:
        return CommandReply(f"{exc}. {usage}")
    if found is None:
        return CommandReply(f"I couldn't read a time at the start of that. {usage}")
    schedule, what = found
    uid, conv_id = ctx.profile.user_id, ctx.conversation.id
    reminders = ctx.services.reminders
    reminder = await ctx.services.write(uid, lambda c: reminders.create(
        c, uid, conv_id, what, schedule, ctx.profile.time_zone))
    return CommandReply(confirmation(reminder.id, what, schedule.first_run, schedule.description, ctx.tool_context()))


async def _reminders(ctx: CommandContext, rest: str) -> CommandReply:
    return CommandReply(await reminders_text(ctx.tool_context()))


async def _cancel(ctx: CommandContext, rest: str) -> CommandReply:
    if not rest:
        return CommandReply("Which one? /cancel rem_12 (/reminders lists them).")
    return CommandReply(await cancel_text(ctx.tool_context(), rest.split()[0]))


async def _timezone(ctx: CommandContext, rest: str) -> CommandReply:
    if not rest:
        return CommandReply(f"Your time zone is {ctx.profile.time_zone}. Change it with /timezone Europe/Paris.")
    tool_ctx = ctx.tool_context()
    text = await change_time_zone(tool_ctx, rest.split()[0])
    p = ctx.profile
    return CommandReply(text, profile=Profile(p.user_id, p.email, p.plan, p.name, tool_ctx.time_zone))


async def _name(ctx: CommandContext, rest: str) -> CommandReply:
    uid = ctx.profile.user_id
    name = rest or None
    await ctx.services.write(uid, lambda c: set_name(c, uid, name))
    p = ctx.profile
    return CommandReply(f"I'll call you {name}." if name else "I'll use your e-mail name.",
                        profile=Profile(p.user_id, p.email, p.plan, name, p.time_zone))


_COMMANDS: dict[str, Callable[[CommandContext, str], Awaitable[CommandReply]]] = {
    "help": _help, "start": _help, "new": _new, "balance": _balance, "usage": _usage, "model": _model,
    "remind": _remind, "reminders": _reminders, "cancel": _cancel, "timezone": _timezone, "name": _name,
}
