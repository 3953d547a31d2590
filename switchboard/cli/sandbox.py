"""`switchboard sandbox exec|status`: run a command in a user's sandbox, see sandboxes' usage.

Both work on the database and the sandbox root directly: no server needs to be running.
`exec` prints the command's output unchanged as it comes (nothing added) and exits with its
status: 124 when the time limit killed it, 137 when the memory limit did. Operators' runs are
not charged to the user.
"""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn, Optional

import typer
from rich.table import Table
from sqlalchemy import select

from switchboard.cli.common import Store, error_line, load, out, utc
from switchboard.sandbox.base import SandboxError, SandboxUnavailable
from switchboard.sandbox.manager import SandboxManager
from switchboard.store.schema import users

sandbox_app = typer.Typer(help="Users' sandboxes: run a command in one, see usage and limits.", no_args_is_help=True)
JSON_OUTPUT_BYTES = 16 * 1024 * 1024  # with --json the output is kept (each stream up to this), not streamed


def _no_sandbox(email: str, plan: str) -> NoReturn:
    out.print(f"{email} is on the {plan} plan, which has no sandbox", soft_wrap=True, highlight=False)
    raise typer.Exit(1)


def _manager(store: Store, start: bool = True) -> SandboxManager:
    manager = SandboxManager.from_settings(store.settings)
    if manager is None:
        error_line('sandbox.backend is "none": this deployment has no sandboxes')
    if start:
        try:
            manager.start()
        except SandboxUnavailable as exc:
            error_line(f"the {store.settings.sandbox.backend} sandbox backend cannot run here: {exc}")
    return manager


@sandbox_app.command("exec")
def sandbox_exec(
    email: str = typer.Argument(..., help="Whose sandbox."),
    command: list[str] = typer.Argument(..., help="The command and its arguments, after `--`."),
    as_json: bool = typer.Option(False, "--json", help='Print {"exit_code", "stdout", "stderr", "timed_out", '
                                                       '"cpu_s", "wall_s"} instead of the output.'),
    timeout: float = typer.Option(30.0, "--timeout", min=0.1, help="Kill the command after this many seconds."),
) -> None:
    """Run COMMAND in the user's sandbox, in their workspace, with their plan's limits.

    Standard input is passed on when it is not a terminal."""
    store = Store(load())
    user = store.user(email)
    if not store.settings.plans.get(user.plan) or not store.settings.plans[user.plan].sandbox:
        _no_sandbox(user.email, user.plan)
    manager = _manager(store)
    stdin = b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()

    def emit(stream: str, chunk: bytes) -> None:
        target = sys.stdout.buffer if stream == "stdout" else sys.stderr.buffer
        target.write(chunk)
        target.flush()

    try:
        result = manager.run(user.id, user.plan, command, stdin=stdin, time_s=timeout,
                             output_bytes=JSON_OUTPUT_BYTES if as_json else 0, on_output=None if as_json else emit)
    except SandboxError as exc:
        error_line(str(exc))
    finally:
        manager.close()
    if as_json:
        sys.stdout.write(json.dumps(result.as_json()) + "\n")
    raise typer.Exit(result.status)


@sandbox_app.command("status")
def sandbox_status(
    email: Optional[str] = typer.Argument(None, help="One user (default: every user with a workspace)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Sandboxes: the backend and what it enforces, each user's workspace use, runs and limits."""
    store = Store(load())
    manager = _manager(store, start=False)
    try:
        manager.start()
        backend: dict[str, Any] = {"status": "ready", **manager.backend.describe()}
    except SandboxUnavailable as exc:
        backend = {"status": "unavailable", "backend": manager.backend.name, "reason": str(exc)}
    if email is not None:
        user = store.user(email)
        if not store.settings.plans.get(user.plan) or not store.settings.plans[user.plan].sandbox:
            _no_sandbox(user.email, user.plan)
        rows = [{"email": user.email, **manager.status(user.id, user.plan)}]
    else:
        ids = manager.users()
        found = store.read(lambda conn: conn.execute(
            select(users.c.id, users.c.email, users.c.plan).where(users.c.id.in_(ids))).all()) if ids else []
        rows = [{"email": row.email, **manager.status(row.id, row.plan)} for row in found
                if manager.has_sandbox(row.plan)]
    if as_json:
        sys.stdout.write(json.dumps({"backend": backend, "sandboxes": rows}) + "\n")
        return
    out.print(", ".join(f"{k}: {v}" for k, v in backend.items()), soft_wrap=True, highlight=False)
    if not rows:
        out.print("no sandboxes yet (a user's workspace is made at their first sandbox tool call or exec)")
        return
    if email is not None:
        for key, value in _describe(rows[0]).items():
            out.print(f"{key}: {value}", soft_wrap=True, highlight=False)
        return
    table = Table(title="sandboxes")
    for col in ("user", "plan", "workspace", "files", "runs", "CPU s", "last run"):
        table.add_column(col, no_wrap=col == "user", overflow="fold")
    for r in rows:
        d = _describe(r)
        table.add_row(r["email"], r["plan"], d["workspace"], d["files"], str(r["runs"]), f"{r['cpu_s']:.2f}",
                      d["last run"])
    out.print(table)


def _describe(r: dict[str, Any]) -> dict[str, str]:
    lim = r["limits"]
    return {
        "user": f"{r['email']} (id {r['user_id']}, {r['plan']} plan, uid {r['uid'] if r['uid'] is not None else '-'})",
        "workspace": f"{r['workspace_bytes'] / 1048576:.1f} of {lim['workspace_mb']} MB"
                     + (" (over quota: read-only in runs)" if r["over_quota"] else ""),
        "files": f"{r['workspace_files']} of {lim['workspace_files']}",
        "runs": f"{r['runs']}, {r['cpu_s']:.2f} CPU s",
        "last run": utc(r["last_run_ms"]),
        "limits": f"{lim['time_s']:g} s, {lim['cpus']:g} CPU, {lim['memory_mb']} MB memory, {lim['processes']} "
                  f"processes, files up to {lim['file_size_mb']} MB, output {lim['output_kb']} KB",
    }
