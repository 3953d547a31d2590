"""Chat commands: answered at once on the same endpoint, with no model call and no charge."""

from __future__ import annotations

import httpx

from tests.api.conftest import Gateway, balance, usage_records
from tests.assistant.conftest import auth, history, new_conversation, say


def test_commands_answer_without_a_model_and_cost_nothing(assistant_gateway: Gateway) -> None:
    gw = assistant_gateway
    conv = new_conversation(gw)
    before = balance(gw)["available"]
    answers = {}
    for command in ("/help", "/balance", "/usage", "/reminders", "/frobnicate", "/model", "/timezone"):
        response = say(gw, conv["id"], command)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["credits_charged"] == 0 and body["models"] == []
        assert body["message"]["kind"] == "command"
        answers[command] = body["message"]["content"]
    assert "/remind WHEN WHAT" in answers["/help"]
    assert answers["/balance"].startswith(f"Available: {before} credits (plus plan).")
    assert answers["/usage"] == "No usage yet."
    assert answers["/reminders"] == "No reminders are set."
    assert answers["/frobnicate"] == "Unknown command /frobnicate. Type /help to see what I can do."
    assert answers["/model"].startswith("This conversation uses auto.")
    assert answers["/timezone"].startswith("Your time zone is UTC.")
    assert gw.fake.requests == [] and usage_records(gw) == [] and balance(gw)["available"] == before


def test_remind_reads_the_longest_leading_time_and_keeps_the_rest(assistant_gateway: Gateway) -> None:
    gw = assistant_gateway
    conv = new_conversation(gw)
    assert say(gw, conv["id"], "/timezone Europe/Paris").json()["message"]["content"].startswith(
        "Time zone set to Europe/Paris.")
    once = say(gw, conv["id"], "/remind in 1 minute call mum").json()["message"]["content"]
    assert once.startswith('Reminder rem_') and '"call mum"' in once and "(in 1 minute)" in once
    weekly = say(gw, conv["id"], "/remind every Monday at 9 standup").json()["message"]["content"]
    assert '"standup"' in weekly and "then every Monday at 09:00" in weekly
    unreadable = say(gw, conv["id"], "/remind call mum sometime").json()["message"]["content"]
    assert unreadable.startswith("I couldn't read a time")
    reminders = httpx.get(gw.api + "/reminders", headers=auth(gw.key)).json()["data"]
    assert [(r["text"], r["recurrence"], r["conversation_id"]) for r in reminders] == [
        ("call mum", None, conv["id"]), ("standup", "0 9 * * 1", conv["id"])]
    # Mondays at 9 in Paris (winter): 08:00 UTC.
    assert reminders[1]["next_run_at"].endswith("T08:00:00Z")
    listed = say(gw, conv["id"], "/reminders").json()["message"]["content"]
    assert "call mum" in listed and "standup" in listed
    rid = reminders[0]["id"]
    assert say(gw, conv["id"], f"/cancel {rid}").json()["message"]["content"] == \
        f'Reminder {rid} ("call mum") is cancelled.'
    assert [r["text"] for r in httpx.get(gw.api + "/reminders", headers=auth(gw.key)).json()["data"]] == ["standup"]
    assert gw.fake.requests == []


def test_model_pins_a_model_and_new_starts_a_conversation(assistant_gateway: Gateway) -> None:
    gw = assistant_gateway
    conv = new_conversation(gw)
    unknown = say(gw, conv["id"], "/model gpt-nonexistent").json()["message"]["content"]
    assert "does not exist" in unknown and "fake-small" in unknown
    assert say(gw, conv["id"], "/model fake-small").json()["message"]["content"] == \
        "This conversation now uses fake-small."
    assert httpx.get(f"{gw.api}/conversations/{conv['id']}", headers=auth(gw.key)).json()["model"] == "fake-small"
    say(gw, conv["id"], "Hello")
    assert gw.fake.requests[-1].json["model"] == "fake-model"  # the pinned model's upstream name
    body = say(gw, conv["id"], "/new").json()
    fresh = body["conversation_id"]
    assert fresh != conv["id"] and fresh in body["message"]["content"]
    assert history(gw, fresh) == []
    listed = httpx.get(gw.api + "/conversations", headers=auth(gw.key)).json()["data"]
    assert {c["id"] for c in listed} == {conv["id"], fresh}
