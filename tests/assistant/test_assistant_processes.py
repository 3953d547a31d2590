"""The assistant with several `switchboard serve` processes on one database (SQLite and
PostgreSQL): every reminder delivered exactly once, one that fell due while every server was
down delivered once when they are back (marked late), and messages sent at once to one
conversation through different processes answered one after the other."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from switchboard.store.assistant_schema import reminders
from switchboard.store.db import reading
from tests.api.conftest import Gateway, wait_for
from tests.assistant.conftest import history, new_conversation, say
from tests.assistant.processes import Servers
from tests.fakes.openai_upstream import FakeOpenAI


def _reminder_rows(servers: Servers) -> list[Any]:
    with reading(servers.engine) as conn:
        return conn.execute(select(reminders).order_by(reminders.c.id)).all()


def _far_hour() -> int:
    """An hour of the day (UTC) at least 11 hours away: a daily reminder at it will not run
    again during the test."""
    return (datetime.now(timezone.utc).hour + 12) % 24


def _reminder_messages(gw: Gateway, conv_id: str) -> list[dict[str, Any]]:
    return [m for m in history(gw, conv_id) if m["kind"] == "reminder"]


def test_reminders_fire_exactly_once_with_two_servers(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    per_conversation = 12
    with FakeOpenAI() as fake:
        servers = Servers(tmp_path, database_url, fake, monkeypatch)
        users = [servers.user("ann@example.com"), servers.user("bob@example.com")]
        with servers.process() as one, servers.process() as two:
            gateways = [servers.gateway(server, user) for user in users for server in (one, two)]
            convs = [(gw, new_conversation(gw)["id"]) for gw in gateways]  # two per user, made on either server

            def set_reminders(target: tuple[Gateway, str]) -> None:
                gw, conv_id = target
                for i in range(per_conversation):
                    when = f"every day at {_far_hour()}" if i % 3 == 0 else "in 1 hour"
                    body = say(gw, conv_id, f"/remind {when} task {conv_id[-6:]}-{i}").json()
                    assert "Reminder rem_" in body["message"]["content"], body

            with ThreadPoolExecutor(len(convs)) as pool:
                list(pool.map(set_reminders, convs))
            rows = _reminder_rows(servers)
            assert len(rows) == len(convs) * per_conversation
            # All of them fall due at the same moment, a second from now, in front of both schedulers.
            due_ms = int(time.time() * 1000) + 1_000
            with servers.engine.begin() as conn:
                conn.execute(update(reminders).values(next_run_ms=due_ms))
            wait_for(lambda: all(r.runs >= 1 for r in _reminder_rows(servers)), timeout=1 + 10)
            assert time.time() * 1000 - due_ms <= 10_000
            time.sleep(3)  # a second delivery, if there were one, would have been made by now
            found = {conv_id: _reminder_messages(gw, conv_id) for gw, conv_id in convs}
        assert fake.requests == []  # no model call for the commands or the deliveries
    rows = _reminder_rows(servers)
    assert [r.runs for r in rows] == [1] * len(rows)
    assert all((r.status == "active") == bool(r.recurrence) for r in rows)  # one-offs done, daily ones moved on
    assert all(r.next_run_ms > due_ms + 3_600_000 for r in rows if r.recurrence)
    for gw, conv_id in convs:
        texts = sorted(m["content"] for m in found[conv_id])
        assert texts == sorted(f"⏰ Reminder: task {conv_id[-6:]}-{i}" for i in range(per_conversation))
        assert all(m["created_at"] * 1000 <= due_ms + 10_000 for m in found[conv_id])
    servers.engine.dispose()


def test_a_reminder_due_while_every_server_was_down_fires_once_when_they_are_back(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeOpenAI() as fake:
        servers = Servers(tmp_path, database_url, fake, monkeypatch)
        user = servers.user("ann@example.com")
        with servers.process() as server:
            gw = servers.gateway(server, user)
            conv_id = new_conversation(gw)["id"]
            say(gw, conv_id, "/remind in 1 hour renew the passport")
            say(gw, conv_id, f"/remind every day at {_far_hour()} take the pills")
        # Every server is down; both reminders fall due (five minutes ago), then two servers start at once.
        down_ms = int(time.time() * 1000) - 5 * 60_000
        with servers.engine.begin() as conn:
            conn.execute(update(reminders).values(next_run_ms=down_ms))
        with ThreadPoolExecutor(2) as pool:
            one, two = pool.map(lambda s: s.start(), [servers.process(), servers.process()])
        try:
            back = time.time()
            gw = servers.gateway(one, user)
            found = wait_for(lambda: len(got := _reminder_messages(gw, conv_id)) >= 2 and got, timeout=10)
            assert time.time() - back <= 10
            time.sleep(3)
            found = _reminder_messages(servers.gateway(two, user), conv_id)
        finally:
            one.stop()
            two.stop()
    assert len(found) == 2, found
    assert sorted(m["content"].split(" (late")[0] for m in found) == [
        "⏰ Reminder: renew the passport", "⏰ Reminder: take the pills"]
    assert all("late" in m["content"] and "while the service was down" in m["content"] for m in found)
    rows = _reminder_rows(servers)
    assert [(r.status, r.runs) for r in rows] == [("done", 1), ("active", 1)]
    assert rows[1].next_run_ms > time.time() * 1000  # moved to its next time after now, not through every missed one
    servers.engine.dispose()


def _assert_turns_one_after_the_other(gw: Gateway, conv_id: str, fake: FakeOpenAI, said: list[str]) -> None:
    """The stored history alternates user, assistant; each model call saw every exchange before it."""
    kept = history(gw, conv_id)
    assert [m["role"] for m in kept] == ["user", "assistant"] * len(said), kept
    users = [m["content"] for m in kept if m["role"] == "user"]
    assert sorted(users) == sorted(said)
    calls = fake.chat_requests()
    assert len(calls) == len(said)
    for n, call in enumerate(calls):
        sent = [(m["role"], m["content"]) for m in call.json["messages"] if m["role"] != "system"]
        expected: list[tuple[str, str]] = []
        for text in users[:n]:
            expected += [("user", text), ("assistant", fake.behaviour.text)]
        assert sent == expected + [("user", users[n])], n


def test_two_messages_to_one_conversation_through_two_servers_are_answered_one_after_the_other(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeOpenAI() as fake:
        fake.configure(text="one two three four", chunks=4, chunk_delay_s=0.25)  # a turn takes about a second
        servers = Servers(tmp_path, database_url, fake, monkeypatch)
        user = servers.user("ann@example.com")
        with servers.process() as one, servers.process() as two:
            gw_one, gw_two = servers.gateway(one, user), servers.gateway(two, user)
            conv_id = new_conversation(gw_one)["id"]
            said = [f"message {i}" for i in range(4)]
            started = time.monotonic()
            with ThreadPoolExecutor(len(said)) as pool:
                answers = list(pool.map(lambda i: say(gw_one if i % 2 else gw_two, conv_id, said[i], timeout=60),
                                        range(len(said))))
            took = time.monotonic() - started
            assert [a.status_code for a in answers] == [200] * len(said), [a.text for a in answers]
            assert all(a.json()["message"]["content"] == "one two three four" for a in answers)
            assert took >= len(said) * 1.0 * 0.9  # they really waited for each other
            _assert_turns_one_after_the_other(gw_two, conv_id, fake, said)
    servers.engine.dispose()


def test_messages_sent_at_once_within_one_server_are_answered_one_after_the_other(assistant_gateway: Gateway) -> None:
    gw = assistant_gateway
    gw.fake.configure(text="one two three four", chunks=4, chunk_delay_s=0.2)
    conv_id = new_conversation(gw)["id"]
    said = [f"message {i}" for i in range(3)]
    with ThreadPoolExecutor(len(said)) as pool:
        answers = list(pool.map(lambda text: say(gw, conv_id, text), said))
    assert [a.status_code for a in answers] == [200] * len(said)
    _assert_turns_one_after_the_other(gw, conv_id, gw.fake, said)


def test_a_conversation_whose_server_died_mid_turn_is_free_again_once_its_lease_lapses(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server answering a message is killed (SIGKILL) mid-turn: its lease on the conversation
    is never released, so the next message, to another server, waits until the lease lapses
    (3 s here, renewed every second while the turn ran), then is answered."""
    with FakeOpenAI() as fake:
        fake.configure(text=" ".join(["slow"] * 60), chunks=60, chunk_delay_s=0.2)
        servers = Servers(tmp_path, database_url, fake, monkeypatch, SWITCHBOARD_ASSISTANT__LEASE_S="3")
        user = servers.user("ann@example.com")
        with servers.process() as two:
            one = servers.process().start()
            try:
                gw_one, gw_two = servers.gateway(one, user), servers.gateway(two, user)
                conv_id = new_conversation(gw_two)["id"]
                with ThreadPoolExecutor(1) as pool:
                    first = pool.submit(lambda: say(gw_one, conv_id, "first", timeout=60))
                    wait_for(lambda: len(fake.chat_requests()) == 1, timeout=20)
                    time.sleep(1.5)  # the lease has been renewed at least once
                    one.kill()
                    killed = time.monotonic()
                    with pytest.raises(Exception):
                        first.result()
            finally:
                one.kill()
            fake.configure(text="here now")
            answer = say(gw_two, conv_id, "second", timeout=60)
            waited = time.monotonic() - killed
            assert answer.status_code == 200 and answer.json()["message"]["content"] == "here now"
            assert 1.0 <= waited <= 3.0 + 5.0, waited
            kept = [(m["role"], m["content"]) for m in history(gw_two, conv_id)]
    assert kept[0] == ("user", "first") and kept[-2:] == [("user", "second"), ("assistant", "here now")]
    servers.engine.dispose()
