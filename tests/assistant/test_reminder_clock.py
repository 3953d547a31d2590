"""Reminders against fixed clocks: local wall-clock time kept across daylight-saving changes
(switchboard.assistant.when), and Reminders.deliver / Scheduler.tick moving a reminder on,
delivering each run once, saying when it is late, and not letting one broken reminder stop
the others."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Connection, Engine, select, update

from switchboard.accounts.users import create_user
from switchboard.assistant.conversations import Conversations
from switchboard.assistant.reminders import Reminders, Scheduler
from switchboard.assistant.when import Schedule, next_run, parse_when, split_when
from switchboard.core.config import Settings
from switchboard.crypto import KeyRing, MasterKeys
from switchboard.inference.runtime import make_ledger
from switchboard.store.assistant_schema import messages, reminders
from switchboard.store.db import make_engine
from switchboard.store.migrate import upgrade

PARIS, NEW_YORK = "Europe/Paris", "America/New_York"
# 2026: Europe springs forward on 29 March (02:00 CET -> 03:00 CEST, at 01:00 UTC) and falls back on
# 25 October (03:00 CEST -> 02:00 CET, at 01:00 UTC); New York on 8 March and 1 November.


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def local(at: datetime, zone: str) -> str:
    return at.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M")


def runs(rule: str, zone: str, after: datetime, n: int) -> list[datetime]:
    found = []
    for _ in range(n):
        after = next_run(rule, zone, after)
        found.append(after)
    return found


# -- when.py: recurring rules ------------------------------------------------------------------

@pytest.mark.parametrize("zone, start", [(PARIS, "2026-03-26T12:00:00"), (PARIS, "2026-10-22T12:00:00"),
                                         (NEW_YORK, "2026-03-05T18:00:00"), (NEW_YORK, "2026-10-29T18:00:00")])
def test_a_daily_reminder_stays_at_9_local_across_a_dst_change(zone: str, start: str) -> None:
    found = runs("0 9 * * *", zone, utc(start), 6)
    assert [local(at, zone)[-5:] for at in found] == ["09:00"] * 6
    days = [local(at, zone)[:10] for at in found]
    assert len(set(days)) == 6  # one a day, none skipped, none twice
    offsets = {at.astimezone(ZoneInfo(zone)).utcoffset() for at in found}
    assert len(offsets) == 2  # the change really is inside the window


def test_every_monday_at_9_across_the_spring_change() -> None:
    schedule = parse_when("every Monday at 9", PARIS, utc("2026-03-20T12:00:00"))
    assert schedule is not None and schedule.recurrence == "0 9 * * 1"
    assert schedule.first_run == utc("2026-03-23T08:00:00")  # 09:00 CET
    assert schedule.next_after(schedule.first_run, PARIS) == utc("2026-03-30T07:00:00")  # 09:00 CEST


def test_a_time_in_the_repeated_autumn_hour_runs_once_that_night() -> None:
    """02:30 happens twice on 25 October in Paris (CEST, then CET): a daily 02:30 reminder
    runs once that night, at the first of them, like cron."""
    found = runs("30 2 * * *", PARIS, utc("2026-10-23T12:00:00"), 4)
    assert found == [utc("2026-10-24T00:30:00"), utc("2026-10-25T00:30:00"), utc("2026-10-26T01:30:00"),
                     utc("2026-10-27T01:30:00")]


def test_a_time_the_spring_change_skips_runs_once_just_after_it() -> None:
    """02:30 does not exist on 29 March in Paris: that day the reminder runs at 03:30 CEST
    (the wall clock moved on by the hour it skipped), and at 02:30 again the next day."""
    found = runs("30 2 * * *", PARIS, utc("2026-03-27T12:00:00"), 4)
    assert found == [utc("2026-03-28T01:30:00"), utc("2026-03-29T01:30:00"), utc("2026-03-30T00:30:00"),
                     utc("2026-03-31T00:30:00")]
    assert [local(at, PARIS)[-5:] for at in found] == ["02:30", "03:30", "02:30", "02:30"]


def test_hourly_reminders_run_every_real_hour_across_both_changes() -> None:
    spring = runs("0 * * * *", PARIS, utc("2026-03-28T22:30:00"), 5)
    autumn = runs("0 * * * *", PARIS, utc("2026-10-24T22:30:00"), 5)
    for found in (spring, autumn):
        assert [(b - a).total_seconds() for a, b in zip(found, found[1:])] == [3600] * 4


# -- when.py: one-off times ---------------------------------------------------------------------

@pytest.mark.parametrize("now, phrase, expected", [
    ("2026-03-28T11:00:00", "tomorrow at 6pm", "2026-03-29 18:00"),  # CET today, CEST tomorrow
    ("2026-03-28T11:00:00", "tomorrow at 18:00", "2026-03-29 18:00"),
    ("2026-10-24T11:00:00", "tomorrow at 6pm", "2026-10-25 18:00"),  # CEST today, CET tomorrow
    ("2026-03-28T11:00:00", "march 30 at 9am", "2026-03-30 09:00"),
    ("2026-03-28T11:00:00", "tomorrow", "2026-03-29 09:00"),
    ("2026-03-28T11:00:00", "tomorrow at 9", "2026-03-29 09:00"),
    ("2026-03-28T11:00:00", "monday at 9", "2026-03-30 09:00"),
])
def test_a_one_off_time_is_the_local_wall_clock_time_named(now: str, phrase: str, expected: str) -> None:
    schedule = parse_when(phrase, PARIS, utc(now))
    assert schedule is not None and schedule.recurrence is None
    assert local(schedule.first_run, PARIS) == expected


def test_in_two_hours_across_the_spring_change_is_two_real_hours() -> None:
    now = utc("2026-03-29T00:30:00")  # 01:30 CET, half an hour before the change
    schedule = parse_when("in 2 hours", PARIS, now)
    assert schedule is not None and schedule.first_run == utc("2026-03-29T02:30:00")  # 04:30 CEST


def test_remind_splits_when_from_what() -> None:
    found = split_when("tomorrow at 9 dentist", PARIS, utc("2026-03-28T11:00:00"))
    assert found is not None
    schedule, what = found
    assert what == "dentist" and local(schedule.first_run, PARIS) == "2026-03-29 09:00"


# -- Reminders.deliver and Scheduler.tick with a fixed clock ---------------------------------------

class Store:
    """A migrated SQLite database, a user with a conversation, and the assistant's stores."""

    def __init__(self, tmp_path: Path) -> None:
        settings = Settings(data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path / 'r.db'}",
                            local_model={"enabled": False})
        self.engine: Engine = make_engine(settings.resolved_database_url)
        upgrade(self.engine)
        self.keyring = KeyRing(self.engine, MasterKeys(os.urandom(32)))
        self.conversations = Conversations(self.keyring)
        self.reminders = Reminders(self.keyring, self.conversations)
        ledger = make_ledger(settings)
        with self.engine.begin() as conn:
            self.user_id = create_user(conn, ledger, "clock@example.com", "free").id
        self.keyring.data_key(self.user_id)  # made in a transaction of its own, as services.write does first
        self.conv_id = self.tx(lambda c: self.conversations.create(c, self.user_id)).id

    def tx(self, work: Callable[[Connection], Any]) -> Any:
        with self.engine.begin() as conn:
            return work(conn)

    async def run(self, work: Callable[[Connection], Any], order_key: int | None = None) -> Any:
        return await asyncio.to_thread(self.tx, work)

    def add(self, text: str, first_run: datetime, recurrence: str | None = None, zone: str = PARIS) -> int:
        schedule = Schedule(first_run, recurrence)
        return self.tx(lambda c: self.reminders.create(c, self.user_id, self.conv_id, text, schedule, zone)).id

    def row(self, rid: int) -> Any:
        return self.tx(lambda c: c.execute(select(reminders).where(reminders.c.id == rid)).one())

    def delivered(self) -> list[Any]:
        return [m for m in self.tx(lambda c: self.conversations.messages(c, self.user_id, self.conv_id))
                if m.kind == "reminder"]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path)
    yield s
    s.engine.dispose()


def ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def test_deliver_moves_a_daily_reminder_to_9_local_across_the_change(store: Store) -> None:
    first = utc("2026-03-28T08:00:00")  # Saturday 09:00 CET
    rid = store.add("water the plants", first, "0 9 * * *")
    due = ms(first)
    for expected_next in ("2026-03-29T07:00:00", "2026-03-30T07:00:00"):
        at = due + 2_000  # the scheduler found it two seconds after its time
        message = store.tx(lambda c: store.reminders.deliver(c, rid, due, at))
        assert message is not None and message.role == "assistant" and message.kind == "reminder"
        assert "water the plants" in message.content and "late" not in message.content
        row = store.row(rid)
        assert (row.status, row.next_run_ms, row.last_run_ms) == ("active", ms(utc(expected_next)), at)
        due = row.next_run_ms
    assert store.row(rid).runs == 2 and len(store.delivered()) == 2


def test_a_run_is_delivered_once_however_often_it_is_found(store: Store) -> None:
    at = utc("2026-05-01T10:00:00")
    rid = store.add("once", at)
    first = store.tx(lambda c: store.reminders.deliver(c, rid, ms(at), ms(at) + 500))
    again = store.tx(lambda c: store.reminders.deliver(c, rid, ms(at), ms(at) + 700))
    assert first is not None and again is None
    assert (store.row(rid).status, store.row(rid).runs) == ("done", 1)
    assert len(store.delivered()) == 1


