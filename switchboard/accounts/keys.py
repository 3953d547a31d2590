"""API keys: random, shown once, stored as SHA-256 hashes.

A plain (unsalted) SHA-256 is the right hash here, unlike for passwords: the key carries 256
random bits, so there is nothing to brute-force, and a fast hash keeps auth off the hot path.
"""

from __future__ import annotations

import hashlib
import secrets
import time
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
    """Resolves keys to principals, remembering answers briefly so that auth costs no query on
    the hot path. A revoked key stops working within `ttl_s`. Unknown keys are cached too (for
    less time) so a flood of bad keys cannot hammer the database."""

    def __init__(self, engine: Engine, ttl_s: float = 30.0, negative_ttl_s: float = 2.0, max_entries: int = 100_000):
        self._engine = engine
        self._ttl = ttl_s
        self._negative_ttl = negative_ttl_s
        self._max = max_entries
        self._entries: dict[str, tuple[float, Principal | None]] = {}

    def get(self, digest: str) -> Principal | None:
        """The principal of a key, by its `hash_key` digest (plaintext keys are never kept in
        memory). Blocking (may query the database); call from a thread when not cached."""
        hit, principal = self.cached(digest)
        if hit:
            return principal
        with reading(self._engine) as conn:
            principal = lookup(conn, digest)
        if len(self._entries) >= self._max:
            self._entries.clear()
        now = time.monotonic()
        self._entries[digest] = (now + (self._ttl if principal else self._negative_ttl), principal)
        return principal

    def cached(self, digest: str) -> tuple[bool, Principal | None]:
        """(hit, principal) for a key's digest, without touching the database."""
        hit = self._entries.get(digest)
        if hit is not None and hit[0] > time.monotonic():
            return True, hit[1]
        return False, None
