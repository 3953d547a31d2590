"""The ledger's promises, on SQLite and PostgreSQL: holds, settlement once, burn order, debt, expiry."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import Engine, select

from switchboard.accounts.users import create_user
from switchboard.billing.ledger import Ledger, now_ms
from switchboard.store.runner import TransactionRunner
from switchboard.store.schema import grants, holds, usage_records

C = 1_000_000  # one credit in micro-credits
DAY = 86_400_000


def _setup(engine: Engine, plan: str = "free") -> tuple[TransactionRunner, Ledger, int]:
    ledger = Ledger({"free": 100 * C, "plus": 6000 * C, "payg": 0}, hold_timeout_ms=60_000)
    runner = TransactionRunner(engine)
    runner.start()
    user = runner.submit(lambda c: create_user(c, ledger, "u@example.com", plan)).result()
    return runner, ledger, user.id


def _balance(engine: Engine, ledger: Ledger, uid: int, at: int | None = None):  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return ledger.balance(conn, uid, at)


def _verify(engine: Engine, ledger: Ledger) -> list:  # type: ignore[type-arg]
    with engine.connect() as conn:
        return ledger.verify(conn)


def test_new_user_gets_plan_allowance(engine: Engine) -> None:
    """A plan the operator set (no Stripe payment) is a gift: its allowance comes from
    promotions, never from sales, in this period and the next."""
    runner, ledger, uid = _setup(engine, "plus")
    b = _balance(engine, ledger, uid)
    assert b.available_ucr == 6000 * C
    runner.submit(lambda c: ledger.place_hold(c, uid, "next", C, "m", at_ms=b.period_end_ms + 1)).result()
    with engine.connect() as conn:
        assert ledger.account_balances(conn) == {"promotions": -12000 * C, "wallet": 6000 * C, "breakage": 6000 * C}
    runner.stop()


def test_hold_then_settle_charges_exactly_once(engine: Engine) -> None:
    runner, ledger, uid = _setup(engine)
    held = runner.submit(lambda c: ledger.place_hold(c, uid, "req-1", 10 * C, "m")).result()
    assert held.ok and held.available_ucr == 90 * C
    assert _balance(engine, ledger, uid).held_ucr == 10 * C
    first = runner.submit(lambda c: ledger.settle(c, uid, held.hold_id, 3 * C, None)).result()
    again = runner.submit(lambda c: ledger.settle(c, uid, held.hold_id, 3 * C, None)).result()
    assert first.charged_ucr == 3 * C and not first.already_resolved
    assert again.already_resolved
    b = _balance(engine, ledger, uid)
    assert (b.available_ucr, b.held_ucr) == (97 * C, 0)
    assert _verify(engine, ledger) == []
    runner.stop()


def test_hold_refused_when_not_enough(engine: Engine) -> None:
    runner, ledger, uid = _setup(engine)
    refused = runner.submit(lambda c: ledger.place_hold(c, uid, "big", 101 * C, "m")).result()
    assert not refused.ok and refused.available_ucr == 100 * C and refused.needed_ucr == 101 * C
    runner.stop()


def test_same_request_id_is_never_held_twice(engine: Engine) -> None:
    runner, ledger, uid = _setup(engine)
    runner.submit(lambda c: ledger.place_hold(c, uid, "same", C, "m")).result()
    dup = runner.submit(lambda c: ledger.place_hold(c, uid, "same", C, "m")).result()
    assert dup.duplicate and not dup.ok
    assert _balance(engine, ledger, uid).held_ucr == C
    runner.stop()


def test_zero_charge_voids_and_usage_record_is_written(engine: Engine) -> None:
    runner, ledger, uid = _setup(engine)
    held = runner.submit(lambda c: ledger.place_hold(c, uid, "r", 5 * C, "m")).result()
    usage = dict(request_id="r", api_key_id=None, endpoint="t", model="m", provider="p", stream=False,
                 outcome="error", error="boom", prompt_tokens=0, cached_prompt_tokens=0, cache_write_tokens=0,
                 completion_tokens=0, reasoning_tokens=0, ttft_ms=None, decode_tokens_per_s=None, latency_ms=1.0,
                 cost_usd="0", route=None)
    runner.submit(lambda c: ledger.settle(c, uid, held.hold_id, 0, usage)).result()
    with engine.connect() as conn:
        rows = conn.execute(select(usage_records.c.outcome, usage_records.c.charged_ucr)).all()
        assert rows == [("error", 0)]
        assert conn.execute(select(holds.c.status).where(holds.c.id == held.hold_id)).scalar_one() == "voided"
    assert _balance(engine, ledger, uid).available_ucr == 100 * C
    runner.stop()


def test_burn_order_soonest_expiry_first_then_oldest(engine: Engine) -> None:
    runner, ledger, uid = _setup(engine)  # allowance: 100, expires at period end (~1 month)
    soon = runner.submit(lambda c: ledger.grant(c, uid, 10 * C, kind="topup", expires_ms=None)).result()
    runner.submit(lambda c: ledger.grant(c, uid, 20 * C, kind="promo", expires_ms=1)).result()  # already past
    held = runner.submit(lambda c: ledger.place_hold(c, uid, "r", 105 * C, "m")).result()
    assert held.ok  # 100 allowance + 10 top-up; the expired 20 do not count
    runner.submit(lambda c: ledger.settle(c, uid, held.hold_id, 105 * C, None)).result()
    with engine.connect() as conn:
        remaining = dict(conn.execute(select(grants.c.kind, grants.c.remaining_ucr)).all())
    assert remaining == {"allowance": 0, "topup": 5 * C, "promo": 0}  # allowance burned first
    assert soon is not None
    assert _verify(engine, ledger) == []
    runner.stop()


def test_usage_beyond_the_hold_is_the_operators_loss_never_debt(engine: Engine) -> None:
    """A vendor that reports more than the hold covered: the user pays the hold, the rest is
    booked to operator_losses (funded by promotions), the user owes nothing, verify agrees."""
    runner, ledger, uid = _setup(engine)
    held = runner.submit(lambda c: ledger.place_hold(c, uid, "r", 60 * C, "m")).result()
    done = runner.submit(lambda c: ledger.settle(c, uid, held.hold_id, 130 * C, None)).result()  # provider said more
    assert (done.charged_ucr, done.loss_ucr) == (60 * C, 70 * C)
    b = _balance(engine, ledger, uid)
    assert (b.balance_ucr, b.debt_ucr, b.available_ucr) == (40 * C, 0, 40 * C)
    with engine.connect() as conn:
        balances = ledger.account_balances(conn)
        assert balances["operator_losses"] == 70 * C and balances["revenue"] == 60 * C
        assert balances["promotions"] == -170 * C
        assert ledger.operator_losses(conn) == (70 * C, 1)
        assert conn.execute(select(holds.c.charged_ucr)).scalar_one() == 60 * C
    assert _verify(engine, ledger) == []
    runner.stop()


def test_a_charge_never_makes_debt_when_a_grant_expired_under_the_hold(engine: Engine) -> None:
    """A top-up ran out of time while a request held it: the charge is what the grants still
    hold (nothing), the cost is the operator's loss, and the user owes nothing."""
    runner, ledger, uid = _setup(engine, "payg")  # no allowance
    t0 = now_ms()
    runner.submit(lambda c: ledger.grant(c, uid, 50 * C, kind="topup", expires_ms=t0 + 1000, at_ms=t0)).result()
    held = runner.submit(lambda c: ledger.place_hold(c, uid, "r", 40 * C, "m", at_ms=t0 + 10)).result()
    done = runner.submit(lambda c: ledger.settle(c, uid, held.hold_id, 30 * C, None, at_ms=t0 + 2000)).result()
    assert (done.charged_ucr, done.loss_ucr) == (0, 30 * C)
    b = _balance(engine, ledger, uid, t0 + 2000)
    assert (b.balance_ucr, b.debt_ucr) == (0, 0)
    assert _verify(engine, ledger) == []
    runner.stop()


