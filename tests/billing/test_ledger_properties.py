"""Property-based tests: random sequences of grants, holds, settlements (under, at and over the
hold), voids, expiries, refunds and period rolls never break a ledger invariant, never overdraw,
never charge beyond a hold, and never lose or double-count a micro-credit."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from switchboard.accounts.users import create_user
from switchboard.billing.ledger import Ledger
from switchboard.store.db import make_engine
from switchboard.store.migrate import upgrade

DAY = 86_400_000
T0 = 1_767_225_600_000  # 2026-01-01

ops = st.lists(
    st.one_of(
        st.tuples(st.just("grant"), st.integers(1, 5_000), st.sampled_from([None, 1, 10, 40])),  # amount, expiry days
        st.tuples(st.just("hold"), st.integers(1, 3_000), st.none()),
        st.tuples(st.just("settle"), st.integers(0, 4_000), st.integers(0, 50)),  # charge, which hold
        st.tuples(st.just("advance"), st.integers(1, 20), st.none()),  # days
        st.tuples(st.just("refund"), st.integers(1, 6_000), st.integers(0, 50)),  # amount, which grant
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_random_operations_keep_every_invariant(operations: list[tuple[str, int, int | None]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(f"sqlite:///{Path(tmp) / 'l.db'}")
        upgrade(engine)
        ledger = Ledger({"free": 1_000}, hold_timeout_ms=10 * DAY)
        now = T0
        with engine.begin() as conn:
            uid = create_user(conn, ledger, "p@example.com", "free").id
        open_holds: list[tuple[int, int]] = []  # (hold id, amount)
        granted = charged = lost = requests_made = 0
        grant_ids: list[int] = []
        refunds: list[int] = []
        for op, a, b in operations:
            with engine.begin() as conn:
                before = ledger.balance(conn, uid, now)
                if op == "grant":
                    expires = None if b is None else now + b * DAY
                    grant_ids.append(ledger.grant(conn, uid, a, kind="topup", expires_ms=expires, at_ms=now,
                                                  funded_by="sales"))
                    granted += a
                elif op == "hold":
                    requests_made += 1
                    held = ledger.place_hold(conn, uid, f"r{requests_made}", a, "m", at_ms=now)
                    # Never overdraw: a hold is placed exactly when it fits what is available.
                    assert held.ok == (a <= before.available_ucr)
                    if held.ok:
                        open_holds.append((held.hold_id, a))
                elif op == "settle" and open_holds:
                    hold_id, amount = open_holds.pop(b % len(open_holds))
                    result = ledger.settle(conn, uid, hold_id, a, None, at_ms=now)
                    assert not result.already_resolved
                    # Never beyond the hold: the rest of the cost is the operator's loss.
                    assert result.charged_ucr <= amount and result.charged_ucr + result.loss_ucr == a
                    again = ledger.settle(conn, uid, hold_id, a, None, at_ms=now)
                    assert again.already_resolved and again.charged_ucr == result.charged_ucr  # exactly once
                    charged += result.charged_ucr
                    lost += result.loss_ucr
                elif op == "advance":
                    now += a * DAY
                elif op == "refund" and grant_ids:
                    grant_id = grant_ids[b % len(grant_ids)]
                    ledger.reverse_grant(conn, uid, grant_id, a, reason="refund", source_ref=f"refund-{len(refunds)}", at_ms=now)
                    refunds.append(grant_id)
            with engine.connect() as conn:
                assert ledger.verify(conn) == [], (op, a, b)
                balances = ledger.account_balances(conn)
                assert sum(balances.values()) == 0
                b_now = ledger.balance(conn, uid, now)
                assert b_now.held_ucr == sum(amount for _, amount in open_holds)
                assert b_now.available_ucr >= 0
        with engine.begin() as conn:
            ledger.place_hold(conn, uid, "final-touch", 1, "m", at_ms=now)  # brings expiries up to date
        with engine.connect() as conn:
            balances = ledger.account_balances(conn)
            # Every credit is accounted for: what came in is held, spent, owed or expired.
            given_total = -(balances.get("promotions", 0) + balances.get("sales", 0))
            assert given_total >= granted + 1_000
            assert balances.get("revenue", 0) == charged
            assert balances.get("operator_losses", 0) == lost
            assert given_total == (balances.get("wallet", 0) + balances.get("receivables", 0)
                                   + balances.get("revenue", 0) + balances.get("breakage", 0)
                                   + balances.get("refunds", 0) + balances.get("operator_losses", 0))
        engine.dispose()
