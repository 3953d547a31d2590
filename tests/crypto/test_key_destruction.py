"""Destroying a user's data key (`KeyRing.destroy`, for `switchboard users delete`): what was
encrypted under it can never be read again, no new key is made for the user, and a process that
had the key in memory stops using it once it checks it again."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert, select

from switchboard.crypto import Binding, KeyRing, master_key_usage
from switchboard.crypto.keyring import DESTROYED, KeyDestroyed, destroyed_keys
from switchboard.crypto.master import load_key_file, rotate_key_file
from switchboard.store.schema import data_keys, users

SECRET = b"what only the user may read"
WHERE = Binding(1, "notes", 10, "body")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ring(engine: Engine, tmp_path: Path) -> KeyRing:
    with engine.begin() as conn:
        for uid in (1, 2):
            conn.execute(insert(users).values(id=uid, email=f"u{uid}@example.com", plan="free", created_ms=1))
    return KeyRing(engine, load_key_file(tmp_path / "keys" / "master.key"))


def test_destroyed_key_reads_nothing_and_no_new_key_is_made(ring: KeyRing, engine: Engine) -> None:
    blob = ring.encrypt(WHERE, SECRET)
    other = ring.encrypt(Binding(2, "notes", 11, "body"), SECRET)
    with engine.begin() as conn:
        assert ring.destroy(conn, 1) is True
        assert ring.destroy(conn, 1) is False  # already destroyed
    with engine.connect() as conn:
        row = conn.execute(select(data_keys).where(data_keys.c.user_id == 1)).one()
        assert bytes(row.wrapped_key) == b"" and row.master_key_id == DESTROYED
        assert ring.destroyed(conn, 1) and not ring.destroyed(conn, 2)
        assert destroyed_keys(conn) == 1 and master_key_usage(conn) == {ring.master.current.id: 1}
    with pytest.raises(KeyDestroyed):
        ring.decrypt(WHERE, blob)
    with pytest.raises(KeyDestroyed):  # never a fresh key for a deleted user
        ring.encrypt(WHERE, SECRET)
    with pytest.raises(KeyDestroyed):  # nor in a fresh process with the same master key
        KeyRing(engine, ring.master).decrypt(WHERE, blob)
    assert ring.decrypt(Binding(2, "notes", 11, "body"), other) == SECRET  # others untouched


def test_a_user_without_a_key_gets_a_tombstone(ring: KeyRing, engine: Engine) -> None:
    with engine.begin() as conn:
        assert ring.destroy(conn, 2) is False
    with pytest.raises(KeyDestroyed):
        ring.encrypt(Binding(2, "notes", 1, "body"), SECRET)


def test_another_process_stops_using_the_key_once_it_checks_it(ring: KeyRing, engine: Engine) -> None:
    clock = Clock()
    server = KeyRing(engine, ring.master, verify_after_s=30, monotonic=clock)
    blob = server.encrypt(WHERE, SECRET)
    with engine.begin() as conn:
        ring.destroy(conn, 1)  # the CLI, another process
    assert server.cached(1) and server.decrypt(WHERE, blob) == SECRET  # still in its memory...
    clock.now += 31
    assert not server.cached(1)  # ...due for a check: `prepare` reads the row again
    with pytest.raises(KeyDestroyed):
        asyncio.run(server.prepare(1))
    assert not server.cached(1) and 1 not in server._by_user
    # Even without `prepare`, encrypting checks a key older than twice the interval itself.
    again = KeyRing(engine, ring.master, verify_after_s=30, monotonic=clock)
    with engine.begin() as conn:
        conn.execute(insert(users).values(id=3, email="u3@example.com", plan="free", created_ms=1))
    again.encrypt(Binding(3, "notes", 1, "body"), SECRET)
    with engine.begin() as conn:
        ring.destroy(conn, 3)
    clock.now += 45
    again.encrypt(Binding(3, "notes", 1, "body"), SECRET)  # within twice the interval: no I/O
    clock.now += 20
    with pytest.raises(KeyDestroyed):
        again.encrypt(Binding(3, "notes", 1, "body"), SECRET)


def test_unused_keys_leave_memory_after_twice_the_interval(ring: KeyRing, engine: Engine) -> None:
    clock = Clock()
    server = KeyRing(engine, ring.master, verify_after_s=30, monotonic=clock)
    server.encrypt(WHERE, SECRET)
    clock.now += 61
    server.encrypt(Binding(2, "notes", 1, "body"), SECRET)  # any miss sweeps
    assert 1 not in server._by_user and len(server._by_id) == 1


def test_rotation_skips_destroyed_keys(ring: KeyRing, engine: Engine, tmp_path: Path) -> None:
    ring.encrypt(WHERE, SECRET)
    ring.encrypt(Binding(2, "notes", 1, "body"), SECRET)
    with engine.begin() as conn:
        ring.destroy(conn, 1)
    ring.master = rotate_key_file(tmp_path / "keys" / "master.key")
    assert ring.rewrap() == 1
    with engine.connect() as conn:
        assert master_key_usage(conn) == {ring.master.current.id: 1} and destroyed_keys(conn) == 1
