"""A turn through the API: the reply, what it cost, what is kept."""

from __future__ import annotations

import httpx
from sqlalchemy import select

from switchboard.store.assistant_schema import conversations
from tests.api.conftest import Gateway, balance, usage_records, wait_for
from tests.assistant.conftest import auth, history, new_conversation, say, say_streaming
from tests.fakes.openai_upstream import Behaviour


def test_a_turn_answers_charges_and_keeps_both_messages(assistant_gateway: Gateway) -> None:
    gw = assistant_gateway
    gw.fake.behaviour = Behaviour(text="Paris is the capital of France.", prompt_tokens=50, completion_tokens=8)
    conv = new_conversation(gw, title="Geography")
    assert conv["object"] == "conversation" and conv["channel"] == "api" and conv["title"] == "Geography"
    before = float(balance(gw)["available"])
    response = say(gw, conv["id"], "What is the capital of France?")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["message"]["content"] == "Paris is the capital of France."
    assert body["message"]["role"] == "assistant"
    assert body["models"] == ["fake-small"]
    # 50 prompt tokens at 0.2 credits, 8 output tokens at 0.4: 13.2 credits.
    assert body["credits_charged"] == 13.2
    assert abs(body["credits_remaining"] - (before - 13.2)) < 1e-6
    assert [(m["role"], m["content"]) for m in history(gw, conv["id"])] == [
        ("user", "What is the capital of France?"), ("assistant", "Paris is the capital of France.")]
    assert [r["endpoint"] for r in usage_records(gw)] == ["assistant"]
    sent = gw.fake.requests[-1].json
    assert sent["messages"][0]["role"] == "system"
    assert sent["messages"][-1] == {"role": "user", "content": "What is the capital of France?"}


def test_a_streamed_turn_sends_text_deltas_then_the_totals(assistant_gateway: Gateway) -> None:
    gw = assistant_gateway
    gw.fake.behaviour = Behaviour(text="one two three", chunks=3)
    conv = new_conversation(gw)
    events = say_streaming(gw, conv["id"], "Count to three")
    names = [name for name, _ in events]
    assert names[-1] == "turn.completed" and set(names[:-1]) == {"text.delta"}
    assert "".join(data["text"] for name, data in events if name == "text.delta") == "one two three"
    assert events[-1][1]["message"]["content"] == "one two three"
    assert events[-1][1]["credits_charged"] > 0


def test_a_streamed_turn_whose_client_goes_runs_to_its_end_and_is_kept(assistant_gateway: Gateway) -> None:
    """Closing the connection after the first words does not stop the turn: the whole reply is
    kept in the conversation and charged once, as a user who reconnects expects to find it."""
    gw = assistant_gateway
    gw.fake.behaviour = Behaviour(text="one two three four", chunks=4, chunk_delay_s=0.3)
    conv = new_conversation(gw)
    before = float(balance(gw)["available"])
    with httpx.stream("POST", f"{gw.api}/conversations/{conv['id']}/messages", headers=auth(gw.key),
                      json={"content": "Count to four", "stream": True}, timeout=30) as response:
        for line in response.iter_lines():
            if line.startswith("event: text.delta"):
                break  # the client goes after the first words
    wait_for(lambda: len(history(gw, conv["id"])) == 2, timeout=15)
    assert history(gw, conv["id"])[-1]["content"] == "one two three four"
    assert len(usage_records(gw)) == 1 and float(balance(gw)["available"]) < before


def test_a_finished_turn_leaves_its_conversation_free(assistant_gateway: Gateway) -> None:
    """The lease that keeps a conversation to one turn at a time (across servers) is released by
    the turn's last write: after an answer, a command and a failed turn alike, another server
    could take the conversation at once (the row says nobody holds it)."""
    gw = assistant_gateway
    conv = new_conversation(gw)

    def holder() -> tuple[object, object]:
        with gw.engine.connect() as conn:
            row = conn.execute(select(conversations.c.busy_until_ms, conversations.c.busy_by)
                               .where(conversations.c.id == conv["id"])).one()
        return row.busy_until_ms, row.busy_by

    gw.fake.behaviour = Behaviour(text="Hello!")
    assert say(gw, conv["id"], "Hi").status_code == 200
    assert holder() == (None, None)
    assert say(gw, conv["id"], "/help").status_code == 200
    assert holder() == (None, None)
    gw.fake.behaviour = Behaviour(status=500)
    failed = say(gw, conv["id"], "Hi again")
    assert failed.json()["message"]["kind"] == "error", failed.text
    assert holder() == (None, None)
