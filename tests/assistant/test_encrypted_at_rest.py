"""Everything a user says or is told is stored encrypted: a sentinel phrase sent as a message, a
title, a tool call's arguments and result, a reminder's text and its delivery is found in no
SQLite file (the database, its -wal, -shm or -journal) and in no column of any PostgreSQL table.
A ciphertext copied to another row or another user's row does not decrypt: the API answers an
error, never the copied content."""

from __future__ import annotations

import contextlib
import json
import secrets
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, inspect, select, text, update

from switchboard.store.assistant_schema import conversations, messages, reminders
from switchboard.store.db import is_sqlite
from tests.api.conftest import Gateway, add_user, wait_for
from tests.assistant.conftest import auth, history, new_conversation, say
from tests.fakes.openai_upstream import Behaviour, FakeToolCall


def _say_everything(gw: Gateway, sentinel: str) -> str:
    """The sentinel in every place a user's words are kept; the conversation's id."""
    conv = new_conversation(gw, title=f"Plans about {sentinel}")
    gw.fake.enqueue(
        Behaviour(text="", tool_calls=[FakeToolCall("call_s1", "set_reminder", json.dumps(
            {"text": f"buy {sentinel} at the shop", "when": "in 2 hours"}))]),
        Behaviour(text=f"Done: I will remind you about {sentinel}.", chunks=2),
    )
    assert say(gw, conv["id"], f"Please remind me to buy {sentinel} in two hours").status_code == 200
    assert say(gw, conv["id"], f"/remind in 2 seconds fetch {sentinel} from the post office").status_code == 200
    wait_for(lambda: any(m["kind"] == "reminder" for m in history(gw, conv["id"])))
    fresh = say(gw, conv["id"], f"/new {sentinel} diary").json()["conversation_id"]
    assert say(gw, fresh, f"/remind every Monday at 9 {sentinel} stand-up").status_code == 200
    return conv["id"]


def _assert_round_trip(gw: Gateway, conv_id: str, sentinel: str) -> None:
    """What was stored reads back whole through the API: the scan below looks for something real."""
    kept = history(gw, conv_id)
    tool_call = next(m for m in kept if m.get("tool_calls"))
    assert sentinel in tool_call["tool_calls"][0]["function"]["arguments"]
    assert sentinel in next(m for m in kept if m["role"] == "tool")["content"]
    assert sum(sentinel in (m["content"] or "") for m in kept) >= 6  # user, reply, command, confirmation, delivery
    assert any(m["kind"] == "reminder" and sentinel in m["content"] for m in kept)
    titles = [c["title"] for c in httpx.get(gw.api + "/conversations", headers=auth(gw.key)).json()["data"]]
    assert sorted(titles) == sorted([f"Plans about {sentinel}", f"{sentinel} diary"])
    texts = [r["text"] for r in httpx.get(gw.api + "/reminders", headers=auth(gw.key)).json()["data"]]
    assert sorted(texts) == sorted([f"buy {sentinel} at the shop", f"{sentinel} stand-up"])


