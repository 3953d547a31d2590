"""API keys: random, shown once, stored as SHA-256 hashes.

A plain (unsalted) SHA-256 is the right hash here, unlike for passwords: the key carries 256
random bits, so there is nothing to brute-force, and a fast hash keeps auth off the hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, func, insert, or_, select, update

from switchboard.billing.ledger import now_ms
from switchboard.store.db import reading
from switchboard.store.schema import api_keys, users

log = logging.getLogger(__name__)

KEY_PREFIX = "sb-"
PREFIX_LENGTH = 10  # what listings show of a key (`sb-` and 7 random characters)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the user behind an API key."""

    user_id: int
    email: str
    plan: str
    api_key_id: int


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


KEY_LENGTH = len(new_key())  # 32 random bytes are always 43 URL-safe base64 characters


def plausible_key(key: str) -> bool:
    """Whether `key` has the shape of every key `new_key` makes: anything else cannot be a key,
    and is refused without hashing or a lookup."""
    return len(key) == KEY_LENGTH and key.startswith(KEY_PREFIX)


def create_key(conn: Connection, user_id: int, name: str | None = None) -> str:
    """Store a new key's hash and return the key itself: the only time it is ever seen."""
    key = new_key()
    conn.execute(
        insert(api_keys).values(
            user_id=user_id, key_hash=hash_key(key), prefix=key[:PREFIX_LENGTH], name=name, created_ms=now_ms()
        )
    )
    return key


def lookup(conn: Connection, key_hash: str) -> Principal | None:
    row = conn.execute(
        select(api_keys.c.id, api_keys.c.user_id, users.c.email, users.c.plan)
        .join(users, users.c.id == api_keys.c.user_id)
        .where(api_keys.c.key_hash == key_hash, api_keys.c.revoked_ms.is_(None))
    ).first()
    return None if row is None else Principal(row.user_id, row.email, row.plan, row.id)


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """An API key as an operator sees it: never the key, only its prefix."""

    id: int
    user_id: int
    prefix: str
    name: str | None
    created_ms: int
    last_used_ms: int | None
    revoked_ms: int | None

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "prefix": self.prefix, "name": self.name, "created_ms": self.created_ms,
                "last_used_ms": self.last_used_ms, "revoked_ms": self.revoked_ms,
                "status": "revoked" if self.revoked_ms is not None else "active"}


_KEY_COLUMNS = (api_keys.c.id, api_keys.c.user_id, api_keys.c.prefix, api_keys.c.name, api_keys.c.created_ms,
                api_keys.c.last_used_ms, api_keys.c.revoked_ms)


def list_keys(conn: Connection, user_id: int) -> list[KeyInfo]:
    """A user's keys, oldest first, revoked ones included."""
    rows = conn.execute(select(*_KEY_COLUMNS).where(api_keys.c.user_id == user_id).order_by(api_keys.c.id)).all()
    return [KeyInfo(*row) for row in rows]


def find_keys(conn: Connection, ref: str) -> list[KeyInfo]:
    """The keys `ref` names: an id (digits), a whole key, or the start of a key as listings
    show it (at least `sb-` and 4 characters). Several for a prefix that is not unique."""
    ref = ref.strip()
    query = select(*_KEY_COLUMNS)
    if ref.isascii() and ref.isdigit():
        query = query.where(api_keys.c.id == int(ref))
    elif plausible_key(ref):
        query = query.where(api_keys.c.key_hash == hash_key(ref))
    elif ref.startswith(KEY_PREFIX) and len(KEY_PREFIX) + 4 <= len(ref) <= PREFIX_LENGTH:
        # substr, not LIKE: `_` is a LIKE wildcard and a character of keys.
        query = query.where(func.substr(api_keys.c.prefix, 1, len(ref)) == ref)
    else:
        return []
    return [KeyInfo(*row) for row in conn.execute(query.order_by(api_keys.c.id)).all()]


def revoke_key(conn: Connection, key_id: int, at_ms: int | None = None) -> int | None:
    """Revoke a key (from now on every server process refuses it within about a second:
    `KeyCache`). Returns when it was revoked: now, or earlier if it already was."""
    at = at_ms if at_ms is not None else now_ms()
    conn.execute(update(api_keys).where(api_keys.c.id == key_id, api_keys.c.revoked_ms.is_(None)).values(revoked_ms=at))
    return conn.execute(select(api_keys.c.revoked_ms).where(api_keys.c.id == key_id)).scalar_one_or_none()


def record_use(conn: Connection, used: dict[int, int]) -> None:
    """Set each key's `last_used_ms` (key id -> ms), never moving it back."""
    if not used:
        return
    conn.execute(
        update(api_keys)
        .where(api_keys.c.id == bindparam("key_id"),
               or_(api_keys.c.last_used_ms.is_(None), api_keys.c.last_used_ms < bindparam("at")))
        .values(last_used_ms=bindparam("at")),
        [{"key_id": key_id, "at": at} for key_id, at in used.items()],
    )


def revoked_since(conn: Connection, since_ms: int) -> list[str]:
    """Digests of the keys revoked at or after `since_ms` (an index range: ix_api_keys_revoked)."""
    return list(conn.execute(select(api_keys.c.key_hash).where(api_keys.c.revoked_ms >= since_ms)).scalars())


