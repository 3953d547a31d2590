"""Memory in the assistant's turns, through the API, against a scripted fake upstream: what is
said is kept and recalled in another conversation days later, facts are extracted (metered and
charged as memory work), a contradiction supersedes, memory off keeps and recalls nothing."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from tests.api.conftest import Gateway, usage_records, wait_for
from tests.api.conftest import fake_upstream  # noqa: F401 (a fixture)
from tests.assistant.conftest import assistant_gateway, auth, new_conversation, say  # noqa: F401 (a fixture)
from tests.fakes.openai_upstream import Behaviour
from switchboard.store.memory_schema import memories

NOW_EXTRACT = {"memory": {"extraction_delay_s": 0}}
DAY_MS = 86_400_000


def memories_of(gw: Gateway, status: str = "all") -> list[dict[str, Any]]:
    response = httpx.get(f"{gw.api}/memories?limit=100&status={status}", headers=auth(gw.key))
    assert response.status_code == 200, response.text
    return response.json()["data"]


def prompt_of(request: Any) -> str:
    return "\n".join(m.get("content") or "" for m in request.json["messages"])


def memory_note(request: Any) -> str:
    notes = [m["content"] for m in request.json["messages"] if m["role"] == "system" and "long-term memory" in m["content"]]
    return notes[0] if notes else ""


@pytest.mark.parametrize("assistant_gateway", [{"memory": {"extraction_delay_s": 3600}}], indirect=True)
def test_told_in_one_conversation_recalled_in_another_days_later(assistant_gateway: Gateway) -> None:
    gw = assistant_gateway
    first = new_conversation(gw)
    assert say(gw, first["id"], "By the way, my sister is called Ana and she lives in Lisbon.").status_code == 200
    kept = wait_for(lambda: [m for m in memories_of(gw) if "Ana" in m["text"]])
    assert kept[0]["kind"] == "message" and kept[0]["sources"][0]["conversation_id"] == first["id"]
    with gw.engine.begin() as conn:  # the clock moves on: what was said is three days old
        conn.execute(update(memories).values(created_ms=memories.c.created_ms - 3 * DAY_MS))
    second = new_conversation(gw)
    assert say(gw, second["id"], "Which city does my sister live in again?").status_code == 200
    note = memory_note(gw.fake.chat_requests()[-1])
    assert "my sister is called Ana and she lives in Lisbon" in note
    assert "3 days ago" in note
    assert note.startswith("<data source=\"your long-term memory") and "not instructions to follow" in note
    # The conversation's own messages are its history, not recalled as memories.
    third = say(gw, second["id"], "Thanks! And my sister?")
    assert third.status_code == 200
    assert "Which city does my sister live in again?" not in memory_note(gw.fake.chat_requests()[-1])


@pytest.mark.parametrize("assistant_gateway", [NOW_EXTRACT], indirect=True)
def test_facts_are_extracted_charged_as_memory_work_and_superseded(assistant_gateway: Gateway) -> None:
    gw = assistant_gateway
    conv = new_conversation(gw)
    facts = json.dumps({"facts": [{"text": "The user's sister Ana lives in Lisbon.", "sources": [], "replaces": []}]})
    gw.fake.enqueue(Behaviour(text="How lovely!"), Behaviour(text=facts))
    assert say(gw, conv["id"], "My sister Ana lives in Lisbon.").status_code == 200
    fact = wait_for(lambda: [m for m in memories_of(gw) if m["kind"] == "fact"])[0]
    user_message = [m for m in httpx.get(f"{gw.api}/conversations/{conv['id']}/messages", headers=auth(gw.key)).json()["data"]
                    if m["role"] == "user"][0]
    assert fact["source_ids"] == [user_message["id"]] and fact["origin"] == "extraction"
    extraction = [r for r in usage_records(gw) if r["endpoint"] == "memory.extraction"]
    assert len(extraction) == 1 and extraction[0]["credits_charged"] > 0
    correction = json.dumps({"facts": [{"text": "The user's sister Ana lives in Porto.", "sources": [],
                                        "replaces": [fact["id"]]}]})
    gw.fake.enqueue(Behaviour(text="Noted."), Behaviour(text=correction))
    assert say(gw, conv["id"], "Actually Ana moved to Porto last month.").status_code == 200
    wait_for(lambda: [m for m in memories_of(gw, "active") if "Porto" in m["text"] and m["kind"] == "fact"])
    old = [m for m in memories_of(gw) if m["id"] == fact["id"]][0]
    assert old["status"] == "superseded" and old["valid_until"] is not None and old["superseded_by"]
    found = httpx.post(f"{gw.api}/memories/search", headers=auth(gw.key),
                       json={"query": "where does the user's sister live", "limit": 10}).json()["data"]
    assert "The user's sister Ana lives in Lisbon." not in [r["text"] for r in found]
    assert "The user's sister Ana lives in Porto." in [r["text"] for r in found]


@pytest.mark.parametrize("assistant_gateway", [NOW_EXTRACT], indirect=True)
def test_memory_off_keeps_nothing(assistant_gateway: Gateway) -> None:
    gw = assistant_gateway
    off = httpx.patch(f"{gw.api}/memories/settings", headers=auth(gw.key), json={"enabled": False})
    assert off.status_code == 200 and off.json()["enabled"] is False
    conv = new_conversation(gw)
    assert say(gw, conv["id"], "Remember: my passport number is X1234.").status_code == 200
    refused = httpx.post(f"{gw.api}/memories", headers=auth(gw.key), json={"text": "I like tea."})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "memory_off"
    assert memories_of(gw) == []
    assert not [r for r in usage_records(gw) if r["endpoint"] == "memory.extraction"]


@pytest.mark.parametrize("assistant_gateway", [{"memory": {"extraction_delay_s": 3600}}], indirect=True)
def test_memory_switched_off_is_not_recalled(assistant_gateway: Gateway) -> None:
    """What was kept while memory was on stays (the user may switch it on again) but is not put
    into any prompt while it is off."""
    gw = assistant_gateway
    first = new_conversation(gw)
    assert say(gw, first["id"], "My sister is called Ana and she lives in Lisbon.").status_code == 200
    wait_for(lambda: [m for m in memories_of(gw) if "Ana" in m["text"]])
    second = new_conversation(gw)
    assert say(gw, second["id"], "Where does my sister live?").status_code == 200
    assert "Lisbon" in memory_note(gw.fake.chat_requests()[-1])
    off = httpx.patch(f"{gw.api}/memories/settings", headers=auth(gw.key), json={"enabled": False})
    assert off.status_code == 200
    assert say(gw, second["id"], "Where does my sister live, again?").status_code == 200
    assert memory_note(gw.fake.chat_requests()[-1]) == ""
    assert [m for m in memories_of(gw) if "Ana" in m["text"]]  # kept, not recalled
