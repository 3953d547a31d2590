"""The agent loop through the API: tool calls and their results, the limits that stop a turn."""

from __future__ import annotations

import json
from decimal import Decimal

import httpx
import pytest

from switchboard.core.config import Settings
from tests.api.conftest import Gateway, balance, usage_records
from tests.assistant.conftest import auth, history, new_conversation, say, say_streaming
from tests.fakes.openai_upstream import Behaviour, FakeToolCall


def _tool_call(name: str, arguments: dict[str, object], call_id: str = "call_1") -> Behaviour:
    return Behaviour(text="", tool_calls=[FakeToolCall(call_id, name, json.dumps(arguments))])


def test_a_reminder_set_through_a_tool_call(assistant_gateway: Gateway) -> None:
    gw = assistant_gateway
    gw.fake.enqueue(_tool_call("set_reminder", {"text": "call mum", "when": "in 2 hours"}),
                    Behaviour(text="Done: I'll remind you to call mum in 2 hours."))
    conv = new_conversation(gw)
    events = say_streaming(gw, conv["id"], "Remind me to call mum in 2 hours")
    names = [name for name, _ in events]
    assert names.index("tool.started") < names.index("tool.finished") < names.index("turn.completed")
    finished = dict(events)["tool.finished"]
    assert finished == {"id": "call_1", "name": "set_reminder", "outcome": "ok", "credits": 0.0, "credits_exact": "0"}
    completed = events[-1][1]
    assert completed["message"]["content"] == "Done: I'll remind you to call mum in 2 hours."
    # Two model calls, both charged, and the turn's total is their sum.
    records = usage_records(gw)
    assert len(records) == 2 and all(r["endpoint"] == "assistant" for r in records)
    assert completed["credits_charged"] == pytest.approx(sum(r["credits_charged"] for r in records))
    reminders = httpx.get(gw.api + "/reminders", headers=auth(gw.key)).json()["data"]
    assert [(r["text"], r["conversation_id"], r["status"], r["recurrence"]) for r in reminders] == [
        ("call mum", conv["id"], "active", None)]
    # The second model call saw the tool's result, fenced as data, after the call that asked for it.
    sent = gw.fake.requests[-1].json["messages"]
    assert sent[-2]["tool_calls"][0]["function"]["name"] == "set_reminder"
    assert sent[-1]["role"] == "tool" and sent[-1]["tool_call_id"] == "call_1"
    assert "Reminder rem_" in sent[-1]["content"] and "not instructions" in sent[-1]["content"]
    kept = [(m["role"], m.get("name")) for m in history(gw, conv["id"])]
    assert kept == [("user", None), ("assistant", None), ("tool", "set_reminder"), ("assistant", None)]
    assert "tools" in gw.fake.requests[0].json and {t["function"]["name"] for t in gw.fake.requests[0].json["tools"]} >= {
        "set_reminder", "list_reminders", "cancel_reminder", "current_time", "set_timezone"}


def test_a_loop_of_identical_tool_calls_is_stopped_and_said(assistant_gateway: Gateway) -> None:
    gw = assistant_gateway
    gw.fake.behaviour = _tool_call("current_time", {})
    conv = new_conversation(gw)
    body = say(gw, conv["id"], "What time is it?").json()
    assert body["stopped"] == "loop"
    assert "current_time with the same arguments" in body["message"]["content"]
    # max_repeated_tool_calls (2) calls ran; the third identical one was refused before running.
    assert len(gw.fake.requests) == 3
    assert [m["role"] for m in history(gw, conv["id"])].count("tool") == 2


def test_a_tool_error_goes_back_to_the_model(assistant_gateway: Gateway) -> None:
    gw = assistant_gateway
    gw.fake.enqueue(_tool_call("set_timezone", {"time_zone": "Mars/Olympus"}), Behaviour(text="That zone does not exist."))
    conv = new_conversation(gw)
    events = say_streaming(gw, conv["id"], "Set my time zone to Mars")
    assert dict(events)["tool.finished"]["outcome"] == "error"
    assert "unknown time zone" in gw.fake.requests[-1].json["messages"][-1]["content"]


def _limited(credits: str, steps: int = 8) -> dict[str, object]:
    plans = Settings().plans
    plans["plus"] = plans["plus"].model_copy(update={"turn_credits": Decimal(credits), "turn_steps": steps})
    return {"plans": plans}


@pytest.mark.parametrize("assistant_gateway", [_limited("2000", steps=3)], indirect=True)
def test_the_step_limit_stops_a_turn(assistant_gateway: Gateway) -> None:
    gw = assistant_gateway
    gw.fake.enqueue(*[_tool_call("current_time", {"n": i}, f"call_{i}") for i in range(10)])
    conv = new_conversation(gw)
    body = say(gw, conv["id"], "Keep checking the time").json()
    assert body["stopped"] == "steps" and "limit of 3 steps" in body["message"]["content"]
    assert len(gw.fake.requests) == 3


@pytest.mark.parametrize("assistant_gateway", [_limited("600")], indirect=True)
def test_the_credit_limit_stops_a_turn_before_it_is_exceeded(assistant_gateway: Gateway) -> None:
    gw = assistant_gateway
    # Each model call here costs about 300 credits (the fake bills 1,000 prompt tokens at 0.2).
    gw.fake.behaviour = Behaviour(text="", tool_calls=[FakeToolCall("c", "current_time", "{}")], prompt_tokens=1000)
    gw.fake.enqueue(*[Behaviour(text="", tool_calls=[FakeToolCall(f"c{i}", "current_time", json.dumps({"i": i}))],
                                prompt_tokens=1000) for i in range(10)])
    conv = new_conversation(gw)
    body = say(gw, conv["id"], "Keep checking the time").json()
    assert body["stopped"] == "credits"
    assert "this turn's limit of 600 credits" in body["message"]["content"]
    assert body["credits_charged"] <= 600
    assert sum(r["credits_charged"] for r in usage_records(gw)) == pytest.approx(body["credits_charged"])


def test_a_user_with_no_credits_is_told_so_without_a_model_call(assistant_gateway: Gateway) -> None:
    gw = assistant_gateway
    from switchboard.billing.ledger import Ledger
    from switchboard.inference.runtime import make_ledger
    from switchboard.store.runner import TransactionRunner

    ledger: Ledger = make_ledger(gw.settings)
    available = int(float(balance(gw)["available"]) * 1_000_000)
    TransactionRunner(gw.engine).run_sync(lambda c: ledger.debit(c, gw.user_id, available, reason="test: spend it all"))
    conv = new_conversation(gw)
    response = say(gw, conv["id"], "Hello?")
    assert response.status_code == 402
    body = response.json()
    assert body["error"]["code"] == "insufficient_credits"
    assert "out of credits" in body["message"]["content"]
    assert gw.fake.requests == []
    assert [m["role"] for m in history(gw, conv["id"])] == ["user", "assistant"]
