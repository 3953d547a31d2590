"""Envelope encryption of user content: AES-256-GCM under a data key per user.

    ciphertext = 0x01 | data key id (8 bytes, big-endian) | nonce (12 bytes) | AES-GCM(data, tag)

Each user's data key is random, made on first use, and stored in `data_keys` wrapped by the
master key (`crypto.master`); unwrapped keys are kept in memory, up to a bound, and checked
against the database again after `verify_after_s`. The associated
data of every ciphertext is its header plus a `Binding` (user, table, row, field): a value
copied to another row, field or user's record does not decrypt, and neither does one altered
by a single bit. Rotating the master key re-wraps the data keys (`KeyRing.rewrap`); no
ciphertext is touched. Destroying a user's data key (`KeyRing.destroy`, when the user is
deleted) leaves a tombstone in its row: whatever was encrypted under it can never be read
again, and no new key is ever made for that user. Other processes that hold the key in memory
stop using it when they next check it (`verify_after_s`), within a minute by default.

One module for all user content at rest: idempotent replays now, the assistant's
conversations and memories next.
"""

from __future__ import annotations

import asyncio
import os
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Connection, Engine, func, select, update

from switchboard.crypto.master import KEY_BYTES, NONCE_BYTES, CryptoError, DecryptionFailed, MasterKeys
from switchboard.store.conflict import insert_or_ignore
from switchboard.store.schema import data_keys

VERSION = 1
DESTROYED = "destroyed"  # master_key_id of a destroyed data key's row (wrapped_key then empty)
VERIFY_AFTER_S = 30.0  # a cached data key is checked against the database again after this
_HEADER = struct.Struct(">BQ")  # version, data key id
_CONTEXT = b"switchboard/v1"


@dataclass(frozen=True, slots=True)
class Binding:
    """Where a ciphertext belongs; part of its associated data."""

    user_id: int
    table: str
    row: int | str
    field: str

    def aad(self, header: bytes) -> bytes:
        return b"\x00".join((_CONTEXT, header, str(self.user_id).encode(), self.table.encode(),
                             str(self.row).encode(), self.field.encode()))


class KeyDestroyed(CryptoError):
    """The user's data key was destroyed (the user was deleted): nothing of theirs can be
    encrypted or decrypted any more."""


@dataclass(frozen=True, slots=True)
class _DataKey:
    id: int
    user_id: int
    aead: AESGCM
    checked: float  # time.monotonic() when the database last confirmed this key


