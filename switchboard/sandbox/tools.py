"""The sandbox's tools for the assistant: the user's files and code, in their own sandbox.

`sandbox_tools(settings)` gives the list to add to the tool registry. Only plans with a sandbox
(settings.plans[...].sandbox: Plus and Pro by default) get them. Prices come from
settings.sandbox.prices: file tools per call; run_python and run_shell per call plus CPU time
(the tool's unit is a CPU millisecond). A run's hold covers its worst case (every core for the
whole time limit); it is charged what it used, and a run killed at its limit is charged what it
used up to then, never more than the limit.

The handlers reach the manager through `ctx.services.sandboxes`. When the turn puts
`credits_left_ucr` (what its credit limit has left beyond this call's hold) and `turn_id` on
the context, runs also get a gateway token for model calls, limited to that amount; those calls
are charged as their own requests (endpoint sandbox.chat.completions), and the result carries
what they cost (`ToolResult.settled_ucr`, `.settled_request_ids`) for the turn's totals.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any

from switchboard.assistant.tools.registry import Tool, ToolContext, ToolFailed, ToolResult, object_schema, required_str
from switchboard.core.config import Settings
from switchboard.core.money import credits_to_ucr, format_credits
from switchboard.sandbox.base import RunResult, SandboxError
from switchboard.sandbox.manager import SandboxManager
from switchboard.sandbox.token import Grant
from switchboard.sandbox.workspace import Entry

READ_DEFAULT = 64 * 1024
READ_MAX = 256 * 1024
WRITE_MAX = 1024 * 1024
CODE_MAX = 100_000  # run_python's code and run_shell's command travel as one argument
STDIN_MAX = 1024 * 1024


@dataclass(frozen=True, slots=True)
class SandboxRunResult(ToolResult):
    """A run's result; the model calls its code made through the gateway (already charged as
    their own requests) are in `settled_ucr` and `settled_request_ids`, which the turn counts in
    its totals."""


def _manager(ctx: ToolContext) -> SandboxManager:
    manager = getattr(ctx.services, "sandboxes", None)
    if manager is None:
        raise ToolFailed("this deployment has no sandbox")
    if not manager.has_sandbox(ctx.plan):
        raise ToolFailed(f"the {ctx.plan} plan has no sandbox; Plus and Pro have one")
    return manager  # type: ignore[no-any-return]


async def _in_workspace(ctx: ToolContext, work: Any) -> Any:
    manager = _manager(ctx)
    workspace = manager.workspace(ctx.user_id, ctx.plan)

    def call() -> Any:
        workspace.ensure()
        return work(workspace)
    try:
        return await asyncio.to_thread(call)
    except SandboxError as exc:
        raise ToolFailed(str(exc)) from None


# -- files -----------------------------------------------------------------------------------
async def _list_files(ctx: ToolContext, arguments: dict[str, Any]) -> ToolResult:
    path = arguments.get("path") or "."
    entries, more = await _in_workspace(ctx, lambda ws: ws.list(path))
    if not entries:
        return ToolResult("The workspace is empty." if path in (".", "", "/workspace") else f"{path} is empty.")
    lines = [_entry_line(e) for e in entries]
    if more:
        lines.append("... (more entries not shown; list a subdirectory)")
    return ToolResult("\n".join(lines))


def _entry_line(entry: Entry) -> str:
    size = str(entry.size) if entry.kind == "file" else ""
    return f"{entry.kind:<5} {size:>10}  {entry.path}{'/' if entry.kind == 'dir' else ''}"


async def _read_file(ctx: ToolContext, arguments: dict[str, Any]) -> ToolResult:
    path = required_str(arguments, "path")
    limit = arguments.get("max_bytes", READ_DEFAULT)
    if not isinstance(limit, int) or limit < 1:
        raise ToolFailed("`max_bytes` must be a positive integer")
    data, size = await _in_workspace(ctx, lambda ws: ws.read(path, min(limit, READ_MAX)))
    if b"\0" in data:
        return ToolResult(f"{path} is a binary file of {size} bytes.")
    text = data.decode("utf-8", "replace")
    if size > len(data):
        text += f"\n[... {size - len(data)} more bytes not shown; the file has {size} bytes]"
    return ToolResult(text)


async def _write_file(ctx: ToolContext, arguments: dict[str, Any]) -> ToolResult:
    path = required_str(arguments, "path")
    content = arguments.get("content")
    if not isinstance(content, str):
        raise ToolFailed("`content` must be a string")
    data = content.encode()
    if len(data) > WRITE_MAX:
        raise ToolFailed(f"`content` is {len(data)} bytes; one write takes at most {WRITE_MAX}")
    written = await _in_workspace(ctx, lambda ws: ws.write(path, data))
    return ToolResult(f"Wrote {written} bytes to {path}.")


async def _delete_file(ctx: ToolContext, arguments: dict[str, Any]) -> ToolResult:
    path = required_str(arguments, "path")
    removed = await _in_workspace(ctx, lambda ws: ws.delete(path))
    return ToolResult(f"Deleted {removed}.")


# -- runs ------------------------------------------------------------------------------------
def _time_limit(ctx: ToolContext, manager: SandboxManager, arguments: dict[str, Any]) -> float:
    limit = manager.limits(ctx.plan).time_s
    wanted = arguments.get("timeout_s")
    if wanted is not None:
        if isinstance(wanted, bool) or not isinstance(wanted, (int, float)) or wanted <= 0:
            raise ToolFailed("`timeout_s` must be a positive number of seconds")
        limit = min(limit, float(wanted))
    # The turn stops a tool after its own time-out; the run must end (and be charged) before that.
    turn_timeout = getattr(getattr(manager.settings, "assistant", None), "tool_timeout_s", None)
    if turn_timeout is not None:
        limit = min(limit, max(1.0, float(turn_timeout) - 5.0))
    return limit


def _grant(ctx: ToolContext, manager: SandboxManager) -> Grant | None:
    if ctx.credits_left_ucr is None:
        return None
    return manager.grant(ctx.user_id, ctx.plan, ctx.turn_id or ctx.conversation_id, ctx.credits_left_ucr)


async def _run(ctx: ToolContext, argv: list[str], arguments: dict[str, Any]) -> ToolResult:
    manager = _manager(ctx)
    stdin = arguments.get("stdin") or ""
    if not isinstance(stdin, str) or len(stdin.encode()) > STDIN_MAX:
        raise ToolFailed(f"`stdin` must be text of at most {STDIN_MAX} bytes")
    time_s = _time_limit(ctx, manager, arguments)
    grant = _grant(ctx, manager)
    try:
        result = await manager.run_async(ctx.user_id, ctx.plan, argv, stdin=stdin.encode(), time_s=time_s, grant=grant)
    except SandboxError as exc:
        raise ToolFailed(str(exc)) from None
    cpu_ms = math.ceil(min(result.cpu_s, manager.limits(ctx.plan).cpus * time_s) * 1000)
    return SandboxRunResult(
        report(result, time_s), units=cpu_ms, settled_ucr=result.gateway_ucr,
        settled_request_ids=tuple(grant.request_ids()) if grant is not None else (),
    )


def report(result: RunResult, time_s: float) -> str:
    """What the model reads of a run: how it ended, its cost in time, its output."""
    if result.timed_out:
        head = f"killed: the time limit of {time_s:g} s was reached"
    elif result.killed_for_memory:
        head = "killed: the memory limit was reached"
    elif result.quota_exceeded:
        head = "stopped: the workspace went over its quota"
    else:
        head = f"exit code {result.exit_code}"
    lines = [f"{head} (CPU {result.cpu_s:.2f} s, wall {result.wall_s:.2f} s)"]
    if result.gateway_calls:
        lines.append(f"model calls from the sandbox: {result.gateway_calls}, "
                     f"{format_credits(result.gateway_ucr)} credits")
    lines += [f"note: {note}" for note in result.notes]
    for name, data, truncated in (("stdout", result.stdout, result.stdout_truncated),
                                  ("stderr", result.stderr, result.stderr_truncated)):
        if data or truncated:
            lines.append(f"--- {name} ---")
            lines.append(data.decode("utf-8", "replace").rstrip("\n"))
            if truncated:
                lines.append(f"[{name} truncated at {len(data)} bytes]")
    return "\n".join(lines)


async def _run_python(ctx: ToolContext, arguments: dict[str, Any]) -> ToolResult:
    code = required_str(arguments, "code")
    if len(code.encode()) > CODE_MAX:
        raise ToolFailed(f"`code` is too long (at most {CODE_MAX} bytes); write it to a file and run that")
    return await _run(ctx, ["python3", "-c", code], arguments)


async def _run_shell(ctx: ToolContext, arguments: dict[str, Any]) -> ToolResult:
    command = required_str(arguments, "command")
    if len(command.encode()) > CODE_MAX:
        raise ToolFailed(f"`command` is too long (at most {CODE_MAX} bytes); write a script file and run that")
    return await _run(ctx, ["/bin/sh", "-c", command], arguments)


# -- the list --------------------------------------------------------------------------------
PATH_PROP = {"type": "string", "description": "A path in the workspace, e.g. notes/todo.md"}
RUN_PROPS = {
    "stdin": {"type": "string", "description": "Text given to the program's standard input."},
    "timeout_s": {"type": "number", "description": "Stop after this many seconds (at most the plan's limit)."},
}
SANDBOX_NOTE = ("Runs in the user's own sandbox: no network, a read-only system, the workspace at /workspace "
                "(kept between turns) as the current directory, python3 and the usual shell utilities.")


def sandbox_tools(settings: Settings) -> list[Tool]:
    """The sandbox tools, priced from the settings, offered to the plans that have a sandbox."""
    plans = frozenset(name for name, plan in settings.plans.items() if plan.sandbox)
    prices = settings.sandbox.prices
    file_ucr = credits_to_ucr(prices.file_call_credits)
    run_ucr = credits_to_ucr(prices.run_call_credits)
    per_ms = math.ceil(credits_to_ucr(prices.cpu_second_credits) / 1000)
    # The hold covers the largest run of any plan: every core busy for the whole time limit.
    most_ms = max((math.ceil(settings.sandbox.limits_for(p).cpus * settings.sandbox.limits_for(p).time_s * 1000)
                   for p in plans), default=0)

    def files(name: str, description: str, handler: Any, properties: dict[str, Any], required: list[str]) -> Tool:
        return Tool(name, description, object_schema(properties, required), handler, plans=plans, ucr_per_call=file_ucr)

    def run(name: str, description: str, handler: Any, properties: dict[str, Any], required: list[str]) -> Tool:
        return Tool(name, f"{description} {SANDBOX_NOTE}", object_schema(properties | RUN_PROPS, required), handler,
                    plans=plans, ucr_per_call=run_ucr, ucr_per_unit=per_ms, max_units=most_ms)

    return [
        files("list_files", "List the files in the user's workspace (or a directory of it), with their sizes.",
              _list_files, {"path": PATH_PROP}, []),
        files("read_file", "Read a text file from the user's workspace.", _read_file,
              {"path": PATH_PROP, "max_bytes": {"type": "integer", "description": "Read at most this many bytes."}},
              ["path"]),
        files("write_file", "Create or replace a file in the user's workspace with the given text.", _write_file,
              {"path": PATH_PROP, "content": {"type": "string", "description": "The whole new content."}},
              ["path", "content"]),
        files("delete_file", "Delete a file, or a directory with everything in it, from the user's workspace.", _delete_file,
              {"path": PATH_PROP}, ["path"]),
        run("run_python", "Run Python 3 code and return its output.", _run_python,
            {"code": {"type": "string", "description": "The program, run with python3 -c."}}, ["code"]),
        run("run_shell", "Run a POSIX shell command line and return its output.", _run_shell,
            {"command": {"type": "string", "description": "The command line, run with /bin/sh -c."}}, ["command"]),
    ]
