"""Reminders through the API on a real server: delivered into their conversation within 10 s of
their time, with no model call and no charge; recurring ones move on; listed and cancelled."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any

import httpx
from sqlalchemy import update

from switchboard.store.assistant_schema import reminders
from tests.api.conftest import Gateway, balance, usage_records, wait_for
from tests.assistant.conftest import auth, history, new_conversation, say
from tests.fakes.openai_upstream import Behaviour, FakeToolCall

DELIVERY_S = 10  # the promise: delivered within 10 s of its time


def listed(gw: Gateway) -> list[dict[str, Any]]:
    response = httpx.get(gw.api + "/reminders", headers=auth(gw.key))
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) >= {"data"}
    return body["data"]


def at_seconds(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def delivered(gw: Gateway, conv_id: str) -> list[dict[str, Any]]:
    return [m for m in history(gw, conv_id) if m["kind"] == "reminder"]


def wait_delivered(gw: Gateway, conv_id: str, due: float, count: int = 1) -> list[dict[str, Any]]:
    found = wait_for(lambda: len(got := delivered(gw, conv_id)) >= count and got, timeout=due - time.time() + DELIVERY_S)
    assert time.time() - due <= DELIVERY_S
    return found


def test_a_reminder_is_delivered_on_time_without_a_model_call_or_a_charge(assistant_gateway: Gateway) -> None:
    gw = assistant_gateway
    conv = new_conversation(gw)
    reply = say(gw, conv["id"], "/remind in 3 seconds call mum").json()
    assert "call mum" in reply["message"]["content"] and reply["credits_charged"] == 0
    [reminder] = listed(gw)
    assert set(reminder) >= {"id", "text", "next_run_at", "recurrence", "conversation_id", "status"}
    assert (reminder["text"], reminder["recurrence"], reminder["conversation_id"], reminder["status"]) == (
        "call mum", None, conv["id"], "active")
    assert reminder["id"].startswith("rem_")
    due = at_seconds(reminder["next_run_at"])
    assert 1 <= due - time.time() <= 4
    before, records = balance(gw), usage_records(gw)
    [message] = wait_delivered(gw, conv["id"], due)
    assert (message["role"], message["kind"]) == ("assistant", "reminder")
    assert "call mum" in message["content"] and "late" not in message["content"]
    assert message["credits_charged"] == 0 and message["request_ids"] == [] and message["model"] is None
    assert due <= message["created_at"] + 1  # not before its time (created_at is in whole seconds)
    assert gw.fake.requests == []  # no model was called, for the command or the delivery
    assert balance(gw) == before and usage_records(gw) == records == []
    # A one-off is done: no longer listed, never delivered again.
    assert listed(gw) == []
    time.sleep(2)
    assert len(delivered(gw, conv["id"])) == 1


def test_a_reminder_set_by_a_tool_call_is_delivered_without_another_model_call(assistant_gateway: Gateway) -> None:
    gw = assistant_gateway
    gw.fake.enqueue(Behaviour(text="", tool_calls=[FakeToolCall("call_1", "set_reminder", json.dumps(
        {"text": "take the cake out", "when": "in 3 seconds"}))]), Behaviour(text="I'll remind you."))
    conv = new_conversation(gw)
    assert say(gw, conv["id"], "Remind me to take the cake out in 3 seconds").status_code == 200
    [reminder] = listed(gw)
    assert reminder["text"] == "take the cake out" and reminder["conversation_id"] == conv["id"]
    calls, before, records = len(gw.fake.requests), balance(gw), usage_records(gw)
    assert calls == 2
    [message] = wait_delivered(gw, conv["id"], at_seconds(reminder["next_run_at"]))
    assert message["role"] == "assistant" and "take the cake out" in message["content"]
    assert len(gw.fake.requests) == calls and balance(gw) == before and usage_records(gw) == records


def test_a_recurring_reminder_moves_on_to_its_next_time(assistant_gateway: Gateway) -> None:
    gw = assistant_gateway
    conv = new_conversation(gw)
    assert say(gw, conv["id"], "/remind every day at 9 stand-up").status_code == 200
    [reminder] = listed(gw)
    assert reminder["recurrence"] == "0 9 * * *"
    next_9 = at_seconds(reminder["next_run_at"])
    assert datetime.fromtimestamp(next_9, timezone.utc).strftime("%H:%M") == "09:00"  # the user is on UTC
    # Bring its time forward to two seconds from now, as if 09:00 were that close.
    due_ms = int(time.time() * 1000) + 2_000
    with gw.engine.begin() as conn:
        conn.execute(update(reminders).where(reminders.c.id == int(reminder["id"][4:])).values(next_run_ms=due_ms))
    [message] = wait_delivered(gw, conv["id"], due_ms / 1000)
    assert "stand-up" in message["content"]
    [after] = wait_for(lambda: [r for r in listed(gw) if r["next_run_at"] != _iso(due_ms)])
    assert (after["id"], after["status"], after["recurrence"]) == (reminder["id"], "active", "0 9 * * *")
    assert after["next_run_at"] == reminder["next_run_at"]  # the next 09:00, still ahead
    time.sleep(2)
    assert len(delivered(gw, conv["id"])) == 1 and gw.fake.requests == []


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat().replace("+00:00", "Z")


def test_a_cancelled_reminder_is_not_listed_and_never_delivered(assistant_gateway: Gateway) -> None:
    gw = assistant_gateway
    conv = new_conversation(gw)
    say(gw, conv["id"], "/remind in 3 seconds water the plants")
    say(gw, conv["id"], "/remind in 1 hour feed the cat")
    plants = next(r for r in listed(gw) if r["text"] == "water the plants")
    response = httpx.delete(f"{gw.api}/reminders/{plants['id']}", headers=auth(gw.key))
    assert response.status_code == 200, response.text
    assert (response.json()["id"], response.json()["status"], response.json()["text"]) == (
        plants["id"], "cancelled", "water the plants")
    assert [r["text"] for r in listed(gw)] == ["feed the cat"]
    time.sleep(at_seconds(plants["next_run_at"]) - time.time() + 3)
    assert delivered(gw, conv["id"]) == []
    again = httpx.delete(f"{gw.api}/reminders/{plants['id']}", headers=auth(gw.key))  # already cancelled: the same answer
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    for missing in ("rem_999999", "rem_x", "12"):
        response = httpx.delete(f"{gw.api}/reminders/{missing}", headers=auth(gw.key))
        assert response.status_code == 404, (missing, response.text)
        assert response.json()["error"]["type"] == "invalid_request_error"
