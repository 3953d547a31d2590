"""Idempotency-Key records (store.idempotency) on SQLite and PostgreSQL: what a claim decides in
each state, expiry and purge, and a dead server's records."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, insert, select

from switchboard.store import idempotency as records
from switchboard.store.schema import holds, idempotency_keys, users

DAY = 86_400_000
T0 = 1_700_000_000_000


def claim(engine: Engine, key: str = "k", *, user: int = 1, body: str = "fp", stream: bool = False,
          now: int = T0) -> records.Claim:
    with engine.begin() as conn:
        return records.claim(conn, user_id=user, key=key, endpoint="chat.completions", fingerprint=body,
                             stream=stream, now_ms=now, ttl_ms=DAY)


def run(engine: Engine, fn: Any, **kw: Any) -> Any:
    with engine.begin() as conn:
        return fn(conn, **kw)


def setup(engine: Engine) -> None:
    with engine.begin() as conn:
        for uid in (1, 2):
            conn.execute(insert(users).values(id=uid, email=f"u{uid}@example.com", plan="free", created_ms=1))


def hold(engine: Engine, request_id: str, status: str, charged: int | None = None) -> None:
    with engine.begin() as conn:
        conn.execute(insert(holds).values(user_id=1, request_id=request_id, amount_ucr=10, status=status, model="m",
                                          created_ms=T0, expires_ms=T0 + DAY, charged_ucr=charged))


def test_claim_complete_replay_and_conflicts(engine: Engine) -> None:
    setup(engine)
    first = claim(engine)
    assert (first.outcome, first.attempt, first.request_id) == ("run", 1, "k")
    assert claim(engine).outcome == "running"  # a second request while the first runs
    assert claim(engine, user=2).outcome == "run"  # keys are per user
    assert claim(engine, body="other").outcome == "reused"
    assert run(engine, records.complete, row_id=first.row_id, attempt=1, response=b"sealed", now_ms=T0 + 5, ttl_ms=DAY)
    replay = claim(engine, now=T0 + 10)
    assert replay.outcome == "replay" and replay.response == b"sealed" and replay.request_id == "k"
    # A late completion of an attempt that is no longer current changes nothing.
    assert not run(engine, records.complete, row_id=first.row_id, attempt=1, response=b"x", now_ms=T0, ttl_ms=DAY)


def test_a_released_attempt_runs_again_under_a_new_request_id(engine: Engine) -> None:
    setup(engine)
    first = claim(engine)
    assert run(engine, records.release, row_id=first.row_id, attempt=1, now_ms=T0 + 1)
    again = claim(engine, now=T0 + 2)
    assert (again.outcome, again.attempt, again.request_id) == ("run", 2, "k~2")
    assert claim(engine, now=T0 + 3).outcome == "running"
    assert not run(engine, records.release, row_id=first.row_id, attempt=1, now_ms=T0 + 4)  # stale attempt


def test_a_stream_is_refused_once_sent(engine: Engine) -> None:
    setup(engine)
    first = claim(engine, stream=True)
    run(engine, records.complete, row_id=first.row_id, attempt=1, response=None, now_ms=T0, ttl_ms=DAY)
    assert claim(engine, stream=True).outcome == "stream"


def test_expired_records_are_forgotten_and_purged(engine: Engine) -> None:
    setup(engine)
    first = claim(engine)
    run(engine, records.complete, row_id=first.row_id, attempt=1, response=b"sealed", now_ms=T0, ttl_ms=DAY)
    hold(engine, "k", "settled", 5)
    assert claim(engine, now=T0 + DAY - 1).outcome == "replay"
    # After 24 hours the key is a new request, under a request id the ledger has not seen.
    later = claim(engine, body="new body", now=T0 + DAY)
    assert later.outcome == "run" and later.request_id == "k~2"
    other = claim(engine, "other", now=T0)
    assert run(engine, records.purge, now_ms=T0 + DAY + 1) == 1  # `other` expired; `k` was renewed
    with engine.connect() as conn:
        assert conn.execute(select(idempotency_keys.c.idem_key)).scalars().all() == ["k"]
    assert other.outcome == "run"
    # A purged key whose request id the ledger knows runs under a fresh one.
    hold(engine, "gone", "settled", 5)
    fresh = claim(engine, "gone", now=T0 + 2 * DAY)
    assert fresh.outcome == "run" and fresh.request_id != "gone"


def test_records_left_by_a_dead_server(engine: Engine) -> None:
    setup(engine)
    charged = claim(engine, "charged")
    voided = claim(engine, "voided")
    active = claim(engine, "active")
    hold(engine, "charged", "settled", 7)
    hold(engine, "voided", "voided")
    hold(engine, "active", "active")
    soon, later = T0 + 1000, T0 + records.STALE_AFTER_MS + 1
    assert {k: claim(engine, k, now=soon).outcome for k in ("charged", "voided", "active")} == {
        "charged": "running", "voided": "running", "active": "running"}  # may still be finishing
    assert claim(engine, "active", now=later).outcome == "running"  # its hold is live
    assert claim(engine, "charged", now=later).outcome == "lost"  # charged, answer gone: never again
    retry = claim(engine, "voided", now=later)  # charged nothing: runs again
    assert retry.outcome == "run" and retry.attempt == 2
    assert charged.row_id != voided.row_id != active.row_id
