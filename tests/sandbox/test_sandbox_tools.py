"""The sandbox tools as the assistant's turn calls them: files kept between turns, code run in
the user's own sandbox, prices per call and per CPU millisecond, a run killed at its limit
charged for what it used and never more than the limit."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any

import pytest

from switchboard.assistant.tools.registry import Tool, ToolContext, ToolFailed, ToolRegistry, ToolResult
from switchboard.core.money import credits_to_ucr
from switchboard.sandbox.manager import SandboxManager
from switchboard.sandbox.tools import SandboxRunResult, sandbox_tools
from tests.sandbox.conftest import TEST_LIMITS

USER = 7


@dataclass(slots=True)
class TurnContext(ToolContext):
    """A context with what the turn tells a tool of its credit limit (see sandbox.tools)."""

    credits_left_ucr: int | None = None
    turn_id: str | None = None


def ctx(manager: SandboxManager | None, plan: str = "plus", **extra: Any) -> ToolContext:
    return TurnContext(USER, plan, "Ada", "UTC", "conv_1", datetime.now(timezone.utc),
                       SimpleNamespace(sandboxes=manager), **extra)  # type: ignore[arg-type]


def call(tools: dict[str, Tool], name: str, context: ToolContext, **arguments: Any) -> ToolResult:
    return asyncio.run(tools[name].handler(context, arguments))


@pytest.fixture
def tools(bubblewrap: SandboxManager) -> dict[str, Tool]:
    return {t.name: t for t in sandbox_tools(bubblewrap.settings)}


def test_files_persist_between_calls_and_code_sees_them(bubblewrap: SandboxManager, tools: dict[str, Tool]) -> None:
    c = ctx(bubblewrap)
    assert call(tools, "list_files", c).content == "The workspace is empty."
    assert "Wrote 12 bytes" in call(tools, "write_file", c, path="data/nums.txt", content="1\n2\n3\n4\n5\n6\n").content
    result = call(tools, "run_python", c, code="print(sum(int(x) for x in open('data/nums.txt')))\n"
                                                "open('out.txt', 'w').write('done')")
    assert isinstance(result, SandboxRunResult)
    assert result.content.startswith("exit code 0") and "--- stdout ---\n21" in result.content
    assert call(tools, "read_file", c, path="/workspace/out.txt").content == "done"
    listing = call(tools, "list_files", c).content
    assert "data/" in listing and "data/nums.txt" in listing and "out.txt" in listing
    shell = call(tools, "run_shell", c, command="wc -l < data/nums.txt; cat", stdin="from stdin")
    assert "6\nfrom stdin" in shell.content
    assert call(tools, "delete_file", c, path="out.txt").content == "Deleted out.txt."
    with pytest.raises(ToolFailed, match="no file"):
        call(tools, "read_file", c, path="out.txt")


def test_only_plans_with_a_sandbox_get_the_tools(bubblewrap: SandboxManager, tools: dict[str, Tool]) -> None:
    registry = ToolRegistry()
    registry.add(*tools.values())
    assert registry.for_plan("free") == []
    assert {t.name for t in registry.for_plan("plus")} == {t.name for t in registry.for_plan("pro")} == {
        "list_files", "read_file", "write_file", "delete_file", "run_python", "run_shell"}
    with pytest.raises(ToolFailed, match="free plan has no sandbox"):
        call(tools, "run_shell", ctx(bubblewrap, plan="free"), command="id")
    with pytest.raises(ToolFailed, match="no sandbox"):
        call(tools, "list_files", ctx(None))


def test_prices_per_call_and_cpu_time_a_killed_run_charged_at_most_its_limit(bubblewrap: SandboxManager,
                                                                            tools: dict[str, Tool]) -> None:
    prices = bubblewrap.settings.sandbox.prices
    run_python = tools["run_python"]
    assert tools["read_file"].price_ucr(0) == credits_to_ucr(prices.file_call_credits)
    per_ms = credits_to_ucr(prices.cpu_second_credits) // 1000
    assert run_python.ucr_per_call == credits_to_ucr(prices.run_call_credits) and run_python.ucr_per_unit == per_ms
    # The hold (max_units) covers every core for the whole time limit.
    assert run_python.max_units == int(TEST_LIMITS["cpus"] * TEST_LIMITS["time_s"] * 1000)
    quick = call(tools, "run_python", ctx(bubblewrap), code="print(1)")
    assert 0 < quick.units < 2000
    endless = call(tools, "run_python", ctx(bubblewrap), code="while True: pass", timeout_s=2)
    assert endless.content.startswith("killed: the time limit of 2 s was reached")
    assert 0 < endless.units <= 2000  # charged what it used: at most 1 CPU for 2 s
    assert run_python.price_ucr(endless.units) <= run_python.price_ucr(run_python.max_units)


def test_bad_paths_and_quota(bubblewrap: SandboxManager, tools: dict[str, Tool]) -> None:
    c = ctx(bubblewrap)
    for bad in ("../etc/passwd", "a/../../b"):
        with pytest.raises(ToolFailed, match=r"\.\."):
            call(tools, "read_file", c, path=bad)
    # A link planted by the user's code pointing out of the workspace is never followed.
    call(tools, "run_shell", c, command="ln -s /etc/shadow shadow; ln -s / root; mkfifo pipe")
    for path in ("shadow", "root/etc/shadow", "pipe"):
        with pytest.raises(ToolFailed):
            call(tools, "read_file", c, path=path)
    call(tools, "write_file", c, path="shadow", content="replaced, not followed")
    assert os.path.islink(bubblewrap.workspace(USER, "plus").path / "shadow") is False
    with pytest.raises(ToolFailed, match="quota"):
        for i in range(40):  # 32 MB quota, 1 MB a write
            call(tools, "write_file", c, path=f"f{i}", content="x" * (1024 * 1024 - 10))


def test_a_workspace_over_quota_is_read_only_until_files_go(bubblewrap: SandboxManager, tools: dict[str, Tool]) -> None:
    c = ctx(bubblewrap)
    result = call(tools, "run_shell", c, command="for i in 1 2 3 4 5 6; do head -c 8000000 /dev/zero > f$i; done; "
                                                 "sleep 2; echo finished")
    assert "stopped: the workspace went over its quota" in result.content and "finished" not in result.content
    blocked = call(tools, "run_shell", c, command="touch new 2>&1; ls")
    assert "Read-only file system" in blocked.content and "over its quota" in blocked.content
    for name in call(tools, "list_files", c).content.split():
        if name.startswith("f") and name[1:].isdigit():
            call(tools, "delete_file", c, path=name)
    assert "exit code 0" in call(tools, "run_shell", c, command="touch new").content


def test_run_gets_a_gateway_token_only_with_the_turns_credit_left(bubblewrap: SandboxManager,
                                                                  tools: dict[str, Tool]) -> None:
    bubblewrap.attach_gateway(bubblewrap.root / "gateway" / "none.sock")
    (bubblewrap.root / "gateway" / "none.sock").touch()
    plain = call(tools, "run_shell", ctx(bubblewrap), command="ls /run/switchboard 2>&1")
    assert "No such file" in plain.content
    context = ctx(bubblewrap, credits_left_ucr=credits_to_ucr(3), turn_id="turn-9")
    granted = call(tools, "run_shell", context, command="ls /run/switchboard; wc -c < /run/switchboard/token")
    assert "gateway.sock\ntoken" in granted.content
    assert bubblewrap.tokens.live() == 0  # revoked when the run ended


def test_nothing_hides_from_the_quota_below_deep_directories(bubblewrap: SandboxManager, tools: dict[str, Tool]) -> None:
    c = ctx(bubblewrap)
    call(tools, "run_shell", c, command="mkdir -p $(python3 -c \"print('/'.join(['d'] * 80))\")")
    assert bubblewrap.workspace(USER, "plus").over_quota()
    assert "over its quota" in call(tools, "run_shell", c, command="true").content
    with pytest.raises(ToolFailed, match="quota"):
        call(tools, "write_file", c, path="x", content="y")
    assert call(tools, "delete_file", c, path="d").content == "Deleted d."
    assert "exit code 0" in call(tools, "run_shell", c, command="touch x").content
