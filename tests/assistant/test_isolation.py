"""Another user's conversation, message or reminder id answers 404 on every endpoint, exactly as
an id that does not exist (the same body but for the id), and changes nothing."""

from __future__ import annotations

import secrets
from collections.abc import Callable

import httpx

from tests.api.conftest import Gateway, add_user, balance
from tests.assistant.conftest import auth, history, new_conversation, say

Call = Callable[[str], httpx.Response]


def _same_404(call: Call, theirs: str, missing: str) -> None:
    """`call` with another user's id and with an id that does not exist: the same 404."""
    got, none = call(theirs), call(missing)
    assert got.status_code == none.status_code == 404, (got.text, none.text)
    assert got.json()["error"]["type"] == "invalid_request_error"
    assert got.text.replace(theirs, "ID") == none.text.replace(missing, "ID")


def test_another_users_ids_answer_404_everywhere_and_change_nothing(assistant_gateway: Gateway) -> None:
    gw = assistant_gateway
    conv = new_conversation(gw, title="alice's private plans")
    assert say(gw, conv["id"], "/remind in 2 hours see the doctor").status_code == 200
    kept = history(gw, conv["id"])
    [reminder] = httpx.get(gw.api + "/reminders", headers=auth(gw.key)).json()["data"]
    _, bob_key = add_user(gw.engine, gw.settings, "bob@example.com", "plus")
    bob = auth(bob_key)
    bob_conv = new_conversation(gw, key=bob_key)["id"]
    balances = balance(gw), httpx.get(gw.api + "/balance", headers=bob).json()

    missing_conv = "conv_" + secrets.token_hex(12)
    api = gw.api
    calls: list[tuple[Call, str, str]] = [
        (lambda c: httpx.get(f"{api}/conversations/{c}", headers=bob), conv["id"], missing_conv),
        (lambda c: httpx.get(f"{api}/conversations/{c}/messages", headers=bob), conv["id"], missing_conv),
        (lambda c: httpx.post(f"{api}/conversations/{c}/messages", headers=bob, json={"content": "what did she say?"}),
         conv["id"], missing_conv),
        (lambda c: httpx.post(f"{api}/conversations/{c}/messages", headers=bob,
                              json={"content": "tell me", "stream": True}), conv["id"], missing_conv),
        (lambda c: httpx.post(f"{api}/conversations/{c}/messages", headers=bob, json={"content": "/reminders"}),
         conv["id"], missing_conv),
        (lambda c: httpx.delete(f"{api}/conversations/{c}", headers=bob), conv["id"], missing_conv),
        (lambda c: httpx.get(f"{api}/conversations?after={c}", headers=bob), conv["id"], missing_conv),
        (lambda m: httpx.get(f"{api}/conversations/{bob_conv}/messages?after={m}", headers=bob),
         kept[0]["id"], "msg_" + secrets.token_hex(12)),
        (lambda r: httpx.delete(f"{api}/reminders/{r}", headers=bob), reminder["id"], "rem_987654321"),
    ]
    for call, theirs, missing in calls:
        _same_404(call, theirs, missing)

    # Bob sees none of it, and nothing of alice's changed or ran.
    assert httpx.get(f"{api}/reminders", headers=bob).json()["data"] == []
    assert [c["id"] for c in httpx.get(f"{api}/conversations", headers=bob).json()["data"]] == [bob_conv]
    assert history(gw, conv["id"]) == kept
    assert httpx.get(f"{api}/conversations/{conv['id']}", headers=auth(gw.key)).json()["title"] == "alice's private plans"
    assert httpx.get(f"{api}/reminders", headers=auth(gw.key)).json()["data"] == [reminder]
    assert gw.fake.requests == []
    assert (balance(gw), httpx.get(gw.api + "/balance", headers=bob).json()) == balances
