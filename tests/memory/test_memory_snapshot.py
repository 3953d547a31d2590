"""A cold index loaded from its encrypted snapshot: the same results as a full build, what was
written after it seen, gone with every deletion, and refused when altered or moved."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest
from sqlalchemy import Engine, delete, select, update

from switchboard.cli.erasure import erase_user
from switchboard.core.config import MemoryConfig
from switchboard.crypto import KeyRing, MasterKeys
from switchboard.memory.index import Hit
from switchboard.memory.service import MemoryService, Remembered, now_ms
from switchboard.memory.snapshot import decode, encode
from switchboard.store.memory_schema import memory_snapshots
from tests.memory.conftest import Setup

SENTINEL = "marmot-obsidian-sentinel-4417"
CONFIG = MemoryConfig(snapshot_min_memories=1)
QUERIES = ["where did I go hiking?", "what is my sister called?", "cello", "what did Bo say?", SENTINEL]


@pytest.fixture
def setup(engine: Engine) -> Setup:
    keyring = KeyRing(engine, MasterKeys(os.urandom(32)))
    return Setup(engine, keyring, MemoryService(engine, keyring, CONFIG))


def process(setup: Setup, config: MemoryConfig = CONFIG) -> MemoryService:
    """A fresh server process: its own key ring and an empty index cache."""
    return MemoryService(setup.engine, KeyRing(setup.engine, setup.keyring.master), config,
                         embedder=setup.memory.embedder)


def history(secret: str = "") -> list[Remembered]:
    at = now_ms() - 86_400_000
    said = [("Guess where I went hiking yesterday!", "Ada"), ("Where?", "Bo"),
            ("Mount Teide, in Tenerife. The view was unreal.", "Ada"), ("My sister is called Ana.", "Ada"),
            ("Nice. I play the cello on Sundays.", "Bo")]
    items = [Remembered("message", text, at + n, {"role": "user", "name": name, "source_ids": [f"m{n}"],
                                                  "thread": "conv_a"}) for n, (text, name) in enumerate(said)]
    items.append(Remembered("fact", f"The spare key is under the {secret or 'doormat'}.", at + 10))
    return items


def results(hits: list[Hit]) -> list[tuple[list[str], list[str], float, float, bool]]:
    return [(h.source_ids, [e.text for e in h.entries], round(h.score, 9), round(h.similarity, 5), h.keyword)
            for h in hits]


def search_all(service: MemoryService, uid: int) -> list[list[tuple[list[str], list[str], float, float, bool]]]:
    return [results(asyncio.run(service.search(uid, q, 5))) for q in QUERIES]


def texts(service: MemoryService, uid: int, query: str) -> list[str]:
    return [e.text for h in asyncio.run(service.search(uid, query, 10)) for e in h.entries]


def snapshot_row(setup: Setup, uid: int) -> tuple[int, bytes] | None:
    with setup.engine.connect() as conn:
        row = conn.execute(select(memory_snapshots.c.version, memory_snapshots.c.snapshot_ct)
                           .where(memory_snapshots.c.user_id == uid)).first()
    return None if row is None else (int(row.version), bytes(row.snapshot_ct))


def test_a_cold_index_is_loaded_from_the_snapshot_with_the_results_of_a_full_build(setup: Setup) -> None:
    uid = setup.user("ada@example.com")
    asyncio.run(setup.memory.keep(uid, history()))
    built = search_all(setup.memory, uid)
    assert setup.memory.cache.builds == 1
    setup.memory.snapshots.flush()  # type: ignore[union-attr]
    assert setup.memory.snapshots.written == 1  # type: ignore[union-attr]
    assert snapshot_row(setup, uid) is not None
    other = process(setup)
    assert search_all(other, uid) == built
    assert (other.cache.thaws, other.cache.builds) == (1, 0)  # loaded, not rebuilt
    without = process(setup, MemoryConfig(snapshot_min_memories=0))
    assert search_all(without, uid) == built and without.cache.builds == 1


def test_what_was_written_after_the_snapshot_is_found(setup: Setup) -> None:
    uid = setup.user("ada@example.com")
    kept = asyncio.run(setup.memory.keep(uid, history()))
    asyncio.run(setup.memory.search(uid, "hiking", 5))
    setup.memory.snapshots.flush()  # type: ignore[union-attr]
    asyncio.run(setup.memory.keep(uid, [Remembered("fact", "My cat Miso is allergic to fish.", now_ms())]))
    asyncio.run(setup.memory.keep(uid, [Remembered("fact", "The spare key is now with the neighbour.", now_ms())],
                                  supersedes=[kept[-1].id]))
    other = process(setup)
    assert "My cat Miso is allergic to fish." in texts(other, uid, "cat allergy")
    found = texts(other, uid, "spare key")
    assert "The spare key is now with the neighbour." in found and "The spare key is under the doormat." not in found
    assert (other.cache.thaws, other.cache.builds) == (1, 0)


def test_a_snapshot_is_written_again_once_it_lags(setup: Setup) -> None:
    config = MemoryConfig(snapshot_min_memories=1, snapshot_refresh_memories=2)
    service = process(setup, config)
    uid = setup.user("ada@example.com")
    asyncio.run(service.keep(uid, history()))
    asyncio.run(service.search(uid, "hiking", 5))
    service.snapshots.flush()  # type: ignore[union-attr]
    first = snapshot_row(setup, uid)
    asyncio.run(service.keep(uid, [Remembered("fact", "I keep bees.", now_ms())]))
    asyncio.run(service.search(uid, "bees", 5))  # one behind: not yet
    service.snapshots.flush()  # type: ignore[union-attr]
    assert snapshot_row(setup, uid) == first
    asyncio.run(service.keep(uid, [Remembered("fact", "The hive is by the pear tree.", now_ms())]))
    asyncio.run(service.search(uid, "hive", 5))
    service.snapshots.flush()  # type: ignore[union-attr]
    second = snapshot_row(setup, uid)
    assert first is not None and second is not None and second[0] > first[0]
    other = process(setup, config)
    assert "The hive is by the pear tree." in texts(other, uid, "hive")
    assert (other.cache.thaws, other.cache.builds) == (1, 0)


@pytest.mark.parametrize("how", ["one", "all"])
def test_forget_deletes_the_snapshot_in_the_same_transaction(tmp_path: Path, setup: Setup, how: str) -> None:
    uid = setup.user("ada@example.com")
    kept = asyncio.run(setup.memory.keep(uid, history(SENTINEL)))
    assert texts(setup.memory, uid, SENTINEL)[0].endswith(f"{SENTINEL}.")
    setup.memory.snapshots.flush()  # type: ignore[union-attr]
    assert snapshot_row(setup, uid) is not None
    if how == "one":
        asyncio.run(setup.memory.forget(uid, kept[-1].uid))
    else:
        asyncio.run(setup.memory.forget_all(uid))
    assert snapshot_row(setup, uid) is None  # at once: not left for a writer to clean up
    other = process(setup)
    assert all(SENTINEL not in t for t in texts(other, uid, SENTINEL))
    assert other.cache.thaws == 0
    for service in (setup.memory, other):
        service.snapshots.flush()  # type: ignore[union-attr]
    row = snapshot_row(setup, uid)
    if row is not None:  # rebuilt without it
        version, sealed = row
        frozen = decode(other.store.open_snapshot(uid, version, sealed), uid, version)
        assert all(SENTINEL not in e.text for e in frozen.entries if e is not None)
    if setup.engine.dialect.name == "sqlite":
        setup.engine.dispose()
        files = [p for p in tmp_path.rglob("*") if p.is_file() and p.name.startswith("switchboard.db")]
        assert files and all(SENTINEL.encode() not in p.read_bytes() for p in files)


def test_deleting_the_user_deletes_their_snapshot(setup: Setup) -> None:
    uid = setup.user("ada@example.com")
    asyncio.run(setup.memory.keep(uid, history(SENTINEL)))
    asyncio.run(setup.memory.search(uid, SENTINEL, 5))
    setup.memory.snapshots.flush()  # type: ignore[union-attr]
    assert snapshot_row(setup, uid) is not None
    with setup.engine.begin() as conn:
        erase_user(conn, setup.keyring, uid)
    assert snapshot_row(setup, uid) is None


def test_a_snapshot_frozen_before_a_deletion_is_never_kept(setup: Setup) -> None:
    uid = setup.user("ada@example.com")
    kept = asyncio.run(setup.memory.keep(uid, history(SENTINEL)))
    index = setup.memory.index_sync(uid)
    with index.lock:
        frozen = index.freeze()  # as a writer that is late: the deletion commits first
    setup.memory.snapshots.flush()  # type: ignore[union-attr]
    asyncio.run(setup.memory.forget(uid, kept[-1].uid))
    setup.memory.snapshots.save(frozen)  # type: ignore[union-attr]
    setup.memory.snapshots.flush()  # type: ignore[union-attr]
    assert snapshot_row(setup, uid) is None


def test_a_deletion_waits_for_a_snapshot_being_written_and_deletes_it(setup: Setup) -> None:
    uid = setup.user("ada@example.com")
    kept = asyncio.run(setup.memory.keep(uid, history(SENTINEL)))
    index = setup.memory.index_sync(uid)
    setup.memory.snapshots.flush()  # type: ignore[union-attr]
    with setup.engine.begin() as conn:
        conn.execute(delete(memory_snapshots))
    with index.lock:
        frozen = index.freeze()
    sealed = setup.memory.store.seal_snapshot(uid, frozen.version, encode(frozen))
    forgotten = threading.Event()

    def forget() -> None:
        asyncio.run(setup.memory.forget(uid, kept[-1].uid))
        forgotten.set()

    with setup.engine.connect() as conn:
        writing = conn.begin()  # a writer's transaction, not yet committed when the deletion starts
        assert setup.memory.store.save_snapshot(conn, uid, frozen.version, sealed, now_ms())
        deleting = threading.Thread(target=forget)
        deleting.start()
        assert not forgotten.wait(0.5)  # it waits for the writer's lock on the user's memory row
        writing.commit()
    deleting.join(30)
    assert forgotten.is_set()
    assert snapshot_row(setup, uid) is None


@pytest.mark.parametrize("damage", ["moved from another user", "altered", "version changed"])
def test_an_altered_or_moved_snapshot_is_dropped_and_the_index_built(setup: Setup, damage: str) -> None:
    alice, mallory = setup.user("alice@example.com"), setup.user("mallory@example.com")
    asyncio.run(setup.memory.keep(alice, history(SENTINEL)))
    asyncio.run(setup.memory.keep(mallory, [Remembered("fact", "Mallory likes chess.", now_ms())]))
    for uid in (alice, mallory):
        asyncio.run(setup.memory.search(uid, "key", 5))
    setup.memory.snapshots.flush()  # type: ignore[union-attr]
    alices, mallorys = snapshot_row(setup, alice), snapshot_row(setup, mallory)
    assert alices is not None and mallorys is not None
    if damage == "moved from another user":
        values = {"version": alices[0], "snapshot_ct": alices[1]}
    elif damage == "altered":
        blob = bytearray(mallorys[1])
        blob[len(blob) // 2] ^= 1
        values = {"snapshot_ct": bytes(blob)}
    else:
        values = {"version": mallorys[0] + 1}
    with setup.engine.begin() as conn:
        conn.execute(update(memory_snapshots).where(memory_snapshots.c.user_id == mallory).values(**values))
    other = process(setup)
    for query in (SENTINEL, "spare key", "hiking", "chess"):
        assert all(t == "Mallory likes chess." for t in texts(other, mallory, query)), query
    assert (other.cache.thaws, other.cache.builds) == (0, 1)
    other.snapshots.flush()  # type: ignore[union-attr]
    row = snapshot_row(setup, mallory)  # the damaged one dropped, a good one kept in its place
    assert row is not None
    frozen = decode(other.store.open_snapshot(mallory, row[0], row[1]), mallory, row[0])
    assert [e.text for e in frozen.entries if e is not None] == ["Mallory likes chess."]


def test_a_snapshot_that_decrypts_but_does_not_parse_is_dropped(setup: Setup) -> None:
    uid = setup.user("ada@example.com")
    asyncio.run(setup.memory.keep(uid, history()))
    asyncio.run(setup.memory.search(uid, "hiking", 5))
    setup.memory.snapshots.flush()  # type: ignore[union-attr]
    row = snapshot_row(setup, uid)
    assert row is not None
    garbage = setup.memory.store.seal_snapshot(uid, row[0], b"SBMEMIX1" + b"\xff" * 64)  # sealed right, not a snapshot
    with setup.engine.begin() as conn:
        conn.execute(update(memory_snapshots).where(memory_snapshots.c.user_id == uid).values(snapshot_ct=garbage))
    other = process(setup)
    assert "Mount Teide, in Tenerife. The view was unreal." in texts(other, uid, "where did I go hiking?")
    assert (other.cache.thaws, other.cache.builds) == (0, 1)
    other.snapshots.flush()  # type: ignore[union-attr]
    assert snapshot_row(setup, uid) not in (None, (row[0], garbage))

