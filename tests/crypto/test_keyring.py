"""Envelope encryption (switchboard.crypto) on SQLite and PostgreSQL: AES-256-GCM under a data
key per user, bound to user, table, row and field; the master key rotates by re-wrapping."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert, select, update

from switchboard.crypto import Binding, CryptoError, DecryptionFailed, KeyRing, master_key_usage
from switchboard.crypto.master import MasterKeys, load_key_file, load_master_keys, rotate_key_file
from switchboard.store.schema import data_keys, users

SECRET = b"the user's private words"


def add_users(engine: Engine, *ids: int) -> None:
    with engine.begin() as conn:
        for uid in ids:
            conn.execute(insert(users).values(id=uid, email=f"u{uid}@example.com", plan="free", created_ms=1))


@pytest.fixture
def ring(engine: Engine, tmp_path: Path) -> KeyRing:
    add_users(engine, 1, 2, 3)
    return KeyRing(engine, load_key_file(tmp_path / "keys" / "master.key"))


def test_round_trip_with_a_data_key_per_user(ring: KeyRing, engine: Engine) -> None:
    where = Binding(1, "notes", 10, "body")
    blob = ring.encrypt(where, SECRET)
    assert SECRET not in blob and ring.decrypt(where, blob) == SECRET
    assert ring.encrypt(where, SECRET) != blob  # a fresh nonce each time
    ring.encrypt(Binding(2, "notes", 11, "body"), SECRET)
    with engine.connect() as conn:
        rows = conn.execute(select(data_keys.c.user_id, data_keys.c.wrapped_key)).all()
    assert sorted(r.user_id for r in rows) == [1, 2]  # made on first use, one per user
    assert len({bytes(r.wrapped_key) for r in rows}) == 2
    # Another process (a fresh key ring, same master key) reads it.
    assert KeyRing(engine, ring.master).decrypt(where, blob) == SECRET


def test_any_altered_byte_is_detected(ring: KeyRing) -> None:
    where = Binding(1, "notes", 10, "body")
    blob = ring.encrypt(where, SECRET)
    for i in range(len(blob)):
        tampered = bytearray(blob)
        tampered[i] ^= 0x01
        with pytest.raises(DecryptionFailed):
            ring.decrypt(where, bytes(tampered))
    with pytest.raises(DecryptionFailed):
        ring.decrypt(where, blob[:20])


@pytest.mark.parametrize("elsewhere", [
    Binding(1, "notes", 11, "body"),  # another row
    Binding(1, "notes", 10, "title"),  # another field
    Binding(1, "memories", 10, "body"),  # another table
    Binding(2, "notes", 10, "body"),  # another user
])
def test_a_ciphertext_moved_elsewhere_does_not_decrypt(ring: KeyRing, elsewhere: Binding) -> None:
    blob = ring.encrypt(Binding(1, "notes", 10, "body"), SECRET)
    with pytest.raises(DecryptionFailed):
        ring.decrypt(elsewhere, blob)
    fine = ring.encrypt(Binding(elsewhere.user_id, elsewhere.table, 9, elsewhere.field), b"fine")
    with pytest.raises(DecryptionFailed, match=f"row {elsewhere.row}"):  # in a batch, too, naming the row
        ring.decrypt_many(elsewhere.user_id, elsewhere.table, elsewhere.field, [(9, fine), (elsewhere.row, blob)])


def test_a_batch_decrypts_what_single_decrypts_do(ring: KeyRing) -> None:
    values = [(f"mem_{n}", ring.encrypt(Binding(1, "memories", f"mem_{n}", "text"), b"value %d" % n)) for n in range(5)]
    assert ring.decrypt_many(1, "memories", "text", values) == [b"value %d" % n for n in range(5)]
    assert ring.decrypt_many(1, "memories", "text", []) == []


def test_a_wrapped_data_key_moved_to_another_user_does_not_unwrap(ring: KeyRing, engine: Engine) -> None:
    ring.encrypt(Binding(1, "notes", 1, "body"), SECRET)
    ring.encrypt(Binding(2, "notes", 2, "body"), SECRET)
    with engine.begin() as conn:
        stolen = conn.execute(select(data_keys.c.wrapped_key).where(data_keys.c.user_id == 1)).scalar_one()
        conn.execute(update(data_keys).where(data_keys.c.user_id == 2).values(wrapped_key=stolen))
    with pytest.raises(DecryptionFailed):
        KeyRing(engine, ring.master).encrypt(Binding(2, "notes", 2, "body"), SECRET)


def test_another_master_key_cannot_read(ring: KeyRing, engine: Engine) -> None:
    where = Binding(1, "notes", 1, "body")
    blob = ring.encrypt(where, SECRET)
    with pytest.raises(CryptoError, match="not configured"):
        KeyRing(engine, MasterKeys(os.urandom(32))).decrypt(where, blob)


def test_rotating_the_master_key_rewraps_data_keys_only(ring: KeyRing, engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "keys" / "master.key"
    blobs = {uid: ring.encrypt(Binding(uid, "notes", uid, "body"), SECRET + bytes([uid])) for uid in (1, 2, 3)}
    old = ring.master.current.id
    with engine.connect() as conn:
        assert master_key_usage(conn) == {old: 3}
    rotated = KeyRing(engine, rotate_key_file(path))
    new = rotated.master.current.id
    assert new != old and rotated.rewrap() == 3 and rotated.rewrap() == 0
    with engine.connect() as conn:
        assert master_key_usage(conn) == {new: 3}
    # The data was not re-encrypted, and the new master key alone reads it.
    only_new = KeyRing(engine, MasterKeys(rotated.master.current.key))
    for uid, blob in blobs.items():
        assert only_new.decrypt(Binding(uid, "notes", uid, "body"), blob) == SECRET + bytes([uid])
    # A server started before the rotation (old key in memory, cold cache) reads the file again.
    running = KeyRing(engine, ring.master)
    assert running.decrypt(Binding(1, "notes", 1, "body"), blobs[1]) == SECRET + b"\x01"
    assert running.master.current.id == new  # and wraps new data keys with the new key
    add_users(engine, 4)
    running.encrypt(Binding(4, "notes", 4, "body"), SECRET)
    with engine.connect() as conn:
        assert master_key_usage(conn) == {new: 4}


def test_master_keys_from_the_environment(tmp_path: Path) -> None:
    new, old = os.urandom(32), os.urandom(32)
    env = {"SWITCHBOARD_MASTER_KEY": base64.b64encode(new).decode(),
           "SWITCHBOARD_MASTER_KEY_PREVIOUS": base64.b64encode(old).decode()}
    keys = load_master_keys(env=env, key_file=tmp_path / "unused.key")
    assert keys.current.key == new and len(keys.ids) == 2 and keys.key_file is None
    assert not (tmp_path / "unused.key").exists()
    assert "key=" not in repr(keys.current)  # never printed
    for bad in ("not base64!", base64.b64encode(b"short").decode()):
        with pytest.raises(CryptoError, match="SWITCHBOARD_MASTER_KEY"):
            load_master_keys(env={"SWITCHBOARD_MASTER_KEY": bad}, key_file=tmp_path / "unused.key")


def test_the_key_file_is_private_and_made_once(tmp_path: Path) -> None:
    path = tmp_path / "data" / "master.key"
    first = load_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_key_file(path).current.id == first.current.id  # a second process reads the same key
    assert [p.name for p in path.parent.iterdir()] == ["master.key"]  # no temporary files left
    rotate_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_unwrapped_keys_in_memory_are_bounded(engine: Engine, tmp_path: Path) -> None:
    add_users(engine, *range(1, 7))
    ring = KeyRing(engine, load_key_file(tmp_path / "master.key"), cache_size=2)
    blobs = {uid: ring.encrypt(Binding(uid, "t", 1, "f"), SECRET) for uid in range(1, 7)}
    assert len(ring._by_id) == 2 and len(ring._by_user) == 2
    for uid, blob in blobs.items():  # evicted keys are loaded again
        assert ring.decrypt(Binding(uid, "t", 1, "f"), blob) == SECRET
