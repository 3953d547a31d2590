"""The record of Stripe's webhook events, and the queue of those not applied yet.

Every signed event is recorded once (`payment_events`, unique on the event id). One that
cannot be applied yet is `pending`: it names what it waits for (the Stripe ids of a payment,
subscription or customer: `payment_event_waits`) and is tried again at once when an event
mentioning one of them is applied, and otherwise at `next_attempt_ms`, with exponential
backoff, oldest due first: a retried event goes behind every other due one, so no stuck event
keeps another from its turn. After PARK_AFTER_ATTEMPTS tries it is `parked`, out of the timed
retries but still woken by what it waits for; a malformed event is parked at once. Parked
events are what an operator looks at (`switchboard payments pending`, `payments retry`).

On PostgreSQL events are handled one at a time across all processes (`serialize`: a
transaction-scoped advisory lock), as SQLite's write lock does anyway: a refund and its
purchase arriving together at two processes then cannot each miss the other.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from switchboard.billing.stripe_events import Envelope
from switchboard.store.billing_schema import payment_event_waits, payment_events

PROCESSED, PENDING, PARKED = "processed", "pending", "parked"
PARK_AFTER_ATTEMPTS = 8
FIRST_RETRY_MS = 60_000  # then doubling: 1, 2, 4 ... minutes
MAX_RETRY_MS = 6 * 3_600_000
_LOCK = text("SELECT pg_advisory_xact_lock(5378929340316100417)")  # any constant: "Stripe events"
e = payment_events.c


@dataclass(frozen=True, slots=True)
class QueuedEvent:
    """A recorded event, as `switchboard payments pending` shows it."""

    id: int
    event_id: str
    type: str
    status: str
    user_id: int | None
    attempts: int
    received_ms: int
    next_attempt_ms: int | None
    reason: str | None

    def as_json(self) -> dict[str, Any]:
        return {field: getattr(self, field) for field in self.__slots__}


def serialize(conn: Connection) -> None:
    """Handle Stripe events one transaction at a time (PostgreSQL; SQLite's writers already are)."""
    if conn.dialect.name == "postgresql":
        conn.execute(_LOCK)


def record(conn: Connection, env: Envelope, at: int) -> int | None:
    """Record a newly received event; its row id, or None if it was received before."""
    try:
        with conn.begin_nested():
            return int(conn.execute(insert(payment_events).values(
                event_id=env.event_id, type=env.type, created_ms=env.created_ms if env.created_ms is not None else at,
                received_ms=at, status=PENDING, next_attempt_ms=at,
            ).returning(e.id)).scalar_one())
    except IntegrityError:
        return None


def applied(conn: Connection, row: int, user_id: int | None, detail: str, at: int) -> None:
    _forget_waits(conn, row)
    conn.execute(update(payment_events).where(e.id == row).values(
        status=PROCESSED, processed_ms=at, user_id=user_id, outcome=detail[:1000], payload=None, next_attempt_ms=None,
        attempts=e.attempts + 1))


def waiting(conn: Connection, row: int, reason: str, waits: Iterable[str], event: dict[str, Any], at: int) -> str:
    """Not applicable yet: retried later, with backoff, or parked after too many tries. Returns
    the status it is left in."""
    attempts = int(conn.execute(select(e.attempts).where(e.id == row)).scalar_one()) + 1
    _forget_waits(conn, row)
    refs = sorted(set(waits))
    if refs:
        conn.execute(insert(payment_event_waits), [{"event_row_id": row, "ref": ref} for ref in refs])
    parked = attempts >= PARK_AFTER_ATTEMPTS
    conn.execute(update(payment_events).where(e.id == row).values(
        status=PARKED if parked else PENDING, attempts=attempts, outcome=reason[:1000],
        next_attempt_ms=None if parked else at + min(FIRST_RETRY_MS << (attempts - 1), MAX_RETRY_MS),
        payload=_payload(event)))
    return PARKED if parked else PENDING


def park(conn: Connection, row: int, reason: str, event: dict[str, Any], user_id: int | None = None) -> None:
    """Cannot be applied as it is: kept with the reason (and the user, if known), for an operator."""
    conn.execute(update(payment_events).where(e.id == row).values(
        status=PARKED, attempts=e.attempts + 1, outcome=reason[:1000], next_attempt_ms=None, user_id=user_id,
        payload=_payload(event)))


def waiting_on(conn: Connection, refs: Iterable[str | None]) -> list[tuple[int, dict[str, Any]]]:
    """The events not applied yet that wait for any of these Stripe ids, oldest first."""
    wanted = sorted({r for r in refs if r})
    if not wanted:
        return []
    w = payment_event_waits.c
    rows = conn.execute(
        select(e.id, e.payload).where(e.id.in_(select(w.event_row_id).where(w.ref.in_(wanted))), e.status != PROCESSED)
        .order_by(e.id)
    ).all()
    return [(int(row.id), json.loads(row.payload)) for row in rows]


def due(conn: Connection, at: int, limit: int) -> list[tuple[int, dict[str, Any]]]:
    """Up to `limit` pending events whose next try is due, the longest due first."""
    rows = conn.execute(
        select(e.id, e.payload).where(e.status == PENDING, e.next_attempt_ms <= at)
        .order_by(e.next_attempt_ms, e.id).limit(limit)
    ).all()
    return [(int(row.id), json.loads(row.payload)) for row in rows]


def requeue(conn: Connection, ref: str, at: int) -> tuple[int, dict[str, Any]] | None:
    """An operator's retry: the event (by row id or Stripe event id), pending and due now;
    None if there is no such event or it was applied already."""
    key = e.id == int(ref) if ref.isascii() and ref.isdigit() and len(ref) < 19 else e.event_id == ref
    row = conn.execute(select(e.id, e.payload).where(key, e.status != PROCESSED)).first()
    if row is None or row.payload is None:
        return None
    conn.execute(update(payment_events).where(e.id == row.id).values(status=PENDING, next_attempt_ms=at))
    return int(row.id), json.loads(row.payload)


def not_applied(conn: Connection, limit: int = 200) -> list[QueuedEvent]:
    """Pending and parked events, parked first, then by when they were received."""
    rows = conn.execute(
        select(e.id, e.event_id, e.type, e.status, e.user_id, e.attempts, e.received_ms, e.next_attempt_ms, e.outcome)
        .where(e.status != PROCESSED).order_by((e.status == PARKED).desc(), e.received_ms, e.id).limit(limit)
    ).all()
    return [QueuedEvent(int(r.id), r.event_id, r.type, r.status, r.user_id, int(r.attempts), int(r.received_ms),
                        r.next_attempt_ms, r.outcome) for r in rows]


def counts(conn: Connection) -> dict[str, int]:
    """How many events are pending and parked."""
    rows = conn.execute(select(e.status, func.count()).where(e.status != PROCESSED).group_by(e.status)).all()
    return {PENDING: 0, PARKED: 0, **{status: int(n) for status, n in rows}}


def _forget_waits(conn: Connection, row: int) -> None:
    conn.execute(delete(payment_event_waits).where(payment_event_waits.c.event_row_id == row))


def _payload(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"))