Write = Callable[[Callable[[Connection], Any]], Any]  # queue database work (the server's writer)


class KeyCache:
    """Resolves keys to principals, remembering answers so that auth costs no query on the hot
    path.

    Revocation: a revoked key stops working in every server process within about
    `refresh_interval_s` (`run`): each process asks the database once a second for the keys
    revoked lately (an index range on `revoked_ms`, a few rows at most) and forgets them. The
    look covers the last `REVOCATION_WINDOW_MS` again every time, so that neither a clock that
    differs between the machine that revoked and this one nor a lookup that raced with the
    revocation can keep a revoked key alive. `ttl_s` bounds the rest (a changed plan).

    Last use: noted in memory as a request authenticates (a clock read and a dict lookup), and
    written by `run` at most once a minute per key, never on the request path.

    Failed authentication must stay cheap, or a flood of bad keys slows everyone: unknown keys
    are remembered too, apart from the known ones (a flood of them can only push out its own
    kind) and for longer (a random key that is unknown now stays unknown), and lookups run on a
    small pool of their own threads, so that however many arrive they cannot take the threads
    that other requests use (`executor`)."""

    REVOCATION_WINDOW_MS = 120_000

    def __init__(self, engine: Engine, ttl_s: float = 30.0, negative_ttl_s: float = 300.0,
                 max_entries: int = 100_000, lookup_threads: int = 4, refresh_interval_s: float = 1.0,
                 use_interval_s: float = 60.0):
        self._engine = engine
        self._ttl = ttl_s
        self._negative_ttl = negative_ttl_s
        self._max = max_entries
        self._known: dict[str, tuple[float, Principal]] = {}
        self._unknown: dict[str, float] = {}  # digest -> until when it is known to be unknown
        self.executor = ThreadPoolExecutor(lookup_threads, thread_name_prefix="key-lookup")
        self.refresh_interval_s = refresh_interval_s
        self._use_interval = use_interval_s
        self._use_noted: dict[int, float] = {}  # key id -> when its last use was last queued (monotonic)
        self._used: dict[int, int] = {}  # key id -> last use (ms) not written yet
        self._task: asyncio.Task[None] | None = None

    def get(self, digest: str) -> Principal | None:
        """The principal of a key, by its `hash_key` digest (plaintext keys are never kept in
        memory). Blocking (may query the database); call on `executor` when not cached."""
        hit, principal = self.cached(digest)
        if hit:
            return principal
        with reading(self._engine) as conn:
            principal = lookup(conn, digest)
        now = time.monotonic()
        if principal is None:
            if len(self._unknown) >= self._max:
                self._unknown.clear()
            self._unknown[digest] = now + self._negative_ttl
        else:
            if len(self._known) >= self._max:
                self._known.clear()
            self._known[digest] = (now + self._ttl, principal)
        return principal

    def cached(self, digest: str) -> tuple[bool, Principal | None]:
        """(hit, principal) for a key's digest, without touching the database."""
        known = self._known.get(digest)
        if known is not None and known[0] > time.monotonic():
            return True, known[1]
        unknown = self._unknown.get(digest)
        if unknown is not None and unknown > time.monotonic():
            return True, None
        return False, None

    def note_use(self, key_id: int) -> None:
        """A request authenticated with this key: remember when, to be written by `run` (at most
        once per `use_interval_s` per key)."""
        now = time.monotonic()
        if now - self._use_noted.get(key_id, -self._use_interval) >= self._use_interval:
            if len(self._use_noted) >= self._max:
                self._use_noted.clear()
            self._use_noted[key_id] = now
            self._used[key_id] = now_ms()

    def forget_revoked(self, since_ms: int) -> int:
        """Drop the keys revoked since `since_ms` from the cache, and remember them as unknown.
        Blocking (one query). Returns how many were revoked in that window."""
        with reading(self._engine) as conn:
            digests = revoked_since(conn, since_ms)
        until = time.monotonic() + self._negative_ttl
        for digest in digests:
            self._known.pop(digest, None)
            self._unknown[digest] = until
        return len(digests)

    def take_used(self) -> dict[int, int]:
        """The last uses noted since the previous call (key id -> ms)."""
        used, self._used = self._used, {}
        return used

    def start(self, write: Write) -> None:
        """Run `run` in the background (on the running event loop) until `close`."""
        self._task = asyncio.get_running_loop().create_task(self.run(write))

    async def run(self, write: Write) -> None:
        """Forever: every `refresh_interval_s`, forget the keys revoked lately and queue the
        noted last uses for `write` (the server's writer: no extra lock on SQLite)."""
        while True:
            started = now_ms()
            try:
                await asyncio.to_thread(self.forget_revoked, started - self.REVOCATION_WINDOW_MS)
                used = self.take_used()
                if used:
                    write(lambda conn: record_use(conn, used))
            except Exception:  # noqa: BLE001 - a database hiccup must not end revocation checks
                log.exception("checking revoked API keys failed; trying again")
            await asyncio.sleep(self.refresh_interval_s)

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.close()

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
