"""Long-term memory as every part uses it: keep, search, list, correct, forget.

    memory = MemoryService(engine, keyring, settings.memory, write=services.write)
    await memory.keep(user_id, [Remembered("message", "My sister is called Ana", at_ms, meta)])
    hits = await memory.search(user_id, "what is my sister's name?")

Embedding runs on worker threads (never on the event loop); writes go through the `write` door
given (the assistant's: the ledger's writer, in the user's lane), or a transaction of their own
(the CLI); reads and index builds run on worker threads. A user whose memory is off (or a server
whose memory is off) keeps nothing new: `keep` returns nothing and says why in the log only.
A cold index is thawed from the user's encrypted snapshot where one is usable (memory.snapshot),
and a full build's snapshot is written on the snapshot writer's thread, off the request path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import Connection, Engine

from switchboard.core.config import MemoryConfig
from switchboard.core.errors import SwitchboardError
from switchboard.crypto import KeyRing
from switchboard.memory.embedder import Embedder, shared_embedder
from switchboard.memory.index import Frozen, Hit, IndexCache, UserIndex, query_words
from switchboard.memory.snapshot import SnapshotUnreadable, SnapshotWriter, decode
from switchboard.memory.store import Memory, MemoryState, MemoryStore, MemoryUnreadable, NewMemory
from switchboard.memory.timeframe import timeframe
from switchboard.store.db import read

log = logging.getLogger(__name__)
T = TypeVar("T")
WriteDoor = Callable[[int, Callable[[Connection], T]], Awaitable[T]]


class MemoryOff(SwitchboardError):
    """The user switched their memory off (or the server keeps none): nothing new is kept."""

    status = 409
    type = "invalid_request_error"
    code = "memory_off"


@dataclass(slots=True)
class Remembered:
    """Something to keep: its kind, text, time, and metadata (role, name, source_ids, sources,
    thread, origin)."""

    kind: str
    text: str
    created_ms: int
    meta: dict[str, Any] = field(default_factory=dict)

    def embedding_text(self) -> str:
        name = self.meta.get("name")
        return f"{name}: {self.text}" if name else self.text


def now_ms() -> int:
    return int(time.time() * 1000)


class MemoryService:
    def __init__(self, engine: Engine, keyring: KeyRing, config: MemoryConfig, *,
                 write: WriteDoor[Any] | None = None, embedder: Embedder | None = None) -> None:
        self.engine = engine
        self.keyring = keyring
        self.config = config
        self.store = MemoryStore(keyring)
        self.embedder = embedder or shared_embedder(config.embedding_threads)
        self.snapshots = SnapshotWriter(engine, self.store) if config.snapshot_min_memories else None
        self.cache = IndexCache(budget_bytes=config.index_ram_mb * 2**20,
                                neighbour_gap_ms=int(config.neighbour_gap_s * 1000),
                                snapshot_min=config.snapshot_min_memories,
                                snapshot_refresh=config.snapshot_refresh_memories,
                                save_snapshot=self.snapshots.save if self.snapshots else None)
        self._write = write

    # -- doors ------------------------------------------------------------------------------
    async def write(self, user_id: int, work: Callable[[Connection], T]) -> T:
        if self._write is not None:
            return await self._write(user_id, work)
        await self.keyring.prepare(user_id)

        def run() -> T:
            with self.engine.begin() as conn:
                return work(conn)

        return await asyncio.to_thread(run)

    async def read(self, user_id: int, work: Callable[[Connection], T]) -> T:
        await self.keyring.prepare(user_id)
        return await asyncio.to_thread(read, self.engine, work)

    async def embed(self, texts: list[str]) -> np.ndarray:
        embedded = await asyncio.to_thread(self.embedder.embed, texts)
        return embedded.vectors

    # -- state ------------------------------------------------------------------------------
    async def state(self, user_id: int) -> MemoryState:
        return await self.read(user_id, lambda c: self.store.state(c, user_id))

    async def keeps(self, user_id: int) -> bool:
        """Whether new memories are kept for this user (the server's and the user's switch)."""
        return self.config.enabled and (await self.state(user_id)).enabled

    async def set_enabled(self, user_id: int, enabled: bool) -> MemoryState:
        return await self.write(user_id, lambda c: self.store.set_enabled(c, user_id, enabled, now_ms()))

    # -- keeping ----------------------------------------------------------------------------
    async def keep(self, user_id: int, items: list[Remembered], *, supersedes: list[int] | None = None,
                   check: bool = True) -> list[Memory]:
        """Embed and store `items` (facts of `supersedes` marked superseded by the first); nothing
        when the user's memory is off (MemoryOff when `check` says to raise instead)."""
        if not items:
            return []
        if not await self.keeps(user_id):
            if check:
                raise MemoryOff("Memory is switched off for this account: nothing new is kept. Switch it on with "
                                "PATCH /v1/memories/settings {\"enabled\": true}.")
            return []
        vectors = await self.embed([item.embedding_text() for item in items])
        new = [NewMemory(i.kind, i.text, vectors[n], i.created_ms, i.meta) for n, i in enumerate(items)]
        return await self.write(user_id, lambda c: self.store.add(c, user_id, new, now_ms(), supersedes=supersedes or ()))

    # -- searching --------------------------------------------------------------------------
    def _index(self, conn: Connection, user_id: int) -> tuple[UserIndex, MemoryState]:
        state = self.store.state(conn, user_id)
        index = self.cache.index(user_id, state, lambda rev: self.store.changed_since(conn, user_id, rev),
                                 lambda: self._snapshot(conn, user_id, state))
        return index, state

    def _snapshot(self, conn: Connection, user_id: int, state: MemoryState) -> Frozen | None:
        """The user's index snapshot usable at `state`, if any; one that cannot be read is
        dropped (logged) and None returned: the index is then built in full."""
        if self.snapshots is None:
            return None
        found = self.store.snapshot(conn, user_id, state.reset_version)
        if found is None:
            return None
        version, sealed = found
        try:
            return decode(self.store.open_snapshot(user_id, version, sealed), user_id, version)
        except (MemoryUnreadable, SnapshotUnreadable) as exc:
            log.warning("dropping the memory index snapshot of user %s: %s", user_id, exc)
            self.snapshots.drop(user_id, version)
            return None

    def index_sync(self, user_id: int) -> UserIndex:
        """The user's index, up to date (blocking: a worker thread's work)."""
        return self._indexed_sync(user_id)[0]

    def _indexed_sync(self, user_id: int) -> tuple[UserIndex, MemoryState]:
        return read(self.engine, lambda conn: self._index(conn, user_id))

    def search_sync(self, user_id: int, query: str, vector: np.ndarray | None, limit: int, *,
                    now: datetime | None = None, time_zone: str = "UTC", exclude_thread: str | None = None,
                    index: UserIndex | None = None) -> list[Hit]:
        """Search with the query's embedding already made (blocking), in `index` when the caller
        has just brought it up to date."""
        frame = timeframe(query, now or datetime.now(timezone.utc), time_zone)
        text = query.replace(frame.words, " ") if frame else query
        words = query_words(text)
        for _ in range(3):  # an index evicted meanwhile by another thread: take the fresh one
            if index is None:
                index = self.index_sync(user_id)
            with index.lock:
                if not index.closed:
                    return index.search(vector, words, frame, limit, exclude_thread=exclude_thread)
            index = None
        return []

    async def search(self, user_id: int, query: str, limit: int = 10, *, now: datetime | None = None,
                     time_zone: str = "UTC", exclude_thread: str | None = None,
                     if_enabled: bool = False) -> list[Hit]:
        """The memories most relevant to `query`, best first (passages of turns around a hit);
        none when `if_enabled` and the user switched memory off. The query is embedded while
        the index catches up (both on worker threads): a search pays for the longer of the two."""
        await self.keyring.prepare(user_id)
        embedding = asyncio.ensure_future(self.embed([query]))
        try:
            index, state = await asyncio.to_thread(self._indexed_sync, user_id)
        except BaseException:
            embedding.cancel()
            raise
        if not len(index) or (if_enabled and not state.enabled):
            embedding.cancel()  # (its thread finishes on its own)
            return []
        vector = (await embedding)[0]
        return await asyncio.to_thread(self.search_sync, user_id, query, vector, limit, now=now,
                                       time_zone=time_zone, exclude_thread=exclude_thread, index=index)

    # -- the user's own view ----------------------------------------------------------------
    async def page(self, user_id: int, *, limit: int, after: str | None = None,
                   include_superseded: bool = True) -> list[Memory]:
        return await self.read(user_id, lambda c: self.store.page(c, user_id, limit=limit, after=after,
                                                                  include_superseded=include_superseded))

    async def get(self, user_id: int, uid: str) -> Memory:
        return await self.read(user_id, lambda c: self.store.get(c, user_id, uid))

    async def correct(self, user_id: int, uid: str, text: str) -> Memory:
        """A new version of the memory with `text`; the old one is kept, superseded by it."""
        old = await self.get(user_id, uid)
        meta = {k: v for k, v in old.meta.items() if k in ("name", "role", "source_ids", "sources")}
        meta.update(origin="correction", corrects=old.uid)
        added = await self.keep(user_id, [Remembered("fact", text, now_ms(), meta)], supersedes=[old.id])
        return added[0]

    async def forget(self, user_id: int, uid: str) -> int:
        return await self.write(user_id, lambda c: self.store.delete(c, user_id, uid, now_ms()))

    async def forget_all(self, user_id: int) -> int:
        removed = await self.write(user_id, lambda c: self.store.delete_all(c, user_id, now_ms()))
        self.cache.drop(user_id)
        return removed
