"""The tools every plan has: the time, the user's time zone, and reminders. Free to call."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from switchboard.assistant.profile import checked_zone, set_time_zone
from switchboard.assistant.reminders import reminder_id
from switchboard.assistant.tools.registry import Tool, ToolContext, ToolFailed, ToolResult, object_schema, required_str
from switchboard.assistant.when import WhenError, humanize_delay, parse_when, zone
from switchboard.core.errors import SwitchboardError


def local_time_text(at: datetime, time_zone: str) -> str:
    local = at.astimezone(zone(time_zone))
    return local.strftime("%A %d %B %Y, %H:%M") + f" ({time_zone})"


async def _current_time(ctx: ToolContext, arguments: dict[str, Any]) -> ToolResult:
    return ToolResult(local_time_text(ctx.now, ctx.time_zone))


async def _set_timezone(ctx: ToolContext, arguments: dict[str, Any]) -> ToolResult:
    return ToolResult(await change_time_zone(ctx, required_str(arguments, "time_zone")))


async def change_time_zone(ctx: ToolContext, name: str) -> str:
    """Set the user's zone (ToolFailed for an unknown one); `ctx.time_zone` follows."""
    try:
        checked_zone(name)
    except SwitchboardError as exc:
        raise ToolFailed(exc.message) from None
    await ctx.services.write(ctx.user_id, lambda conn: set_time_zone(conn, ctx.user_id, name))
    ctx.time_zone = name
    return f"Time zone set to {name}. It is now {local_time_text(ctx.now, name)}."


async def _set_reminder(ctx: ToolContext, arguments: dict[str, Any]) -> ToolResult:
    text = required_str(arguments, "text")
    when = required_str(arguments, "when")
    try:
        schedule = parse_when(when, ctx.time_zone, ctx.now)
    except WhenError as exc:
        raise ToolFailed(str(exc)) from None
    if schedule is None:
        raise ToolFailed(f"could not read {when!r} as a time; try e.g. 'in 10 minutes', 'tomorrow at 18:00', "
                         f"'every Monday at 9'")
    reminders = ctx.services.reminders
    reminder = await ctx.services.write(
        ctx.user_id, lambda conn: reminders.create(conn, ctx.user_id, ctx.conversation_id, text, schedule, ctx.time_zone))
    return ToolResult(confirmation(reminder.id, text, schedule.first_run, schedule.description, ctx))


def confirmation(rid: int, text: str, first_run: datetime, description: str, ctx: ToolContext) -> str:
    """What the user is told when a reminder is set (by the tool or by /remind)."""
    when = local_time_text(first_run, ctx.time_zone)
    repeat = f", then {description}" if description else ""
    return f"Reminder rem_{rid} set: \"{text}\" on {when} ({humanize_delay(first_run - ctx.now)}){repeat}."


async def _list_reminders(ctx: ToolContext, arguments: dict[str, Any]) -> ToolResult:
    return ToolResult(await reminders_text(ctx))


async def reminders_text(ctx: ToolContext) -> str:
    found = await ctx.services.read(ctx.user_id, lambda conn: ctx.services.reminders.list(conn, ctx.user_id))
    if not found:
        return "No reminders are set."
    lines = []
    for r in found:
        at = local_time_text(datetime.fromtimestamp(r.next_run_ms / 1000, timezone.utc), r.time_zone)
        repeat = f" (repeats: {r.recurrence})" if r.recurrence else ""
        lines.append(f"rem_{r.id}: \"{r.text}\" next on {at}{repeat}")
    return "\n".join(lines)


async def _cancel_reminder(ctx: ToolContext, arguments: dict[str, Any]) -> ToolResult:
    return ToolResult(await cancel_text(ctx, required_str(arguments, "id")))


async def cancel_text(ctx: ToolContext, public_id: str) -> str:
    try:
        rid = reminder_id(public_id)
        reminder = await ctx.services.write(ctx.user_id,
                                            lambda conn: ctx.services.reminders.cancel(conn, ctx.user_id, rid))
    except SwitchboardError as exc:
        raise ToolFailed(exc.message) from None
    return f"Reminder rem_{reminder.id} (\"{reminder.text}\") is cancelled."


def builtin_tools() -> list[Tool]:
    return [
        Tool("current_time", "The current date and time in the user's time zone.", object_schema({}), _current_time),
        Tool("set_timezone", "Set the user's time zone (an IANA name such as Europe/Paris or America/New_York).",
             object_schema({"time_zone": {"type": "string", "description": "IANA time zone name"}}, ["time_zone"]),
             _set_timezone),
        Tool("set_reminder",
             "Remind the user of something at a time, once or repeatedly. The reminder is delivered into this "
             "conversation at its time.",
             object_schema({
                 "text": {"type": "string", "description": "What to remind the user of"},
                 "when": {"type": "string", "description": "When, in the user's words: 'in 10 minutes', "
                                                           "'tomorrow at 18:00', 'every Monday at 9'"},
             }, ["text", "when"]),
             _set_reminder),
        Tool("list_reminders", "The user's active reminders, with their ids and next times.", object_schema({}),
             _list_reminders),
        Tool("cancel_reminder", "Cancel one of the user's reminders by its id (rem_...).",
             object_schema({"id": {"type": "string", "description": "The reminder's id, e.g. rem_12"}}, ["id"]),
             _cancel_reminder),
    ]