def test_allowance_expires_and_renews_each_period(engine: Engine) -> None:
    runner, ledger, uid = _setup(engine)
    end = _balance(engine, ledger, uid).period_end_ms
    held = runner.submit(lambda c: ledger.place_hold(c, uid, "r", 40 * C, "m", at_ms=end - 1000)).result()
    runner.submit(lambda c: ledger.settle(c, uid, held.hold_id, 40 * C, None, at_ms=end - 500)).result()
    # Next period: the 60 left expire, a fresh 100 arrives, exactly once even if touched twice.
    for i in range(2):
        runner.submit(lambda c, i=i: ledger.place_hold(c, uid, f"n{i}", C, "m", at_ms=end + 10)).result()
    b = _balance(engine, ledger, uid, end + 20)
    assert (b.balance_ucr, b.held_ucr) == (100 * C, 2 * C)
    assert _verify(engine, ledger) == []
    runner.stop()


def test_concurrent_holds_never_overdraw(engine: Engine) -> None:
    runner, ledger, uid = _setup(engine)

    def attempt(i: int) -> bool:
        return runner.submit(lambda c: ledger.place_hold(c, uid, f"c{i}", 7 * C, "m"), order_key=uid).result().ok

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(attempt, range(200)))
    assert sum(results) == 14  # floor(100 / 7)
    b = _balance(engine, ledger, uid)
    assert b.held_ucr == 98 * C and b.available_ucr == 2 * C
    assert _verify(engine, ledger) == []
    runner.stop()


def test_renewal_landing_while_requests_are_in_flight(engine: Engine) -> None:
    runner, ledger, uid = _setup(engine)
    end = _balance(engine, ledger, uid).period_end_ms
    # Two requests hold credit just before the period ends...
    first = runner.submit(lambda c: ledger.place_hold(c, uid, "late-1", 30 * C, "m", at_ms=end - 10)).result()
    second = runner.submit(lambda c: ledger.place_hold(c, uid, "late-2", 30 * C, "m", at_ms=end - 5)).result()
    assert first.ok and second.ok
    # ...the period rolls (old allowance expires, the new one arrives) before they settle.
    runner.submit(lambda c: ledger.settle(c, uid, first.hold_id, 20 * C, None, at_ms=end + 5)).result()
    runner.submit(lambda c: ledger.settle(c, uid, second.hold_id, 25 * C, None, at_ms=end + 6)).result()
    b = _balance(engine, ledger, uid, end + 7)
    assert (b.balance_ucr, b.held_ucr, b.debt_ucr) == (55 * C, 0, 0)  # the new 100, minus 45
    with engine.connect() as conn:
        balances = ledger.account_balances(conn)
        assert balances["breakage"] == 100 * C and balances["revenue"] == 45 * C
        assert ledger.verify(conn) == []
    runner.stop()
