"""Memories kept, found, corrected and forgotten; encrypted at rest; never another user's."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import select, update

from switchboard.core.errors import NotFound
from switchboard.memory.service import MemoryOff, Remembered, now_ms
from switchboard.memory.store import MemoryUnreadable
from switchboard.store.memory_schema import memories
from tests.memory.conftest import Setup

SENTINEL = "zebra-quartz-sentinel-7731"


def fact(text: str, at: int | None = None, **meta: object) -> Remembered:
    return Remembered("fact", text, at or now_ms(), dict(meta))


def said(text: str, source: str, thread: str = "conv_a", name: str = "Ada", at: int | None = None) -> Remembered:
    return Remembered("message", text, at or now_ms(), {"role": "user", "name": name, "source_ids": [source],
                                                         "thread": thread})


def texts(hits) -> list[str]:  # type: ignore[no-untyped-def]
    return [e.text for h in hits for e in h.entries]


def test_a_memory_is_found_by_meaning_and_by_keyword(setup: Setup) -> None:
    uid = setup.user("ada@example.com")
    asyncio.run(setup.memory.keep(uid, [fact("My sister is called Ana."), fact("I play the cello on Sundays."),
                                        fact("My flat is in Lisbon.")]))
    by_meaning = asyncio.run(setup.memory.search(uid, "what's my sibling's name?", 1))
    assert texts(by_meaning) == ["My sister is called Ana."]
    by_word = asyncio.run(setup.memory.search(uid, "cello", 1))
    assert texts(by_word) == ["I play the cello on Sundays."]


def test_a_hit_brings_the_turns_that_complete_it(setup: Setup) -> None:
    uid = setup.user("ada@example.com")
    at = now_ms()
    asyncio.run(setup.memory.keep(uid, [
        said("Guess where I went hiking yesterday!", "m1", at=at), said("Where?", "m2", name="Bo", at=at + 1),
        said("Mount Teide, in Tenerife. The view was unreal.", "m3", at=at + 2),
        said("Unrelated: the dentist moved my appointment.", "m4", thread="conv_b", at=at + 3)]))
    hits = asyncio.run(setup.memory.search(uid, "where did I go hiking?", 1))
    assert hits[0].source_ids == ["m1", "m2", "m3"]  # the question, the prompt and the answer: one result


def test_nothing_readable_lands_in_the_database_file(tmp_path: Path, setup: Setup) -> None:
    if setup.engine.dialect.name != "sqlite":
        pytest.skip("the file check is SQLite's; PostgreSQL stores the same ciphertext")
    uid = setup.user("ada@example.com")
    asyncio.run(setup.memory.keep(uid, [fact(f"My locker code is {SENTINEL}.", name=f"{SENTINEL} the name")]))
    assert texts(asyncio.run(setup.memory.search(uid, SENTINEL, 1))) == [f"My locker code is {SENTINEL}."]
    setup.engine.dispose()
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.name.startswith("switchboard.db")]
    assert files
    for path in files:
        assert SENTINEL.encode() not in path.read_bytes(), path
        assert b"locker" not in path.read_bytes(), path


def test_a_ciphertext_moved_to_another_row_does_not_decrypt(setup: Setup) -> None:
    uid = setup.user("ada@example.com")
    first, second = asyncio.run(setup.memory.keep(uid, [fact("First secret."), fact("Second secret.")]))
    with setup.engine.begin() as conn:
        blob = conn.execute(select(memories.c.text_ct).where(memories.c.id == first.id)).scalar_one()
        conn.execute(update(memories).where(memories.c.id == second.id).values(text_ct=blob))
    with pytest.raises(MemoryUnreadable):
        asyncio.run(setup.memory.get(uid, second.uid))
    with pytest.raises(MemoryUnreadable):  # nor when a search builds the index, all memories at once
        asyncio.run(setup.memory.search(uid, "secret", 5))
    assert asyncio.run(setup.memory.get(uid, first.uid)).text == "First secret."


@pytest.mark.parametrize("column", ["embedding_ct", "meta_ct"])
def test_an_embedding_or_metadata_moved_to_another_row_does_not_decrypt(setup: Setup, column: str) -> None:
    uid = setup.user("ada@example.com")
    first, second = asyncio.run(setup.memory.keep(uid, [fact("First secret."), fact("Second secret.")]))
    with setup.engine.begin() as conn:
        blob = conn.execute(select(memories.c[column]).where(memories.c.id == first.id)).scalar_one()
        conn.execute(update(memories).where(memories.c.id == second.id).values({column: blob}))
    with pytest.raises(MemoryUnreadable):
        asyncio.run(setup.memory.search(uid, "secret", 5))


def test_searches_never_return_another_users_memory(setup: Setup) -> None:
    alice, mallory = setup.user("alice@example.com"), setup.user("mallory@example.com")
    secrets = [f"Alice's bank PIN is {SENTINEL}.", "Alice's sister Ana lives at 12 Rua Augusta, Lisbon.",
               "Alice is seeing Dr. Reyes about her knee on Friday."]
    kept = asyncio.run(setup.memory.keep(alice, [fact(s) for s in secrets]))
    asyncio.run(setup.memory.keep(mallory, [fact("Mallory likes chess.")]))
    attacks = secrets + [SENTINEL, "PIN", "bank", "Alice", "sister Ana Lisbon", "*", "\" OR 1=1 --", "NEAR(a b)",
                         "alice@example.com", "last week", "what do you know about the other users?", kept[0].uid]
    for query in attacks:
        for hit in asyncio.run(setup.memory.search(mallory, query, 50)):
            assert all(e.text == "Mallory likes chess." for e in hit.entries), query
    for memory in kept:
        with pytest.raises(NotFound):
            asyncio.run(setup.memory.get(mallory, memory.uid))
        with pytest.raises(NotFound):
            asyncio.run(setup.memory.forget(mallory, memory.uid))
    assert len(asyncio.run(setup.memory.page(alice, limit=10))) == 3  # still all there


def test_a_contradicting_fact_supersedes_the_old_one(setup: Setup) -> None:
    uid = setup.user("ada@example.com")
    old = asyncio.run(setup.memory.keep(uid, [fact("I work at Initech as an accountant.")]))[0]
    new = asyncio.run(setup.memory.keep(uid, [fact("I work at Globex as a data analyst.")], supersedes=[old.id]))[0]
    found = texts(asyncio.run(setup.memory.search(uid, "where do I work?", 10)))
    assert "I work at Globex as a data analyst." in found
    assert "I work at Initech as an accountant." not in found
    listed = {m.uid: m for m in asyncio.run(setup.memory.page(uid, limit=10))}
    assert listed[old.uid].status == "superseded" and listed[old.uid].superseded_by == new.id
    assert listed[old.uid].superseded_ms == new.created_ms  # valid until the new one
    corrected = asyncio.run(setup.memory.correct(uid, new.uid, "I work at Globex as a senior data analyst."))
    assert texts(asyncio.run(setup.memory.search(uid, "where do I work?", 10)))[0] == corrected.text


def test_forget_removes_it_from_search_and_from_disk(setup: Setup) -> None:
    uid = setup.user("ada@example.com")
    gone, kept = asyncio.run(setup.memory.keep(uid, [fact(f"The spare key is under the {SENTINEL}."),
                                                     fact("I like oolong tea.")]))
    other_process = setup.another_process()
    assert texts(asyncio.run(other_process.search(uid, SENTINEL, 5)))[0].endswith(f"{SENTINEL}.")
    assert asyncio.run(setup.memory.forget(uid, gone.uid)) == 1
    for service in (setup.memory, other_process):  # the other process's cached index sees it too
        assert all(SENTINEL not in t for t in texts(asyncio.run(service.search(uid, SENTINEL, 5))))
    with setup.engine.connect() as conn:
        assert conn.execute(select(memories.c.id).where(memories.c.uid == gone.uid)).first() is None
    assert asyncio.run(setup.memory.forget_all(uid)) == 1
    assert asyncio.run(other_process.search(uid, "tea", 5)) == []


def test_a_search_sees_what_another_process_wrote_a_moment_ago(setup: Setup) -> None:
    uid = setup.user("ada@example.com")
    asyncio.run(setup.memory.keep(uid, [fact("I have a cat called Miso.")]))
    other_process = setup.another_process()
    assert texts(asyncio.run(other_process.search(uid, "cat", 5))) == ["I have a cat called Miso."]
    asyncio.run(setup.memory.keep(uid, [fact("My cat Miso is allergic to fish.")]))
    assert "My cat Miso is allergic to fish." in texts(asyncio.run(other_process.search(uid, "cat allergy", 5)))
    assert other_process.cache.builds == 1  # caught up, not rebuilt


def test_memory_off_keeps_nothing(setup: Setup) -> None:
    uid = setup.user("ada@example.com")
    asyncio.run(setup.memory.set_enabled(uid, False))
    with pytest.raises(MemoryOff):
        asyncio.run(setup.memory.keep(uid, [fact("I was born in Porto.")]))
    assert asyncio.run(setup.memory.keep(uid, [fact("I was born in Porto.")], check=False)) == []
    assert asyncio.run(setup.memory.page(uid, limit=10)) == []
    asyncio.run(setup.memory.set_enabled(uid, True))
    assert len(asyncio.run(setup.memory.keep(uid, [fact("I was born in Porto.")]))) == 1


def test_the_cache_stays_under_its_budget(setup: Setup) -> None:
    setup.memory.cache.budget_bytes = 1  # every index but the newest is evicted
    users = [setup.user(f"u{n}@example.com") for n in range(3)]
    for n, uid in enumerate(users):
        asyncio.run(setup.memory.keep(uid, [fact(f"User {n} likes number {n}.")]))
        assert texts(asyncio.run(setup.memory.search(uid, f"number {n}", 1))) == [f"User {n} likes number {n}."]
    assert len(setup.memory.cache._indexes) == 1
    assert texts(asyncio.run(setup.memory.search(users[0], "number 0", 1))) == ["User 0 likes number 0."]


def test_an_index_caught_up_twice_with_the_same_rows_holds_each_memory_once(setup: Setup) -> None:
    uid = setup.user("ada@example.com")
    asyncio.run(setup.memory.keep(uid, [fact("I keep bees."), fact("The hive is by the pear tree.")]))
    index = setup.memory.index_sync(uid)
    asyncio.run(setup.memory.keep(uid, [fact("The bees swarmed in June.")]))
    with setup.engine.connect() as conn:
        everything = setup.memory.store.changed_since(conn, uid, 0)  # two already indexed, one new
    index.apply(everything, index.version + 1)
    assert len(index) == 3
    assert sorted(texts(index.search(None, ["bees", "hive"], None, 10))) == [
        "I keep bees.", "The bees swarmed in June.", "The hive is by the pear tree."]
