"""Memories in the database, encrypted (store.memory_schema, switchboard.crypto).

Every read and write is scoped by user: another user's memory id is "not found", exactly like
one that does not exist. A memory's text, embedding and metadata are each encrypted under the
user's data key and bound to (user, "memories", uid, field): a ciphertext moved to another row,
field or user does not decrypt (`MemoryUnreadable`, never another row's content).

Every write bumps the user's memory version in the same transaction and stamps the rows it
touched with it (`rev`), so that an index cached by any process can catch up with one indexed
query (memory.index). Facts are only added: a correction or a contradiction marks the older
fact superseded (kept, with when it was valid and what replaced it). Deleting removes rows for
good and marks the version a reset (caches rebuild), and deletes the user's index snapshot
(memory.snapshot) in the same transaction: what is forgotten does not outlive its row inside a
snapshot. Functions take a Connection and run in the caller's transaction; they do blocking I/O
and are called from worker threads.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import Connection, and_, delete, func, or_, select, update

from switchboard.core.errors import NotFound, SwitchboardError
from switchboard.crypto import Binding, CryptoError, KeyRing
from switchboard.memory.embedder import DIMENSIONS
from switchboard.store.conflict import insert_or_ignore
from switchboard.store.memory_schema import memories, memory_snapshots, memory_users

log = logging.getLogger(__name__)

TABLE = "memories"
SNAPSHOTS = "memory_snapshots"
SNAPSHOT_FIELD = "index"
KINDS = ("message", "fact")


class MemoryUnreadable(SwitchboardError):
    """A stored memory that does not decrypt: altered, or moved from another row or user."""

    status = 500
    type = "server_error"
    code = "content_unreadable"


def new_memory_uid() -> str:
    return f"mem_{secrets.token_hex(12)}"


@dataclass(slots=True)
class NewMemory:
    kind: str  # message | fact
    text: str
    embedding: np.ndarray  # (DIMENSIONS,) float32, unit length
    created_ms: int
    meta: dict[str, Any] = field(default_factory=dict)  # role, name, source_ids, sources, thread, origin


@dataclass(slots=True)
class Memory:
    id: int
    uid: str
    user_id: int
    kind: str
    status: str
    text: str
    meta: dict[str, Any]
    created_ms: int
    superseded_ms: int | None
    superseded_by: int | None
    rev: int

    @property
    def source_ids(self) -> list[str]:
        return list(self.meta.get("source_ids") or ())

    @property
    def thread(self) -> str | None:
        return self.meta.get("thread")


@dataclass(slots=True)
class Changed:
    """Memories written after a version, as an index takes them in (`MemoryStore.changed_since`):
    the ids of those no longer active (only removed from an index, never decrypted), and the
    active ones decrypted, column by column in id order, the embeddings as one matrix."""

    gone: list[int]
    ids: list[int]
    uids: list[str]
    kinds: list[str]
    created_ms: list[int]
    texts: list[str]
    metas: list[dict[str, Any]]
    embeddings: np.ndarray  # (len(ids), DIMENSIONS) float16, as stored (the index widens them as it copies)


@dataclass(frozen=True, slots=True)
class MemoryState:
    enabled: bool
    version: int
    reset_version: int


class MemoryStore:
    """Reads and writes memories for one key ring."""

    def __init__(self, keyring: KeyRing) -> None:
        self.keyring = keyring

    # -- encryption -------------------------------------------------------------------------
    def _seal(self, user_id: int, uid: str, name: str, value: bytes) -> bytes:
        return self.keyring.encrypt(Binding(user_id, TABLE, uid, name), value)

    def _open(self, user_id: int, uid: str, name: str, blob: bytes) -> bytes:
        try:
            return self.keyring.decrypt(Binding(user_id, TABLE, uid, name), bytes(blob))
        except CryptoError as exc:
            log.error("stored memory %s (%s) does not decrypt: %s", uid, name, exc)
            raise MemoryUnreadable(f"The stored {name} of memory {uid} cannot be decrypted: it was altered or "
                                   f"damaged in storage. Nothing of it can be shown.") from None

    def _memory(self, row: Any) -> Memory:
        user_id, uid = int(row.user_id), row.uid
        return Memory(
            int(row.id), uid, user_id, row.kind, row.status, self._open(user_id, uid, "text", row.text_ct).decode(),
            json.loads(self._open(user_id, uid, "meta", row.meta_ct)), int(row.created_ms),
            None if row.superseded_ms is None else int(row.superseded_ms),
            None if row.superseded_by is None else int(row.superseded_by), int(row.rev),
        )

    # -- the user's memory state ------------------------------------------------------------
    def state(self, conn: Connection, user_id: int) -> MemoryState:
        row = conn.execute(select(memory_users.c.enabled, memory_users.c.version, memory_users.c.reset_version)
                           .where(memory_users.c.user_id == user_id)).first()
        if row is None:
            return MemoryState(True, 0, 0)
        return MemoryState(bool(row.enabled), int(row.version), int(row.reset_version))

    def _bump(self, conn: Connection, user_id: int, at_ms: int, *, reset: bool = False) -> int:
        """The user's next memory version (the row is locked until the transaction ends)."""
        insert_or_ignore(conn, memory_users, dict(user_id=user_id, enabled=True, version=0, reset_version=0,
                                                  updated_ms=at_ms), on=["user_id"])
        values: dict[str, Any] = {"version": memory_users.c.version + 1, "updated_ms": at_ms}
        if reset:
            values["reset_version"] = memory_users.c.version + 1
        conn.execute(update(memory_users).where(memory_users.c.user_id == user_id).values(**values))
        if reset:  # after the update: a snapshot written meanwhile is seen (and its writer waited)
            conn.execute(delete(memory_snapshots).where(memory_snapshots.c.user_id == user_id))
        return int(conn.execute(select(memory_users.c.version).where(memory_users.c.user_id == user_id)).scalar_one())

    def set_enabled(self, conn: Connection, user_id: int, enabled: bool, at_ms: int) -> MemoryState:
        self._bump(conn, user_id, at_ms)
        conn.execute(update(memory_users).where(memory_users.c.user_id == user_id).values(enabled=enabled))
        return self.state(conn, user_id)

    # -- writing ----------------------------------------------------------------------------
    def add(self, conn: Connection, user_id: int, items: list[NewMemory], at_ms: int, *,
            supersedes: Iterable[int] = ()) -> list[Memory]:
        """Add memories (one version for the batch); the facts of `supersedes` (ids of this user's
        active facts) are marked superseded by the first new one."""
        if not items:
            return []
        rev = self._bump(conn, user_id, at_ms)
        rows: list[dict[str, Any]] = []
        added: list[Memory] = []
        for item in items:
            if item.kind not in KINDS:
                raise ValueError(f"unknown memory kind {item.kind!r}")
            uid = new_memory_uid()
            vector = np.asarray(item.embedding, dtype=np.float32)
            rows.append(dict(
                uid=uid, user_id=user_id, kind=item.kind, status="active",
                text_ct=self._seal(user_id, uid, "text", item.text.encode()),
                embedding_ct=self._seal(user_id, uid, "embedding", vector.astype(np.float16).tobytes()),
                meta_ct=self._seal(user_id, uid, "meta", json.dumps(item.meta, separators=(",", ":")).encode()),
                created_ms=item.created_ms, rev=rev,
            ))
            added.append(Memory(0, uid, user_id, item.kind, "active", item.text, item.meta, item.created_ms, None,
                                None, rev))
        conn.execute(memories.insert(), rows)
        ids = dict(conn.execute(select(memories.c.uid, memories.c.id).where(
            memories.c.user_id == user_id, memories.c.rev == rev)).all())
        for memory in added:
            memory.id = int(ids[memory.uid])
        old = [int(i) for i in supersedes]
        if old:
            conn.execute(update(memories).where(memories.c.user_id == user_id, memories.c.id.in_(old),
                                                memories.c.status == "active")
                         .values(status="superseded", superseded_ms=added[0].created_ms,
                                 superseded_by=added[0].id, rev=rev))
        return added

    def delete(self, conn: Connection, user_id: int, uid: str, at_ms: int) -> int:
        """Delete the memory and the older versions it superseded, for good; how many rows."""
        memory = self.get(conn, user_id, uid)
        doomed = {memory.id}
        frontier = [memory.id]
        while frontier:  # the chain of versions it replaced
            found = [int(i) for i in conn.execute(select(memories.c.id).where(
                memories.c.user_id == user_id, memories.c.superseded_by.in_(frontier))).scalars()]
            frontier = [i for i in found if i not in doomed]
            doomed.update(frontier)
        self._bump(conn, user_id, at_ms, reset=True)
        return conn.execute(delete(memories).where(memories.c.user_id == user_id, memories.c.id.in_(doomed))).rowcount

    def delete_all(self, conn: Connection, user_id: int, at_ms: int) -> int:
        self._bump(conn, user_id, at_ms, reset=True)
        return conn.execute(delete(memories).where(memories.c.user_id == user_id)).rowcount

    # -- reading ----------------------------------------------------------------------------
    def get(self, conn: Connection, user_id: int, uid: str) -> Memory:
        row = conn.execute(select(memories).where(memories.c.uid == uid, memories.c.user_id == user_id)).first()
        if row is None:
            raise NotFound(f"No memory found with id '{uid}'.", param="memory_id")
        return self._memory(row)

    def by_ids(self, conn: Connection, user_id: int, ids: Iterable[int]) -> dict[int, Memory]:
        wanted = list(ids)
        if not wanted:
            return {}
        rows = conn.execute(select(memories).where(memories.c.user_id == user_id, memories.c.id.in_(wanted))).all()
        return {int(r.id): self._memory(r) for r in rows}

    def page(self, conn: Connection, user_id: int, *, limit: int, after: str | None = None,
             include_superseded: bool = True) -> list[Memory]:
        """The user's memories, newest first, `limit` of them after the memory `after`."""
        query = select(memories).where(memories.c.user_id == user_id)
        if not include_superseded:
            query = query.where(memories.c.status == "active")
        if after is not None:
            mark = conn.execute(select(memories.c.created_ms, memories.c.id).where(
                memories.c.uid == after, memories.c.user_id == user_id)).first()
            if mark is None:
                raise NotFound(f"No memory found with id '{after}'.", param="after")
            query = query.where(or_(memories.c.created_ms < mark.created_ms,
                                    and_(memories.c.created_ms == mark.created_ms, memories.c.id < mark.id)))
        rows = conn.execute(query.order_by(memories.c.created_ms.desc(), memories.c.id.desc()).limit(limit)).all()
        return [self._memory(row) for row in rows]

    def changed_since(self, conn: Connection, user_id: int, rev: int) -> Changed:
        """Every memory written after version `rev` (all of them for 0), in id order, the active
        ones decrypted. This is a cold index's build: 10,000 memories must take well under 200 ms
        on one core, so each field is decrypted in one batch (`KeyRing.decrypt_many`), the
        metadata parsed as one JSON array and the embeddings read as one matrix."""
        c = memories.c
        # Sorted here, not by ORDER BY: SQLite would sort the rows, ciphertexts and all, in a
        # temporary B-tree (a third of the read's time at 10,000 memories).
        rows = sorted(conn.execute(select(c.id, c.uid, c.kind, c.status, c.created_ms, c.text_ct, c.meta_ct,
                                          c.embedding_ct).where(c.user_id == user_id, c.rev > rev)).all(),
                      key=lambda r: r[0])
        gone = [int(r[0]) for r in rows if r[3] != "active"]
        if gone:
            rows = [r for r in rows if r[3] == "active"]
        uids = [r[1] for r in rows]
        texts = self._open_many(user_id, "text", list(zip(uids, [r[5] for r in rows])))
        metas = self._open_many(user_id, "meta", list(zip(uids, [r[6] for r in rows])))
        vectors = self._open_many(user_id, "embedding", list(zip(uids, [r[7] for r in rows])))
        width = 2 * DIMENSIONS  # float16
        if set(map(len, vectors)) - {width}:
            uid = next(uid for uid, raw in zip(uids, vectors) if len(raw) != width)
            raise MemoryUnreadable(f"The stored embedding of memory {uid} does not have {DIMENSIONS} dimensions.")
        embeddings = np.frombuffer(b"".join(vectors), dtype=np.float16).reshape(len(rows), DIMENSIONS)
        parsed = json.loads(b"[" + b",".join(metas) + b"]")  # one parse: authenticated JSON objects, joined
        if len(parsed) != len(rows) or not all(type(m) is dict for m in parsed):
            raise MemoryUnreadable("The stored metadata of this account's memories is not what was written.")
        return Changed(gone, [int(r[0]) for r in rows], uids, [r[2] for r in rows], [int(r[4]) for r in rows],
                       [t.decode() for t in texts], parsed, embeddings)

    def _open_many(self, user_id: int, name: str, values: list[tuple[str, bytes]]) -> list[bytes]:
        try:
            return self.keyring.decrypt_many(user_id, TABLE, name, values)
        except CryptoError as exc:
            log.error("a stored memory's %s does not decrypt: %s", name, exc)
            raise MemoryUnreadable(f"A stored {name} of this account's memories cannot be decrypted: it was "
                                   f"altered or damaged in storage ({exc}). Nothing of it can be shown.") from None

    # -- the index's snapshot (memory.snapshot) ---------------------------------------------
    def snapshot(self, conn: Connection, user_id: int, reset_version: int) -> tuple[int, bytes] | None:
        """The user's snapshot taken at or after `reset_version`, sealed: (version, ciphertext)
        for `open_snapshot`; None when there is none."""
        c = memory_snapshots.c
        row = conn.execute(select(c.version, c.snapshot_ct).where(c.user_id == user_id,
                                                                 c.version >= reset_version)).first()
        return None if row is None else (int(row.version), row.snapshot_ct)

    def open_snapshot(self, user_id: int, version: int, sealed: bytes) -> bytes:
        """A snapshot's payload; MemoryUnreadable when it does not decrypt (altered, or moved
        from another user's row or another version)."""
        try:
            return self.keyring.decrypt(Binding(user_id, SNAPSHOTS, version, SNAPSHOT_FIELD), sealed)
        except CryptoError as exc:
            raise MemoryUnreadable(f"the index snapshot of user {user_id} (version {version}) cannot be decrypted: "
                                   f"{exc}") from None

    def seal_snapshot(self, user_id: int, version: int, payload: bytes) -> bytes:
        return self.keyring.encrypt(Binding(user_id, SNAPSHOTS, version, SNAPSHOT_FIELD), payload)

    def save_snapshot(self, conn: Connection, user_id: int, version: int, sealed: bytes, at_ms: int) -> bool:
        """Keep `sealed` (from `seal_snapshot`) as the user's snapshot at `version`, unless a
        deletion came after that version or a newer snapshot is kept; whether it was kept. The
        user's memory row is locked first (a deletion's `_bump` updates it), so a deletion either
        sees this row and deletes it, or is seen here."""
        reset = conn.execute(select(memory_users.c.reset_version).where(memory_users.c.user_id == user_id)
                             .with_for_update()).scalar()
        if reset is None or int(reset) > version:
            return False
        kept = conn.execute(select(memory_snapshots.c.version).where(memory_snapshots.c.user_id == user_id)).scalar()
        if kept is not None and int(kept) >= version:
            return False
        conn.execute(delete(memory_snapshots).where(memory_snapshots.c.user_id == user_id))
        conn.execute(memory_snapshots.insert().values(user_id=user_id, version=version, snapshot_ct=sealed,
                                                      created_ms=at_ms))
        return True

    def drop_snapshot(self, conn: Connection, user_id: int, version: int) -> int:
        """Delete the user's snapshot at `version` (one that would not decrypt or parse)."""
        return conn.execute(delete(memory_snapshots).where(memory_snapshots.c.user_id == user_id,
                                                           memory_snapshots.c.version == version)).rowcount

    def count(self, conn: Connection, user_id: int) -> int:
        return int(conn.execute(select(func.count()).select_from(memories)
                                .where(memories.c.user_id == user_id)).scalar_one())
