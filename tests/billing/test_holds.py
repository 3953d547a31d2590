"""Holds and settlements a batch at a time (billing.holds): a batch does exactly what the same
operations do one by one, including where one operation depends on another of the same batch
(credits a settlement releases, a duplicate request id, a grant used up, a spending cap, grants
expiring and a new period starting part-way)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from switchboard.accounts.users import create_user
from switchboard.billing.ledger import HoldOp, HoldResult, Ledger, SettleOp
from switchboard.store.db import make_engine
from switchboard.store.migrate import upgrade

DAY = 86_400_000
C = 1_000_000  # micro-credits per credit


def _ledger_with_users(engine: Engine) -> tuple[Engine, Ledger, list[int], int]:
    """Two users; the time to start from: two days before their period ends (so a new period
    starts part-way), with a top-up of the first user expiring a day later, and a daily cap
    on the second."""
    ledger = Ledger({"free": 100 * C}, hold_timeout_ms=100 * DAY)
    with engine.begin() as conn:
        users = [create_user(conn, ledger, f"u{i}@example.com", "free").id for i in range(2)]
        t0 = ledger.balance(conn, users[0]).period_end_ms - 2 * DAY
        ledger.grant(conn, users[0], 30 * C, kind="topup", expires_ms=t0 + DAY, at_ms=t0, funded_by="sales")
        ledger.set_caps(conn, users[1], 40 * C, None)
    return engine, ledger, users, t0


def _copy(original: tuple[Engine, Ledger, list[int], int], path: Path) -> tuple[Engine, Ledger, list[int], int]:
    """The same ledger in a second database file (the same rows, to the millisecond)."""
    engine, ledger, users, t0 = original
    engine.dispose()
    shutil.copyfile(engine.url.database or "", path)
    return make_engine(f"sqlite:///{path}"), ledger, users, t0


def test_a_settlement_frees_credits_for_a_later_hold_of_the_same_batch(engine: Engine) -> None:
    engine, ledger, (uid, _), T0 = _ledger_with_users(engine)  # noqa: N806
    with engine.begin() as conn:
        first = ledger.place_hold(conn, uid, "a", 120 * C, "m", at_ms=T0)
    with engine.begin() as conn:
        results = ledger.apply(conn, [
            HoldOp(ledger, uid, "b", 60 * C, "m", at_ms=T0),  # only 10 free: refused
            SettleOp(ledger, uid, first.hold_id, 20 * C, None, at_ms=T0),  # releases 100
            HoldOp(ledger, uid, "c", 60 * C, "m", at_ms=T0),  # fits now
            HoldOp(ledger, uid, "c", 60 * C, "m", at_ms=T0),  # the same request again
        ])
    refused, settled, placed, duplicate = results
    assert isinstance(refused, HoldResult) and not refused.ok and refused.available_ucr == 10 * C
    assert settled.charged_ucr == 20 * C and settled.available_ucr == 110 * C
    assert isinstance(placed, HoldResult) and placed.ok and placed.hold_id is not None
    assert isinstance(duplicate, HoldResult) and duplicate.duplicate and duplicate.hold_id == placed.hold_id
    with engine.connect() as conn:
        assert ledger.verify(conn) == []
        assert ledger.balance(conn, uid, T0).held_ucr == 60 * C


def test_a_cap_counts_what_the_same_batch_settled(engine: Engine) -> None:
    engine, ledger, (_, uid), T0 = _ledger_with_users(engine)  # noqa: N806 - daily cap 40
    with engine.begin() as conn:
        first = ledger.place_hold(conn, uid, "a", 30 * C, "m", at_ms=T0)
    with engine.begin() as conn:
        settled, capped = ledger.apply(conn, [
            SettleOp(ledger, uid, first.hold_id, 30 * C, None, at_ms=T0),
            HoldOp(ledger, uid, "b", 15 * C, "m", at_ms=T0),  # 30 spent today + 15 > 40
        ])
    assert settled.charged_ucr == 30 * C
    assert isinstance(capped, HoldResult) and not capped.ok and capped.cap is not None and capped.cap.spent_ucr == 30 * C


Op = tuple[str, int, int, int]  # kind, user index, amount (credits) or hold choice, hours later
operation = st.one_of(
    st.tuples(st.just("hold"), st.integers(0, 1), st.integers(1, 80), st.integers(0, 30)),
    st.tuples(st.just("settle"), st.integers(0, 1), st.integers(0, 1_000), st.integers(0, 30)),
)


def _run(
    engine: Engine, ledger: Ledger, users: list[int], start: int, batches: list[list[Op]], together: bool,
) -> list[Any]:
    """Each batch in one transaction: as one `apply`, or op by op. Settlements pick among the
    holds placed by earlier batches (a hold's id is known once its batch commits)."""
    now = start
    placed: list[tuple[int, int]] = []  # (user id, hold id)
    seen: list[Any] = []
    for batch in batches:
        ops: list[HoldOp | SettleOp] = []
        for n, (kind, who, value, hours) in enumerate(batch):
            now += hours * 3_600_000
            if kind == "hold":
                ops.append(HoldOp(ledger, users[who], f"r{len(seen)}-{n}", value * C, "m", at_ms=now, min_amount_ucr=C))
            elif placed:
                uid, hold_id = placed[value % len(placed)]
                ops.append(SettleOp(ledger, uid, hold_id, (value % 90) * C, {**_USAGE, "request_id": f"s{len(seen)}-{n}"}, at_ms=now))
        with engine.begin() as conn:
            results = ledger.apply(conn, ops) if together else [ledger.apply(conn, [op])[0] for op in ops]
        for op, result in zip(ops, results):
            if isinstance(op, HoldOp) and isinstance(result, HoldResult) and result.ok and not result.duplicate:
                assert result.hold_id is not None
                placed.append((op.user_id, result.hold_id))
        seen.append(results)
    return seen


_USAGE = dict(api_key_id=None, endpoint="test", model="m", provider="p", stream=False, outcome="ok", error=None,
              prompt_tokens=1, cached_prompt_tokens=0, cache_write_tokens=0, completion_tokens=1, reasoning_tokens=0,
              ttft_ms=None, decode_tokens_per_s=None, latency_ms=1.0, cost_usd="0", route=None)

_STATE = {
    "wallets": "SELECT user_id, balance_ucr, held_ucr, debt_ucr, next_expiry_ms, period_start_ms, period_end_ms, "
               "period_allowance_ucr, alert_level FROM wallets ORDER BY user_id",
    "grants": "SELECT id, user_id, amount_ucr, remaining_ucr, expires_ms FROM grants ORDER BY id",
    "holds": "SELECT id, user_id, request_id, amount_ucr, status, charged_ucr, resolved_ms FROM holds ORDER BY id",
    "entries": "SELECT user_id, account, kind, SUM(amount_ucr), COUNT(*) FROM ledger_entries "
               "GROUP BY user_id, account, kind ORDER BY user_id, account, kind",
    "usage": "SELECT user_id, request_id, charged_ucr, created_ms FROM usage_records ORDER BY user_id, request_id",
    "notifications": "SELECT user_id, threshold_pct, period_start_ms FROM notifications ORDER BY id",
}


def _state(engine: Engine) -> dict[str, list[Any]]:
    with engine.connect() as conn:
        return {name: [tuple(row) for row in conn.execute(text(sql))] for name, sql in _STATE.items()}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(operation, min_size=1, max_size=10), min_size=1, max_size=8))
def test_a_batch_does_what_its_operations_do_one_by_one(batches: list[list[Op]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        first = make_engine(f"sqlite:///{Path(tmp) / 'one.db'}")
        upgrade(first)
        one_by_one = _ledger_with_users(first)
        together = _copy(one_by_one, Path(tmp) / "together.db")
        expected = _run(*one_by_one, batches, together=False)
        assert _run(*together, batches, together=True) == expected
        assert _state(together[0]) == _state(one_by_one[0])
        with together[0].connect() as conn:
            assert together[1].verify(conn) == []
        for engine, *_ in (one_by_one, together):
            engine.dispose()