def test_a_recurring_reminder_missed_for_days_runs_once_marked_late_then_moves_past_now(store: Store) -> None:
    first = utc("2026-03-27T08:00:00")  # Friday 09:00 CET; every server down until Monday 10:15 CEST
    rid = store.add("stand-up", first, "0 9 * * *")
    back = ms(utc("2026-03-30T08:15:00"))
    message = store.tx(lambda c: store.reminders.deliver(c, rid, ms(first), back))
    assert message is not None and "stand-up" in message.content and "late" in message.content
    assert "09:00" in message.content  # when it was due, in the user's own time
    row = store.row(rid)
    assert (row.runs, row.next_run_ms) == (1, ms(utc("2026-03-31T07:00:00")))  # not Saturday, Sunday, Monday
    assert len(store.delivered()) == 1


def test_scheduler_tick_delivers_what_is_due_at_its_clock(store: Store) -> None:
    now = ms(utc("2026-06-01T12:00:00"))
    clock = [now]
    due = [store.add(f"due {i}", utc("2026-06-01T11:59:58")) for i in range(3)]
    later = store.add("later", utc("2026-06-01T12:00:30"))
    scheduler = Scheduler(store.engine, store.reminders, store.run, clock=lambda: clock[0])
    assert asyncio.run(scheduler.tick()) == 3
    assert asyncio.run(scheduler.tick()) == 0
    assert {store.row(r).status for r in due} == {"done"} and store.row(later).status == "active"
    clock[0] = now + 30_000
    assert asyncio.run(scheduler.tick()) == 1
    assert sorted(m.content for m in store.delivered()) == [
        "⏰ Reminder: due 0", "⏰ Reminder: due 1", "⏰ Reminder: due 2", "⏰ Reminder: later"]


def test_a_reminder_that_cannot_be_read_does_not_stop_the_others(store: Store) -> None:
    """A reminder whose stored text no longer decrypts (altered, or copied from another row) is
    marked failed, the user is told a reminder was due, and the reminders after it are delivered."""
    at = utc("2026-06-01T11:59:00")
    broken = store.add("broken", at)
    fine = [store.add(f"fine {i}", at) for i in range(2)]
    other = store.row(fine[0]).text_ct
    store.tx(lambda c: c.execute(update(reminders).where(reminders.c.id == broken).values(text_ct=other)))
    scheduler = Scheduler(store.engine, store.reminders, store.run, clock=lambda: ms(at) + 1_000)
    asyncio.run(scheduler.tick())
    assert [store.row(r).status for r in fine] == ["done", "done"]
    assert store.row(broken).status == "failed"
    contents = [m.content for m in store.delivered()]
    assert sorted(contents[1:]) == ["⏰ Reminder: fine 0", "⏰ Reminder: fine 1"]
    assert f"rem_{broken}" in contents[0] and "could not be read" in contents[0] and "fine 0" not in contents[0]
    assert asyncio.run(scheduler.tick()) == 0  # nothing is left due, nothing is tried again
    with store.engine.connect() as conn:
        assert len(conn.execute(select(messages.c.id).where(messages.c.kind == "reminder")).all()) == 3
