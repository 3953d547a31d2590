"""API keys: random, shown once, stored as SHA-256 hashes.

A plain (unsalted) SHA-256 is the right hash here, unlike for passwords: the key carries 256
random bits, so there is nothing to brute-force, and a fast hash keeps auth off the hot path.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, insert, select

from switchboard.billing.ledger import now_ms
from switchboard.store.db import reading
from switchboard.store.schema import api_keys, users

KEY_PREFIX = "sb-"


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
            user_id=user_id, key_hash=hash_key(key), prefix=key[:10], name=name, created_ms=now_ms()
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


class KeyCache:
    """Resolves keys to principals, remembering answers so that auth costs no query on the hot
    path. A revoked key stops working within `ttl_s`.

    Failed authentication must stay cheap, or a flood of bad keys slows everyone: unknown keys
    are remembered too, apart from the known ones (a flood of them can only push out its own
    kind) and for longer (a random key that is unknown now stays unknown), and lookups run on a
    small pool of their own threads, so that however many arrive they cannot take the threads
    that other requests use (`executor`)."""

    def __init__(self, engine: Engine, ttl_s: float = 30.0, negative_ttl_s: float = 300.0,
                 max_entries: int = 100_000, lookup_threads: int = 4):
        self._engine = engine
        self._ttl = ttl_s
        self._negative_ttl = negative_ttl_s
        self._max = max_entries
        self._known: dict[str, tuple[float, Principal]] = {}
        self._unknown: dict[str, float] = {}  # digest -> until when it is known to be unknown
        self.executor = ThreadPoolExecutor(lookup_threads, thread_name_prefix="key-lookup")

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

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
