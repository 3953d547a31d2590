"""A user's memories, searchable in memory: keywords and meaning, fused.

Nothing readable is indexed on disk: a `UserIndex` is built in this process's memory on first
use, from the user's decrypted memories, and kept in an `IndexCache` under a RAM budget (least
recently used evicted). It holds:

- keywords: an SQLite FTS5 table in an in-memory database of its own (the standard library's
  sqlite3; Porter stemming, diacritics folded), ranked by BM25, any word of the query matching;
- meaning: the memories' unit embeddings in one float32 matrix, ranked by dot product (cosine);
- time: when the query names a period (memory.timeframe), the memories of that period.

The rankings are fused by reciprocal rank fusion (Cormack et al., 2009: score = sum of
1 / (60 + rank)), which needs no calibration between BM25 and cosine scores. A hit on a message
brings its neighbouring turns of the same conversation (at most one exchange apart in time)
when they complete it: of the three windows of three turns that contain the hit, the one whose
other turns score best is returned, as one result citing each turn. Superseded facts are not
indexed.

Each index remembers the user's memory version it reflects; before a search the caller reads
the version (one indexed query) and the index catches up with what any process wrote since
(`apply`), or is rebuilt after a deletion. A built index can be frozen (`UserIndex.freeze`: its
entries, arrays and the keyword table's database as bytes) and thawed in another process
(`UserIndex.thaw`) far faster than it is built: memory.snapshot keeps it, encrypted.
"""

from __future__ import annotations

import gc
import re
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import chain
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TypeVar

import numpy as np

from switchboard.memory.embedder import DIMENSIONS
from switchboard.memory.store import Changed, MemoryState
from switchboard.memory.timeframe import TimeFrame

T = TypeVar("T")
RRF_K = 60
CANDIDATES = 200  # taken from each ranking before fusion
WINDOW = 3  # turns in a passage at most (a result cites at most 3 sources)
_ENTRY_BYTES = 400  # a Python entry's overhead, for the RAM estimate

STOPWORDS = frozenset("""a an the of to in on at for by with from and or but is are was were be been being do does did
done have has had i you he she it we they me him her us them my your his its our their this that these those what which
who whom whose when where why how any some no not can could would should will shall may might must there here about
into over than then so if as just also very too up down out off again once all both each few more most other such only
own same s t don let lets tell know remember recall think""".split())
_WORD = re.compile(r"\w+", re.UNICODE)


def query_words(text: str) -> list[str]:
    """The words of a query worth matching: no stopwords, each once, in order."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(text.lower()):
        if word not in STOPWORDS and len(word) > 1 or word.isdigit():
            seen.setdefault(word, None)
    return list(seen)


@dataclass(slots=True)
class Entry:
    id: int
    uid: str
    kind: str
    text: str
    created_ms: int
    name: str | None
    thread: str | None
    source_ids: list[str]
    seq: int = 0  # its place in its thread


@dataclass(slots=True)
class Frozen:
    """An index's state, captured under its lock (`UserIndex.freeze`) and restored by
    `UserIndex.thaw`. Position k is the k-th entry taken in (None: removed since); the keyword
    table's rowid is k + 1."""

    user_id: int
    version: int
    entries: list[Entry | None]
    vectors: np.ndarray  # (n, DIMENSIONS): float32 from freeze, float16 from a snapshot
    created: np.ndarray  # (n,) int64
    active: np.ndarray  # (n,) bool
    threads: dict[str, list[int]]  # thread -> positions, in the order taken in
    fts: bytes  # the keyword table's in-memory database (sqlite3 Connection.serialize)
    text_bytes: int