def _sqlite_files(gw: Gateway) -> list[Path]:
    path = Path(gw.settings.resolved_database_url.removeprefix("sqlite:///"))
    return [p for p in (path, *(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-journal")))
            if p.exists()]


def _assert_not_in_sqlite_files(gw: Gateway, sentinel: str) -> None:
    files = _sqlite_files(gw)
    assert any(p.name.endswith("-wal") for p in files)  # the newest pages are in the log, not yet checkpointed
    blob = b"".join(p.read_bytes() for p in files)
    assert b"alice@example.com" in blob  # the scan reads the right files: what is kept in the clear is found
    for form in (sentinel.encode("utf-8"), sentinel.encode("utf-16-le"), sentinel.encode("utf-16-be")):
        assert form not in blob


def _postgres_dump(engine: Engine) -> dict[str, list[str]]:
    """Every row of every table as text (bytea columns show as \\x + hex)."""
    dump: dict[str, list[str]] = {}
    with engine.connect() as conn:
        for table in inspect(conn).get_table_names():
            dump[table] = [row[0] for row in conn.execute(text(f'SELECT t::text FROM "{table}" AS t'))]
    return dump


def _assert_not_in_postgres(engine: Engine, sentinel: str) -> None:
    dump = _postgres_dump(engine)
    assert {"messages", "conversations", "reminders", "usage_records", "holds"} <= set(dump)
    everything = "\n".join(row for rows in dump.values() for row in rows).lower()
    assert "alice@example.com" in everything  # text columns are in the dump...
    with engine.connect() as conn:  # ...and bytea ones, as hex
        sample = conn.execute(select(messages.c.content_ct).limit(1)).scalar_one()
    assert bytes(sample).hex() in everything
    for form in (sentinel.encode("utf-8"), sentinel.encode("utf-16-le")):
        assert form.hex() not in everything
    assert sentinel.lower() not in everything
    leaks = [table for table, rows in dump.items() if any(sentinel.lower() in row.lower() for row in rows)]
    assert leaks == []


def test_a_sentinel_said_everywhere_is_stored_nowhere_in_the_clear(assistant_gateway_on: Gateway) -> None:
    gw = assistant_gateway_on
    sentinel = "Quokka" + secrets.token_hex(6)
    conv_id = _say_everything(gw, sentinel)
    _assert_round_trip(gw, conv_id, sentinel)
    if is_sqlite(gw.settings.resolved_database_url):
        _assert_not_in_sqlite_files(gw, sentinel)
    else:
        _assert_not_in_postgres(gw.engine, sentinel)


def test_the_sqlite_files_hold_no_sentinel_after_a_checkpoint_and_a_delete(assistant_gateway_on: Gateway) -> None:
    gw = assistant_gateway_on
    if not is_sqlite(gw.settings.resolved_database_url):
        pytest.skip("SQLite's files only")
    sentinel = "Axolotl" + secrets.token_hex(6)
    conv_id = _say_everything(gw, sentinel)
    with contextlib.closing(sqlite3.connect(_sqlite_files(gw)[0])) as db:  # pages from the log into the file
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert httpx.delete(f"{gw.api}/conversations/{conv_id}", headers=auth(gw.key)).status_code == 200
    blob = b"".join(p.read_bytes() for p in _sqlite_files(gw))
    assert b"alice@example.com" in blob and sentinel.encode() not in blob


# -- ciphertexts moved to another row or user --------------------------------------------------

def _error(response: httpx.Response, *secrets_: str) -> dict[str, Any]:
    assert response.status_code == 500, response.text
    error = response.json()["error"]
    assert error["code"] == "content_unreadable" and error["type"] == "server_error"
    for secret in secrets_:
        assert secret not in response.text
    return error


def test_a_ciphertext_copied_to_another_row_or_user_does_not_decrypt(assistant_gateway_on: Gateway) -> None:
    gw = assistant_gateway_on
    sentinel = "Pangolin" + secrets.token_hex(6)
    bob_id, bob_key = add_user(gw.engine, gw.settings, "bob@example.com", "plus")
    alice_conv = new_conversation(gw, title=f"secret {sentinel}")["id"]
    say(gw, alice_conv, f"/remind in 2 hours {sentinel} call")  # two messages and a reminder
    bob_conv = new_conversation(gw, key=bob_key, title="bob's")["id"]
    say(gw, bob_conv, "/remind in 3 hours bob's own", key=bob_key)
    with gw.engine.begin() as conn:
        alice_msgs = conn.execute(select(messages).where(messages.c.user_id == gw.user_id).order_by(messages.c.id)).all()
        bob_msgs = conn.execute(select(messages).where(messages.c.user_id == bob_id).order_by(messages.c.id)).all()
        alice_title = conn.execute(select(conversations.c.title_ct).where(conversations.c.id == alice_conv)).scalar_one()
        alice_reminder = conn.execute(select(reminders.c.text_ct).where(reminders.c.user_id == gw.user_id)).scalar_one()
        # Within alice's own data: her first message's ciphertext copied onto her second message.
        conn.execute(update(messages).where(messages.c.id == alice_msgs[1].id).values(content_ct=alice_msgs[0].content_ct))
        # Into bob's rows: a message, his conversation's title, his reminder.
        conn.execute(update(messages).where(messages.c.id == bob_msgs[0].id).values(content_ct=alice_msgs[0].content_ct))
        conn.execute(update(conversations).where(conversations.c.id == bob_conv).values(title_ct=alice_title))
        conn.execute(update(reminders).where(reminders.c.user_id == bob_id).values(text_ct=alice_reminder))

    _error(httpx.get(f"{gw.api}/conversations/{alice_conv}/messages", headers=auth(gw.key)))
    bob = auth(bob_key)
    _error(httpx.get(f"{gw.api}/conversations/{bob_conv}/messages", headers=bob), sentinel)
    _error(httpx.get(f"{gw.api}/conversations/{bob_conv}", headers=bob), sentinel)
    _error(httpx.get(f"{gw.api}/conversations", headers=bob), sentinel)
    _error(httpx.get(f"{gw.api}/reminders", headers=bob), sentinel)
    # Alice's own conversation (the copy source) still reads, and her reminder too.
    assert httpx.get(f"{gw.api}/conversations/{alice_conv}", headers=auth(gw.key)).json()["title"] == f"secret {sentinel}"
    assert [r["text"] for r in httpx.get(f"{gw.api}/reminders", headers=auth(gw.key)).json()["data"]] == [f"{sentinel} call"]


def test_a_reminder_moved_to_another_user_is_not_delivered_to_them(assistant_gateway_on: Gateway) -> None:
    """The scheduler decrypts too: bob is told a reminder failed, never shown alice's text."""
    gw = assistant_gateway_on
    sentinel = "Okapi" + secrets.token_hex(6)
    bob_id, bob_key = add_user(gw.engine, gw.settings, "bob@example.com", "plus")
    alice_conv = new_conversation(gw)["id"]
    say(gw, alice_conv, f"/remind in 2 hours {sentinel} call")
    bob_conv = new_conversation(gw, key=bob_key)["id"]
    say(gw, bob_conv, "/remind in 3 hours bob's own", key=bob_key)
    due_ms = int(time.time() * 1000) + 500
    with gw.engine.begin() as conn:
        stolen = conn.execute(select(reminders.c.text_ct).where(reminders.c.user_id == gw.user_id)).scalar_one()
        conn.execute(update(reminders).where(reminders.c.user_id == bob_id).values(text_ct=stolen, next_run_ms=due_ms))
    delivered = wait_for(lambda: [m for m in history(gw, bob_conv, key=bob_key) if m["kind"] == "reminder"])
    assert len(delivered) == 1 and sentinel not in delivered[0]["content"]
    assert "could not be read" in delivered[0]["content"]
    with gw.engine.connect() as conn:
        assert conn.execute(select(reminders.c.status).where(reminders.c.user_id == bob_id)).scalar_one() == "failed"
