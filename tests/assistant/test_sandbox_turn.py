"""A paid user's turn runs code in their sandbox through a tool call, charged as part of the turn."""

from __future__ import annotations

import json
import warnings

import pytest

from switchboard.sandbox.base import SandboxUnavailable
from switchboard.sandbox.manager import SandboxManager
from tests.api.conftest import Gateway, usage_records
from tests.assistant.conftest import new_conversation, say_streaming
from tests.fakes.openai_upstream import Behaviour, FakeToolCall
from tests.sandbox.conftest import TEST_LIMITS, sandbox_settings

BUBBLEWRAP = {"sandbox": {"backend": "bubblewrap", "limits": {"plus": TEST_LIMITS}}}


@pytest.fixture(autouse=True)
def _bubblewrap_here(tmp_path) -> None:  # type: ignore[no-untyped-def]
    try:
        manager = SandboxManager.from_settings(sandbox_settings(tmp_path, "bubblewrap"))
        assert manager is not None
        manager.start().close()
    except SandboxUnavailable as exc:
        warnings.warn(f"bubblewrap NOT available ({exc}): the sandboxed turn test is SKIPPED")
        pytest.skip(f"bubblewrap sandbox backend NOT available here ({exc})")


@pytest.mark.parametrize("assistant_gateway", [BUBBLEWRAP], indirect=True)
def test_run_python_in_a_turn_is_charged_with_the_turn(assistant_gateway: Gateway) -> None:
    gw = assistant_gateway
    code = "import os; print(sum(range(10)), os.getuid() != 0)"
    gw.fake.enqueue(Behaviour(text="", tool_calls=[FakeToolCall("call_1", "run_python", json.dumps({"code": code}))]),
                    Behaviour(text="The sum is 45."))
    conv = new_conversation(gw)
    events = say_streaming(gw, conv["id"], "What is the sum of 0..9? Compute it.")
    finished = dict(events)["tool.finished"]
    assert finished["name"] == "run_python" and finished["outcome"] == "ok" and finished["credits"] > 0
    tool_result = gw.fake.requests[-1].json["messages"][-1]["content"]
    assert "45 True" in tool_result  # ran, and not as root
    records = usage_records(gw)
    assert sorted(r["endpoint"] for r in records) == ["assistant", "assistant", "tool"]
    completed = events[-1][1]
    assert completed["credits_charged"] == pytest.approx(sum(r["credits_charged"] for r in records))
