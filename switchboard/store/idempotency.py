"""Idempotency-Key records: which request first used a key, and what became of it.

Rows only (the response arrives here already encrypted; api.idempotency does that). Each
function is one unit of database work for the transaction runner: pure database work, safe to
re-run. A row is `running` from its claim, then `done` (its response kept, or a stream that was
sent) or `failed` (it charged nothing and left no answer: the key may be used again to retry).

A claim decides what a request with a key gets:

- run: a new key, or a retry after a failure (a fresh ledger request id per attempt, since the
  ledger never reuses one), or an expired record (its key is forgotten after 24 hours);
- replay: the stored response of a completed non-streaming request with the same body;
- reused: the key came first with another body or endpoint (422);
- running: the first is still in flight (409);
- stream: the first was a stream, which cannot be replayed (409);
- lost: the first was charged but its response was never stored (its server died in between;
  409, for charging it again is not allowed).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, Row, delete, select, update

from switchboard.core.ids import new_id
from switchboard.store.conflict import insert_or_ignore
from switchboard.store.schema import holds, idempotency_keys

# How long a `running` record whose request shows no sign of life (no active hold) is still
# believed to be running: from the claim to the hold, and from the settlement to storing the
# response, take milliseconds; only a dead server leaves a record like that for long.
STALE_AFTER_MS = 30_000

_T = idempotency_keys.c


@dataclass(frozen=True, slots=True)
class Claim:
    outcome: str  # run | replay | reused | running | stream | lost
    row_id: int
    attempt: int
    request_id: str  # the ledger request id of the attempt (to run, or that ran)
    response: bytes | None = None  # replay: the encrypted response


def claim(conn: Connection, *, user_id: int, key: str, endpoint: str, fingerprint: str, stream: bool,
          now_ms: int, ttl_ms: int) -> Claim:
    row = _find(conn, user_id, key)
    if row is None:
        request_id = key if not _ledger_knows(conn, user_id, key) else new_id()
        inserted = insert_or_ignore(conn, idempotency_keys, dict(
            user_id=user_id, idem_key=key, endpoint=endpoint, fingerprint=fingerprint, stream=stream,
            status="running", attempt=1, request_id=request_id, response=None,
            created_ms=now_ms, updated_ms=now_ms, expires_ms=now_ms + ttl_ms,
        ), on=["user_id", "idem_key"])
        row = _find(conn, user_id, key)
        assert row is not None
        if inserted:
            return Claim("run", row.id, 1, request_id)
        return Claim("running", row.id, row.attempt, row.request_id)  # another request claimed it just now
    if row.expires_ms <= now_ms:  # forgotten: a new request that happens to reuse the key
        return _rerun(conn, row, key, endpoint, fingerprint, stream, now_ms, ttl_ms)
    if row.endpoint != endpoint or row.fingerprint != fingerprint:
        return Claim("reused", row.id, row.attempt, row.request_id)
    if row.status == "done":
        if row.stream or row.response is None:
            return Claim("stream", row.id, row.attempt, row.request_id)
        return Claim("replay", row.id, row.attempt, row.request_id, bytes(row.response))
    if row.status == "failed":
        return _rerun(conn, row, key, endpoint, fingerprint, stream, now_ms, ttl_ms)
    hold = conn.execute(select(holds.c.status, holds.c.charged_ucr)
                        .where(holds.c.user_id == user_id, holds.c.request_id == row.request_id)).first()
    if (hold is not None and hold.status == "active") or now_ms - row.updated_ms < STALE_AFTER_MS:
        return Claim("running", row.id, row.attempt, row.request_id)
    if hold is not None and (hold.charged_ucr or 0) > 0:  # its server died after charging
        return Claim("stream" if row.stream else "lost", row.id, row.attempt, row.request_id)
    return _rerun(conn, row, key, endpoint, fingerprint, stream, now_ms, ttl_ms)  # died, charging nothing


def complete(conn: Connection, *, row_id: int, attempt: int, response: bytes | None, now_ms: int, ttl_ms: int) -> bool:
    """The attempt ended with an answer (`response` encrypted; None for a stream): replayed (or,
    for a stream, refused with 409) until `ttl_ms` from now."""
    return conn.execute(update(idempotency_keys)
                        .where(_T.id == row_id, _T.attempt == attempt, _T.status == "running")
                        .values(status="done", response=response, updated_ms=now_ms, expires_ms=now_ms + ttl_ms)
                        ).rowcount == 1


def release(conn: Connection, *, row_id: int, attempt: int, now_ms: int) -> bool:
    """The attempt ended without an answer, charging nothing: a retry with the key runs again."""
    return conn.execute(update(idempotency_keys)
                        .where(_T.id == row_id, _T.attempt == attempt, _T.status == "running")
                        .values(status="failed", updated_ms=now_ms)).rowcount == 1


def purge(conn: Connection, *, now_ms: int) -> int:
    """Delete expired records (their responses with them); how many."""
    return conn.execute(delete(idempotency_keys).where(_T.expires_ms <= now_ms)).rowcount


def _find(conn: Connection, user_id: int, key: str) -> Row | None:  # type: ignore[type-arg]
    return conn.execute(select(idempotency_keys).where(_T.user_id == user_id, _T.idem_key == key)).first()


def _ledger_knows(conn: Connection, user_id: int, request_id: str) -> bool:
    return conn.execute(select(holds.c.id).where(holds.c.user_id == user_id, holds.c.request_id == request_id)
                        ).first() is not None


def _rerun(conn: Connection, row: Row, key: str, endpoint: str, fingerprint: str, stream: bool,  # type: ignore[type-arg]
           now_ms: int, ttl_ms: int) -> Claim:
    """Claim the record for a new attempt, under a ledger request id not used before."""
    attempt = row.attempt + 1
    request_id = f"{key}~{attempt}"
    if len(request_id) > 100 or _ledger_knows(conn, row.user_id, request_id):
        request_id = new_id()
    claimed = conn.execute(
        update(idempotency_keys).where(_T.id == row.id, _T.attempt == row.attempt)
        .values(endpoint=endpoint, fingerprint=fingerprint, stream=stream, status="running", attempt=attempt,
                request_id=request_id, response=None, created_ms=now_ms, updated_ms=now_ms, expires_ms=now_ms + ttl_ms)
    ).rowcount == 1
    if not claimed:  # another request took this attempt first
        return Claim("running", row.id, row.attempt, row.request_id)
    return Claim("run", row.id, attempt, request_id)
