"""A built index kept as one encrypted value, so that a cold search loads it instead of building.

Building a user's index decrypts three values per memory and fills a keyword table: at 10,000
memories that is most of a cold search's time. After a full build of an index of at least
`memory.snapshot_min_memories`, the index is frozen (memory.index: its entries, embeddings, times
and the keyword table's in-memory SQLite database as bytes) and, on a thread of its own (off the
request path), encoded here, sealed with the user's data key (bound to the user, the table and
the version it reflects) and kept in `memory_snapshots` (MemoryStore.save_snapshot). A cold index
is then one read, one decryption and one parse, plus what was written since (`apply`).

A snapshot holds every active memory's text, so every deletion deletes it in the deleting
transaction (MemoryStore._bump), and one is written only if no deletion came after the version
it reflects. One that does not decrypt or parse is dropped and the index built in full (logged,
never an error to the user).

The payload: MAGIC, the length of a JSON header, the header (user, version, sizes, and the
entries' text columns), then the arrays as raw little-endian bytes: ids, seqs, created, active,
the embeddings as float16 (as stored), and the keyword table's database. No pickle: what is
parsed is authenticated, but a parser that cannot run code is kept anyway.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import orjson
from sqlalchemy import Engine

from switchboard.memory.embedder import DIMENSIONS
from switchboard.memory.index import Entry, Frozen
from switchboard.memory.store import MemoryStore

log = logging.getLogger(__name__)

MAGIC = b"SBMEMIX1"
_LENGTH = struct.Struct("<Q")
_ARRAYS = (("ids", np.int64), ("seqs", np.int64), ("created", np.int64), ("active", np.bool_),
           ("vectors", np.float16))


class SnapshotUnreadable(ValueError):
    """A snapshot whose payload is not what `encode` writes."""


def encode(frozen: Frozen) -> bytes:
    """The payload of `frozen`'s snapshot (see the module's docstring)."""
    live = [e for e in frozen.entries if e is not None]
    header: dict[str, Any] = {
        "user_id": frozen.user_id, "version": frozen.version, "n": len(frozen.entries),
        "text_bytes": frozen.text_bytes,
        "live": [pos for pos, e in enumerate(frozen.entries) if e is not None],
        "uids": [e.uid for e in live], "kinds": [e.kind for e in live], "texts": [e.text for e in live],
        "names": [e.name for e in live], "threads": [e.thread for e in live],
        "sources": [e.source_ids for e in live], "members": frozen.threads,
    }
    arrays = {
        "ids": np.array([e.id for e in live], dtype=np.int64), "seqs": np.array([e.seq for e in live], dtype=np.int64),
        "created": np.asarray(frozen.created, dtype=np.int64), "active": np.asarray(frozen.active, dtype=np.bool_),
        "vectors": np.asarray(frozen.vectors).astype(np.float16),
    }
    blobs = [arrays[name].astype(np.dtype(kind).newbyteorder("<"), copy=False).tobytes() for name, kind in _ARRAYS]
    blobs.append(frozen.fts)
    header["sizes"] = [len(b) for b in blobs]
    head = orjson.dumps(header)
    return b"".join([MAGIC, _LENGTH.pack(len(head)), head, *blobs])


def decode(payload: bytes, user_id: int, version: int) -> Frozen:
    """The frozen index in `payload`, checked against the user and version it was stored for
    (SnapshotUnreadable when anything is not what `encode` writes)."""
    try:
        return _decode(memoryview(payload), user_id, version)
    except SnapshotUnreadable:
        raise
    except (ValueError, KeyError, TypeError, IndexError, struct.error) as exc:  # orjson's errors are ValueErrors
        raise SnapshotUnreadable(f"malformed snapshot: {exc!r}") from None


def _decode(view: memoryview, user_id: int, version: int) -> Frozen:
    if bytes(view[:len(MAGIC)]) != MAGIC:
        raise SnapshotUnreadable("not a snapshot of this format")
    start = len(MAGIC) + _LENGTH.size
    (length,) = _LENGTH.unpack(view[len(MAGIC):start])
    header = orjson.loads(view[start:start + length])
    if header["user_id"] != user_id or header["version"] != version:
        raise SnapshotUnreadable(f"the snapshot is of user {header['user_id']} at version {header['version']}")
    offset = start + length
    sizes: list[int] = header["sizes"]
    if len(sizes) != len(_ARRAYS) + 1 or offset + sum(sizes) != len(view):
        raise SnapshotUnreadable("the snapshot's sections do not add up")
    arrays: dict[str, np.ndarray] = {}
    for (name, kind), size in zip(_ARRAYS, sizes):
        arrays[name] = np.frombuffer(view[offset:offset + size], dtype=np.dtype(kind).newbyteorder("<"))
        offset += size
    fts = bytes(view[offset:offset + sizes[-1]])
    n, live = int(header["n"]), header["live"]
    columns = [header[k] for k in ("uids", "kinds", "texts", "names", "threads", "sources")]
    if (any(len(c) != len(live) for c in columns) or len(arrays["ids"]) != len(live) or len(arrays["seqs"]) != len(live)
            or len(arrays["created"]) != n or len(arrays["active"]) != n or len(arrays["vectors"]) != n * DIMENSIONS):
        raise SnapshotUnreadable("the snapshot's columns differ in length")
    created = arrays["created"]
    made = [Entry(i, u, kind, text, at, name, thread, sources, seq) for i, u, kind, text, at, name, thread, sources, seq
            in zip(arrays["ids"].tolist(), *columns[:3], created[live].tolist(), *columns[3:],
                   arrays["seqs"].tolist())]
    entries: list[Entry | None] = [None] * n
    for pos, entry in zip(live, made):
        entries[pos] = entry
    return Frozen(user_id, version, entries, arrays["vectors"].reshape(n, DIMENSIONS), created, arrays["active"],
                  header["members"], fts, int(header["text_bytes"]))


class SnapshotWriter:
    """Encodes, seals and keeps snapshots on one thread of its own, in order: the search that
    froze an index does not wait for it. The newest pending snapshot of a user replaces an
    older one not yet written. `flush` waits for what is pending (tests, the benchmark)."""

    def __init__(self, engine: Engine, store: MemoryStore) -> None:
        self.engine = engine
        self.store = store
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="memory-snapshot")
        self._lock = threading.Lock()
        self._pending: dict[int, Frozen] = {}
        self._futures: list[Future[None]] = []
        self.written = 0  # snapshots kept, for tests and the benchmark

    def _submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            self._futures = [f for f in self._futures if not f.done()]
            self._futures.append(self._pool.submit(job))

    def save(self, frozen: Frozen) -> None:
        with self._lock:
            queued = frozen.user_id in self._pending
            self._pending[frozen.user_id] = frozen
        if not queued:
            self._submit(lambda: self._write(frozen.user_id))

    def drop(self, user_id: int, version: int) -> None:
        """Delete the user's snapshot at `version` (one that cannot be read)."""
        self._submit(lambda: self._drop(user_id, version))

    def flush(self) -> None:
        with self._lock:
            futures = list(self._futures)
        for future in futures:
            future.result()

    def _write(self, user_id: int) -> None:
        with self._lock:
            frozen = self._pending.pop(user_id)
        try:
            sealed = self.store.seal_snapshot(user_id, frozen.version, encode(frozen))
            with self.engine.begin() as conn:
                kept = self.store.save_snapshot(conn, user_id, frozen.version, sealed, int(time.time() * 1000))
        except Exception:  # noqa: BLE001 - a snapshot is an optimisation: a failed one costs a full build
            log.exception("could not keep the memory index snapshot of user %s", user_id)
            return
        if kept:
            self.written += 1

    def _drop(self, user_id: int, version: int) -> None:
        try:
            with self.engine.begin() as conn:
                self.store.drop_snapshot(conn, user_id, version)
        except Exception:  # noqa: BLE001 - it is dropped again at the next cold search
            log.exception("could not drop the unreadable memory index snapshot of user %s", user_id)