@dataclass(slots=True)
class Hit:
    """One result: a memory, or a passage of neighbouring turns (oldest first) around a hit."""

    entries: list[Entry]
    score: float  # the fused score of the hit
    similarity: float  # the hit's cosine similarity to the query
    keyword: bool  # whether the hit matched a word of the query
    center: Entry = field(init=False)

    def __post_init__(self) -> None:
        self.center = self.entries[0]

    @property
    def source_ids(self) -> list[str]:
        ids: list[str] = []
        for entry in self.entries:
            for sid in entry.source_ids:
                if sid not in ids:
                    ids.append(sid)
        return ids[:WINDOW]


def _day(created_ms: int) -> str:
    return datetime.fromtimestamp(created_ms / 1000, timezone.utc).strftime("%d %B %Y")


def index_text(entry: Entry, day: str | None = None) -> str:
    """What the keyword index reads: the date (`day`, when known), the speaker and the text."""
    day = day or _day(entry.created_ms)
    return f"({day}) {entry.name}: {entry.text}" if entry.name else f"({day}) {entry.text}"


class UserIndex:
    """One user's memories in memory. Thread-safe (one search or update at a time)."""

    def __init__(self, user_id: int, *, neighbour_gap_ms: int) -> None:
        self.user_id = user_id
        self.version = 0
        self.neighbour_gap_ms = neighbour_gap_ms
        self.lock = threading.Lock()
        self._entries: list[Entry | None] = []
        self._by_id: dict[int, int] = {}
        self._vectors = np.zeros((64, DIMENSIONS), dtype=np.float32)
        self._created = np.zeros(64, dtype=np.int64)
        self._active = np.zeros(64, dtype=bool)
        self._threads: dict[str, list[int]] = {}
        self._db = sqlite3.connect(":memory:", check_same_thread=False)
        # Contentless (content=''): the entries hold the text; the table keeps only the index,
        # which is built faster and takes about a third of the RAM.
        self._db.execute("CREATE VIRTUAL TABLE f USING fts5(text, content='', "
                         "tokenize='porter unicode61 remove_diacritics 2')")
        self._text_bytes = 0
        self.closed = False
        # The version of the stored snapshot this index matches (None: none), and how many
        # memories were taken in or removed since: memory.snapshot writes it again past a bound.
        self.snapshot_version: int | None = None
        self.unsaved = 0

    def freeze(self) -> Frozen:
        """The index's state (call with its lock held). Cheap: rows below len(entries) of the
        vectors and created arrays are never written again (new ones go after them; growing
        copies), so views of them are kept; the rest is copied."""
        n = len(self._entries)
        self._db.commit()  # the table's inserts are in an open (implicit) transaction: serialize leaves them out
        return Frozen(self.user_id, self.version, list(self._entries), self._vectors[:n], self._created[:n],
                      self._active[:n].copy(), {t: list(m) for t, m in self._threads.items()},
                      self._db.serialize(), self._text_bytes)

    @classmethod
    def thaw(cls, frozen: Frozen, *, neighbour_gap_ms: int) -> UserIndex:
        """An index in the state `frozen` captured, its keyword table's database taken as is."""
        index = cls(frozen.user_id, neighbour_gap_ms=neighbour_gap_ms)
        index._db.deserialize(frozen.fts)
        n = len(frozen.entries)
        index._entries = frozen.entries
        index._by_id = {e.id: pos for pos, e in enumerate(frozen.entries) if e is not None}
        index._vectors = np.empty((n, DIMENSIONS), dtype=np.float32)
        index._vectors[:] = frozen.vectors  # float16 widened as it is copied
        index._created = np.array(frozen.created, dtype=np.int64)
        index._active = np.array(frozen.active, dtype=bool)
        index._threads = frozen.threads
        index._text_bytes = frozen.text_bytes
        index.version = index.snapshot_version = frozen.version
        return index

    def source_ids(self) -> set[str]:
        """Every source id the user's memories cite (to recognise what was imported before)."""
        with self.lock:
            return {sid for entry in self._entries if entry is not None for sid in entry.source_ids}

    def close(self) -> None:
        self.closed = True
        self._db.close()

    def __len__(self) -> int:
        return len(self._by_id)

    @property
    def ram_bytes(self) -> int:
        """An estimate of what the index holds in memory."""
        pages = self._db.execute("PRAGMA page_count").fetchone()[0] * self._db.execute("PRAGMA page_size").fetchone()[0]
        arrays = self._vectors.nbytes + self._created.nbytes + self._active.nbytes
        return pages + arrays + self._text_bytes + _ENTRY_BYTES * len(self._entries)

    # -- updates ----------------------------------------------------------------------------
    def apply(self, changed: Changed, version: int) -> None:
        """Take in what changed: ones no longer active removed, new active ones added (in bulk:
        a cold build takes in every memory at once)."""
        for memory_id in changed.gone:
            pos = self._by_id.get(memory_id)
            if pos is not None:
                self._remove(pos)
        by_id = self._by_id
        taken = [k for k, memory_id in enumerate(changed.ids) if memory_id not in by_id]  # all, when cold
        self.unsaved += len(changed.gone) + len(taken)
        if not taken:
            self.version = max(self.version, version)
            return
        everything = len(taken) == len(changed.ids)

        def column(values: list[T]) -> list[T]:
            return values if everything else [values[k] for k in taken]

        first = len(self._entries)
        last = first + len(taken)
        # Column by column, in comprehensions: a cold build takes in every memory at once.
        metas, kinds, created = column(changed.metas), column(changed.kinds), column(changed.created_ms)
        entries = [Entry(i, u, kind, text, at, meta.get("name"), meta.get("thread") if kind == "message" else None,
                         meta.get("source_ids") or [])
                   for i, u, kind, text, at, meta in zip(column(changed.ids), column(changed.uids), kinds,
                                                         column(changed.texts), created, metas)]
        self._entries.extend(entries)
        by_id.update(zip((e.id for e in entries), range(first, last)))
        for pos, entry in enumerate(entries, start=first):
            if entry.thread is not None:
                members = self._threads.setdefault(entry.thread, [])
                entry.seq = len(members)
                members.append(pos)
        days = {day: _day(day * 86_400_000) for day in {at // 86_400_000 for at in created}}
        self._db.executemany("INSERT INTO f(rowid, text) VALUES (?, ?)",
                             [(pos + 1, index_text(entry, days[entry.created_ms // 86_400_000]))
                              for pos, entry in enumerate(entries, start=first)])
        self._grow(last)
        # float16 widened to float32 as it is copied in
        self._vectors[first:last] = changed.embeddings if everything else changed.embeddings[taken]
        self._created[first:last] = created
        self._active[first:last] = True
        self._text_bytes += (sum(map(len, column(changed.texts))) + 64 * len(entries)
                             + sum(map(len, chain.from_iterable(e.source_ids for e in entries))))
        self.version = max(self.version, version)

    def _grow(self, size: int) -> None:
        if size <= len(self._active):
            return
        capacity = max(size, 2 * len(self._active))
        vectors = np.zeros((capacity, DIMENSIONS), dtype=np.float32)
        vectors[:len(self._vectors)] = self._vectors
        created = np.zeros(capacity, dtype=np.int64)
        created[:len(self._created)] = self._created
        active = np.zeros(capacity, dtype=bool)
        active[:len(self._active)] = self._active
        self._vectors, self._created, self._active = vectors, created, active

    def _remove(self, pos: int) -> None:
        entry = self._entries[pos]
        if entry is None:
            return
        # A contentless table forgets a row when told the text it indexed.
        self._db.execute("INSERT INTO f(f, rowid, text) VALUES ('delete', ?, ?)", (pos + 1, index_text(entry)))
        self._active[pos] = False
        self._entries[pos] = None
        del self._by_id[entry.id]

    # -- search -----------------------------------------------------------------------------
    def search(self, vector: np.ndarray | None, words: list[str], frame: TimeFrame | None, limit: int, *,
               exclude_thread: str | None = None) -> list[Hit]:
        """The best `limit` results, best first."""
        n = len(self._entries)
        if n == 0 or limit <= 0:
            return []
        fused: dict[int, float] = {}
        similarity = np.full(n, -1.0, dtype=np.float32)
        if vector is not None:
            similarity = self._vectors[:n] @ vector.astype(np.float32)
            similarity[~self._active[:n]] = -2.0
            for rank, pos in enumerate(_top(similarity, CANDIDATES)):
                fused[pos] = fused.get(pos, 0.0) + 1.0 / (RRF_K + rank + 1)
        keyword: set[int] = set()
        if words:
            expression = " OR ".join('"' + w.replace('"', '""') + '"' for w in words)
            rows = self._db.execute("SELECT rowid FROM f WHERE f MATCH ? ORDER BY rank LIMIT ?",
                                    (expression, CANDIDATES)).fetchall()
            for rank, (rowid,) in enumerate(rows):
                pos = rowid - 1
                keyword.add(pos)
                fused[pos] = fused.get(pos, 0.0) + 1.0 / (RRF_K + rank + 1)
        if frame is not None:
            inside = np.flatnonzero(self._active[:n] & (self._created[:n] >= frame.start_ms)
                                    & (self._created[:n] < frame.end_ms))
            if len(inside):
                order = inside[np.argsort(-similarity[inside], kind="stable")][:CANDIDATES]
                for rank, pos in enumerate(order.tolist()):
                    fused[pos] = fused.get(pos, 0.0) + 1.0 / (RRF_K + rank + 1)
        hits: list[Hit] = []
        used: set[int] = set()
        for pos in sorted(fused, key=lambda p: (-fused[p], p)):
            if len(hits) >= limit:
                break
            entry = self._entries[pos]
            if pos in used or entry is None or (exclude_thread is not None and entry.thread == exclude_thread):
                continue
            members = self._passage(pos, entry, fused, used)
            used.update(members)
            entries = [e for e in (self._entries[m] for m in sorted(members, key=lambda m: self._created[m])) if e]
            hit = Hit(entries, fused[pos], float(similarity[pos]), pos in keyword)
            hit.center = entry
            hits.append(hit)
        return hits

    def _passage(self, pos: int, entry: Entry, fused: dict[int, float], used: set[int]) -> list[int]:
        """The hit and the neighbours that complete it: of the windows of WINDOW turns around
        it (in its thread, close in time), the one whose other turns score best."""
        if entry.thread is None:
            return [pos]
        members = self._threads[entry.thread]
        gap = self.neighbour_gap_ms
        best: list[int] = [pos]
        best_score = -1.0
        for first in range(entry.seq - WINDOW + 1, entry.seq + 1):
            window: list[int] = []
            for seq in range(first, first + WINDOW):
                if 0 <= seq < len(members):
                    other = members[seq]
                    if (self._entries[other] is not None and other not in used
                            and abs(int(self._created[other]) - entry.created_ms) <= gap):
                        window.append(other)
            if pos not in window:
                continue
            score = sum(fused.get(m, 0.0) for m in window if m != pos)
            if score > best_score:
                best, best_score = window, score
        return best


@contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic garbage collector paused: a build allocates some 100,000 objects that all
    live on (entries, their lists, the decrypted columns), and the collections they trigger
    would walk the growing heap again and again (a third of a cold build's time, measured)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _top(scores: np.ndarray, k: int) -> list[int]:
    """Positions of the k highest scores, best first."""
    if len(scores) > k:
        part = np.argpartition(-scores, k)[:k]
    else:
        part = np.arange(len(scores))
    return part[np.argsort(-scores[part], kind="stable")].tolist()


class IndexCache:
    """Per-user indexes of this process, least recently used evicted past `budget_bytes`.

    With `save_snapshot` given, an index of at least `snapshot_min` memories is frozen and handed
    to it after a full build, and again once `snapshot_refresh` memories changed since (the
    callee writes it off the request path); a cold index is thawed from the `snapshot` a caller
    passes to `index`, where there is one, and caught up from there."""

    def __init__(self, *, budget_bytes: int, neighbour_gap_ms: int, snapshot_min: int = 0,
                 snapshot_refresh: int = 1000, save_snapshot: Callable[[Frozen], None] | None = None) -> None:
        self.budget_bytes = budget_bytes
        self.neighbour_gap_ms = neighbour_gap_ms
        self.snapshot_min = snapshot_min
        self.snapshot_refresh = snapshot_refresh
        self.save_snapshot = save_snapshot
        self._lock = threading.Lock()
        self._indexes: OrderedDict[int, UserIndex] = OrderedDict()
        self._sizes: dict[int, int] = {}
        self.builds = 0  # full builds, for tests and the benchmark
        self.thaws = 0  # cold indexes loaded from a snapshot instead

    def index(self, user_id: int, state: MemoryState, changed_since: Callable[[int], Changed],
              snapshot: Callable[[], Frozen | None] | None = None) -> UserIndex:
        """The user's index, brought up to `state` (call with the index's lock not held). A cold
        one is thawed from `snapshot()` when that gives one at or after the user's last deletion
        (`state.reset_version`), else built from every memory."""
        with self._lock:
            index = self._indexes.get(user_id)
            if index is not None:
                self._indexes.move_to_end(user_id)
        if index is None or state.reset_version > index.version:
            with _gc_paused():  # a snapshot's entries are decoded in `snapshot()`
                frozen = snapshot() if snapshot is not None else None
                if frozen is not None and state.reset_version <= frozen.version:
                    fresh = UserIndex.thaw(frozen, neighbour_gap_ms=self.neighbour_gap_ms)
                    if state.version > fresh.version:
                        fresh.apply(changed_since(fresh.version), state.version)
                    self.thaws += 1
                else:
                    fresh = UserIndex(user_id, neighbour_gap_ms=self.neighbour_gap_ms)
                    fresh.apply(changed_since(0), state.version)
                    self.builds += 1
            self._offer(fresh)
            self._put(fresh)
            if index is not None:
                index.close()
            return fresh
        if state.version > index.version:
            with index.lock:
                if state.version > index.version:
                    index.apply(changed_since(index.version), state.version)
                    self._offer(index)
            self._put(index)
        return index

    def _offer(self, index: UserIndex) -> None:
        """Hand the index to `save_snapshot` when it has none, or one that lags it by
        `snapshot_refresh` memories (call with its lock held, or before it is shared)."""
        if self.save_snapshot is None or not self.snapshot_min or len(index) < self.snapshot_min:
            return
        if index.snapshot_version is not None and index.unsaved < self.snapshot_refresh:
            return
        frozen = index.freeze()
        index.snapshot_version, index.unsaved = index.version, 0
        self.save_snapshot(frozen)

    def _put(self, index: UserIndex) -> None:
        size = index.ram_bytes
        with self._lock:
            old = self._indexes.get(index.user_id)
            self._indexes[index.user_id] = index
            self._indexes.move_to_end(index.user_id)
            self._sizes[index.user_id] = size
            evicted = []
            while sum(self._sizes.values()) > self.budget_bytes and len(self._indexes) > 1:
                uid, victim = self._indexes.popitem(last=False)
                self._sizes.pop(uid, None)
                evicted.append(victim)
        if old is not None and old is not index:
            evicted.append(old)
        for victim in evicted:
            with victim.lock:
                victim.close()

    def drop(self, user_id: int) -> None:
        with self._lock:
            index = self._indexes.pop(user_id, None)
            self._sizes.pop(user_id, None)
        if index is not None:
            with index.lock:
                index.close()

    @property
    def ram_bytes(self) -> int:
        with self._lock:
            return sum(self._sizes.values())