class KeyRing:
    """Encrypts and decrypts user content. Thread-safe; database work only on a cache miss
    (the user's first use in this process), in a short transaction of its own that is committed
    before the key is used, so that nothing is ever encrypted under a key that was not saved.

    A cached key is trusted for `verify_after_s`; then `prepare` (off the event loop) reads its
    row again, one small indexed SELECT per user and interval, which is how a key destroyed by
    another process (`destroy`) stops being used here. Encrypting and decrypting accept a key
    up to twice that old without I/O, so that the moment between `prepare` and the work it
    prepared for never blocks; past that they check it themselves."""

    def __init__(self, engine: Engine, master: MasterKeys, *, cache_size: int = 10_000,
                 clock: Callable[[], float] = time.time, verify_after_s: float = VERIFY_AFTER_S,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.master = master
        self.cache_size = cache_size
        self.verify_after_s = verify_after_s
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._by_id: OrderedDict[int, _DataKey] = OrderedDict()  # least recently used first
        self._by_user: dict[int, int] = {}
        self._swept = monotonic()

    # -- data keys --------------------------------------------------------------------------
    def _cached(self, user_id: int, max_age_s: float) -> _DataKey | None:
        with self._lock:
            dek_id = self._by_user.get(user_id)
            if dek_id is None:
                return None
            key = self._by_id[dek_id]
            if self._monotonic() - key.checked > max_age_s:
                return None  # due for a check against the database
            self._by_id.move_to_end(dek_id)
            return key

    def _remember(self, key: _DataKey) -> _DataKey:
        with self._lock:
            self._by_id[key.id] = key
            self._by_id.move_to_end(key.id)
            self._by_user[key.user_id] = key.id
            while len(self._by_id) > self.cache_size:
                _, old = self._by_id.popitem(last=False)
                if self._by_user.get(old.user_id) == old.id:
                    del self._by_user[old.user_id]
            self._sweep()
        return key

    def _sweep(self) -> None:
        """Drop keys not checked for twice `verify_after_s` (unusable until checked again), at
        most once per that interval (under the lock): a key destroyed elsewhere does not stay in
        memory."""
        now = self._monotonic()
        if now - self._swept < self.verify_after_s:
            return
        self._swept = now
        for old in [k for k in self._by_id.values() if now - k.checked > 2 * self.verify_after_s]:
            self._drop(old.user_id)

    def _drop(self, user_id: int) -> None:
        dek_id = self._by_user.pop(user_id, None)
        if dek_id is not None:
            self._by_id.pop(dek_id, None)

    def forget(self, user_id: int) -> None:
        """Drop the user's data key from this process's memory."""
        with self._lock:
            self._drop(user_id)

    def cached(self, user_id: int) -> bool:
        """Whether `user_id`'s data key is in memory and recently checked (encrypting then does
        no I/O)."""
        return self._cached(user_id, self.verify_after_s) is not None

    def data_key(self, user_id: int, *, max_age_s: float | None = None) -> _DataKey:
        """The user's data key, made and saved on first use; KeyDestroyed once destroyed. A
        cached key is used if the database confirmed it within `max_age_s` (default: twice
        `verify_after_s`), else its row is read again."""
        key = self._cached(user_id, 2 * self.verify_after_s if max_age_s is None else max_age_s)
        if key is not None:
            return key
        with self.engine.begin() as conn:
            row = conn.execute(select(data_keys.c.id, data_keys.c.wrapped_key, data_keys.c.master_key_id)
                               .where(data_keys.c.user_id == user_id)).first()
            if row is None:
                kid, wrapped = self.master.wrap(os.urandom(KEY_BYTES), user_id)
                insert_or_ignore(conn, data_keys, dict(user_id=user_id, wrapped_key=wrapped, master_key_id=kid,
                                                       created_ms=int(self._clock() * 1000)), on=["user_id"])
                row = conn.execute(select(data_keys.c.id, data_keys.c.wrapped_key, data_keys.c.master_key_id)
                                   .where(data_keys.c.user_id == user_id)).one()
        if row.master_key_id == DESTROYED:
            self.forget(user_id)
            raise KeyDestroyed(f"the data key of user {user_id} was destroyed (the user was deleted): "
                               f"their content can no longer be read or written")
        with self._lock:  # still the key we have: confirmed, no need to unwrap it again
            known = self._by_id.get(int(row.id))
        if known is not None and known.user_id == user_id:
            return self._remember(replace(known, checked=self._monotonic()))
        plain = self.master.unwrap(row.master_key_id, bytes(row.wrapped_key), user_id)
        return self._remember(_DataKey(int(row.id), user_id, AESGCM(plain), self._monotonic()))

    def destroy(self, conn: Connection, user_id: int) -> bool:
        """Destroy the user's data key in the caller's transaction: its wrapped copy is replaced
        by a tombstone (empty key, `master_key_id` DESTROYED), so that what was encrypted under
        it can never be decrypted, and no new key is ever made for the user. Whether there was a
        key. This process forgets the key at once; others within 2 x `verify_after_s`."""
        at = int(self._clock() * 1000)
        destroyed = conn.execute(update(data_keys).where(data_keys.c.user_id == user_id,
                                                         data_keys.c.master_key_id != DESTROYED)
                                 .values(wrapped_key=b"", master_key_id=DESTROYED, rewrapped_ms=at)).rowcount
        insert_or_ignore(conn, data_keys, dict(user_id=user_id, wrapped_key=b"", master_key_id=DESTROYED,
                                               created_ms=at, rewrapped_ms=at), on=["user_id"])
        self.forget(user_id)
        return destroyed == 1

    def destroyed(self, conn: Connection, user_id: int) -> bool:
        """Whether the user's data key was destroyed."""
        kid = conn.execute(select(data_keys.c.master_key_id).where(data_keys.c.user_id == user_id)).scalar()
        return kid == DESTROYED

    async def prepare(self, user_id: int) -> None:
        """Load (or make) the user's data key off the event loop if it is not in memory yet, or
        check it against the database if it is due (KeyDestroyed once destroyed)."""
        if not self.cached(user_id):
            await asyncio.to_thread(self.data_key, user_id, max_age_s=self.verify_after_s)

    # -- values -----------------------------------------------------------------------------
    def encrypt(self, binding: Binding, plaintext: bytes) -> bytes:
        key = self.data_key(binding.user_id)
        header = _HEADER.pack(VERSION, key.id)
        nonce = os.urandom(NONCE_BYTES)
        return header + nonce + key.aead.encrypt(nonce, plaintext, binding.aad(header))

    def decrypt(self, binding: Binding, blob: bytes) -> bytes:
        blob = bytes(blob)
        if len(blob) < _HEADER.size + NONCE_BYTES + 16:
            raise DecryptionFailed("ciphertext too short")
        header = blob[:_HEADER.size]
        version, dek_id = _HEADER.unpack(header)
        if version != VERSION:
            raise DecryptionFailed(f"unknown ciphertext version {version}")
        key = self.data_key(binding.user_id)
        if key.id != dek_id:  # written under another user's key (or a key this user no longer has)
            raise DecryptionFailed(f"ciphertext is not under the data key of user {binding.user_id}")
        nonce = blob[_HEADER.size:_HEADER.size + NONCE_BYTES]
        try:
            return key.aead.decrypt(nonce, blob[_HEADER.size + NONCE_BYTES:], binding.aad(header))
        except InvalidTag:
            raise DecryptionFailed(f"ciphertext for {binding.table}.{binding.field} of row {binding.row} "
                                   f"does not authenticate (altered, or moved from elsewhere)") from None

    def decrypt_many(self, user_id: int, table: str, field: str,
                     values: Sequence[tuple[int | str, bytes]]) -> list[bytes]:
        """`decrypt` of one field of many rows of one user's table: (row, ciphertext) pairs to
        plaintexts, in order. The same checks, associated data and failure (DecryptionFailed
        naming the row) as one `decrypt` per value, with the key looked up and the associated
        data's fixed part built once: a cold index decrypts tens of thousands of values, and
        the per-value bookkeeping of `decrypt` cost more than AES-GCM itself."""
        key = self.data_key(user_id)
        header = _HEADER.pack(VERSION, key.id)
        head, start = _HEADER.size, _HEADER.size + NONCE_BYTES
        suffix = b"\x00" + field.encode()
        prefix = Binding(user_id, table, "", field).aad(header)[:-len(suffix)]  # the row goes between them
        blobs = [bytes(blob) for _, blob in values]
        if blobs and (min(map(len, blobs)) < start + 16 or {blob[:head] for blob in blobs} != {header}):
            row = next(row for (row, _), blob in zip(values, blobs) if len(blob) < start + 16 or blob[:head] != header)
            raise DecryptionFailed(f"ciphertext for {table}.{field} of row {row} is not under the data key of "
                                   f"user {user_id} (or too short)")
        aads = [prefix + str(row).encode() + suffix for row, _ in values]
        try:  # the loop in C (map), and the row that failed looked for only when one did
            return list(map(key.aead.decrypt, [b[head:start] for b in blobs], [b[start:] for b in blobs], aads))
        except InvalidTag:
            for (row, _), blob, aad in zip(values, blobs, aads):
                try:
                    key.aead.decrypt(blob[head:start], blob[start:], aad)
                except InvalidTag:
                    raise DecryptionFailed(f"ciphertext for {table}.{field} of row {row} does not authenticate "
                                           f"(altered, or moved from elsewhere)") from None
            raise DecryptionFailed(f"a ciphertext for {table}.{field} does not authenticate") from None

    # -- master key rotation ----------------------------------------------------------------
    def rewrap(self, *, batch: int = 500) -> int:
        """Re-wrap every data key not under the current master key with it; the number re-wrapped.
        Each data key is read, unwrapped with its old master key and written back in one
        transaction, guarded by its old key id, so a concurrent run does no harm."""
        current = self.master.current.id
        done = 0
        last_id = 0
        while True:
            with self.engine.begin() as conn:
                rows = conn.execute(
                    select(data_keys.c.id, data_keys.c.user_id, data_keys.c.wrapped_key, data_keys.c.master_key_id)
                    .where(data_keys.c.master_key_id != current, data_keys.c.master_key_id != DESTROYED,
                           data_keys.c.id > last_id)
                    .order_by(data_keys.c.id).limit(batch)
                ).all()
                if not rows:
                    return done
                now = int(self._clock() * 1000)
                for row in rows:
                    plain = self.master.unwrap(row.master_key_id, bytes(row.wrapped_key), int(row.user_id))
                    kid, wrapped = self.master.wrap(plain, int(row.user_id))
                    result = conn.execute(update(data_keys).where(data_keys.c.id == row.id,
                                                                  data_keys.c.master_key_id == row.master_key_id)
                                          .values(wrapped_key=wrapped, master_key_id=kid, rewrapped_ms=now))
                    done += result.rowcount
                last_id = rows[-1].id


def master_key_usage(conn: Connection) -> dict[str, int]:
    """How many data keys each master key id wraps (destroyed keys are wrapped by none)."""
    rows = conn.execute(select(data_keys.c.master_key_id, func.count())
                        .where(data_keys.c.master_key_id != DESTROYED).group_by(data_keys.c.master_key_id)).all()
    return {kid: int(n) for kid, n in rows}


def destroyed_keys(conn: Connection) -> int:
    """How many users' data keys were destroyed."""
    return int(conn.execute(select(func.count()).select_from(data_keys)
                            .where(data_keys.c.master_key_id == DESTROYED)).scalar_one())


__all__ = ["DESTROYED", "Binding", "CryptoError", "DecryptionFailed", "KeyDestroyed", "KeyRing", "destroyed_keys",
           "master_key_usage"]
