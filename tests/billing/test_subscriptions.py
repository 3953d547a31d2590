"""The subscription lifecycle on SQLite and PostgreSQL: subscribe, renew, upgrade, downgrade,
cancel at period end, payment failure, reactivation, and events in any order."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from switchboard.billing import subscriptions as subs
from switchboard.store.schema import grants, users, wallets
from tests.billing.billing_support import C, World
from tests.fakes import stripe_api as fs

DAY_S = 86400


@pytest.fixture
def world(engine: Engine, tmp_path: Path) -> World:
    return World(engine, tmp_path)


def _plan(world: World, uid: int) -> str:
    return world.read(lambda c: c.execute(select(users.c.plan).where(users.c.id == uid)).scalar_one())


def _sub(world: World, uid: int) -> subs.Subscription:
    sub = world.read(lambda c: subs.get(c, uid))
    assert sub is not None
    return sub


def _allowances(world: World, uid: int) -> list[tuple[str, int]]:
    return world.read(lambda c: [tuple(r) for r in c.execute(
        select(grants.c.source_ref, grants.c.amount_ucr).where(grants.c.user_id == uid, grants.c.kind == "allowance")
        .order_by(grants.c.id)).all()])


def _subscribe(world: World, uid: int, plan: str = "plus", start: int | None = None) -> tuple[int, int]:
    start = start if start is not None else int(time.time()) - DAY_S
    end = start + 30 * DAY_S
    world.send(fs.event("checkout.session.completed", fs.plan_session(uid, plan, "cus_1", "sub_1")))
    world.send(fs.event("invoice.paid", fs.invoice(uid, plan, "cus_1", "sub_1", start, end, billing_reason="subscription_create")))
    return start, end


def test_subscribe_grants_the_allowance_and_aligns_the_wallet_period(world: World) -> None:
    uid = world.user()
    start, end = _subscribe(world, uid)
    sub = _sub(world, uid)
    assert (sub.status, sub.plan, sub.stripe_subscription_id, sub.stripe_customer_id) == ("active", "plus", "sub_1", "cus_1")
    assert _plan(world, uid) == "plus"
    assert world.available(uid) == (100 + 6000) * C
    wallet = world.read(lambda c: c.execute(select(wallets).where(wallets.c.user_id == uid)).first())
    assert (wallet.period_start_ms, wallet.period_end_ms) == (start * 1000, end * 1000)
    balances = world.check()
    assert balances["sales"] == -6000 * C and balances["promotions"] == -100 * C


def test_renewal_comes_from_the_paid_invoice_once_and_never_from_the_lazy_roll(world: World) -> None:
    uid = world.user()
    start, end = _subscribe(world, uid)
    after_end = end * 1000 + 1000
    world.write(lambda c: world.ledger._lock(c, uid, after_end))  # the ledger's roll: no grant for a subscriber
    before = world.available(uid, after_end)  # the plus allowance expired (the free one from sign-up may not have)
    assert before <= 100 * C
    assert len(_allowances(world, uid)) == 2
    renewal = fs.invoice(uid, "plus", "cus_1", "sub_1", end, end + 30 * DAY_S)
    for _ in range(2):
        world.send(fs.event("invoice.paid", renewal), at_ms=after_end)
    assert [ref for ref, _ in _allowances(world, uid)][-1] == f"allowance:{uid}:{end * 1000}"
    assert len(_allowances(world, uid)) == 3
    assert world.available(uid, after_end) == before + 6000 * C
    world.check()


def test_upgrade_is_immediate_with_the_prorated_difference(world: World) -> None:
    uid = world.user()
    start, end = _subscribe(world, uid, "plus")
    halfway = (start + 15 * DAY_S) * 1000
    assert world.write(lambda c: subs.change_plan(c, world.ledger, world.settings, uid, "pro", halfway)) == "upgraded"
    assert _plan(world, uid) == "pro" and _sub(world, uid).plan == "pro"
    assert world.available(uid, halfway) == (100 + 6000 + 6000) * C  # (18000 - 6000) / 2
    # The same upgrade again (a replayed event) grants nothing more.
    world.write(lambda c: subs.change_plan(c, world.ledger, world.settings, uid, "pro", halfway))
    assert world.available(uid, halfway) == (100 + 12000) * C
    world.check()


def test_refunding_an_upgrades_prorated_invoice_takes_back_its_credits(world: World) -> None:
    """The prorated invoice of an upgrade paid for the upgrade's credits: refunded, they go
    (half refunded, half of them), whichever of the invoice and the upgrade arrives first."""
    uid = world.user()
    start, _ = _subscribe(world, uid, "plus")
    proration = fs.invoice(uid, "pro", "cus_1", "sub_1", start + 15 * DAY_S, start + 30 * DAY_S,
                           billing_reason="subscription_update", payment_intent="pi_upgrade")
    assert world.send(fs.event("invoice.paid", proration)).status == "pending"  # no upgrade yet
    world.send(fs.event("customer.subscription.updated", fs.subscription(uid, "pro", "cus_1", "sub_1")))
    upgrade = world.available(uid) - (100 + 6000) * C
    assert upgrade > 0
    world.send(fs.event("charge.refunded", fs.charge("pi_upgrade", 1000, 500)))
    assert world.available(uid) == (100 + 6000) * C + upgrade - upgrade // 2
    world.send(fs.event("charge.refunded", fs.charge("pi_upgrade", 1000, 1000)))
    assert world.available(uid) == (100 + 6000) * C
    world.check()


def test_upgrade_through_a_subscription_event(world: World) -> None:
    uid = world.user()
    _subscribe(world, uid, "plus")
    out = world.send(fs.event("customer.subscription.updated", fs.subscription(uid, "pro", "cus_1", "sub_1")))
    assert "upgraded" in out.detail and _plan(world, uid) == "pro"
    assert world.available(uid) > (100 + 6000) * C
    world.check()


def test_downgrade_waits_for_the_next_period(world: World) -> None:
    uid = world.user()
    start, end = _subscribe(world, uid, "pro")
    world.send(fs.event("customer.subscription.updated", fs.subscription(uid, "plus", "cus_1", "sub_1")))
    sub = _sub(world, uid)
    assert (sub.plan, sub.pending_plan, _plan(world, uid)) == ("pro", "plus", "pro")
    assert world.available(uid) == (100 + 18000) * C  # current credits stay
    after_end = end * 1000 + 1000
    world.send(fs.event("invoice.paid", fs.invoice(uid, "plus", "cus_1", "sub_1", end, end + 30 * DAY_S)), at_ms=after_end)
    sub = _sub(world, uid)
    assert (sub.plan, sub.pending_plan, _plan(world, uid)) == ("plus", None, "plus")
    assert _allowances(world, uid)[-1][1] == 6000 * C
    world.check()


def test_going_back_to_the_paid_plan_cancels_a_pending_downgrade(world: World) -> None:
    uid = world.user()
    _subscribe(world, uid, "pro")
    world.send(fs.event("customer.subscription.updated", fs.subscription(uid, "plus", "cus_1", "sub_1")))
    assert _sub(world, uid).pending_plan == "plus"
    out = world.send(fs.event("customer.subscription.updated", fs.subscription(uid, "pro", "cus_1", "sub_1")))
    assert out.detail.endswith("downgrade cancelled")
    sub = _sub(world, uid)
    assert (sub.plan, sub.pending_plan, _plan(world, uid)) == ("pro", None, "pro")
    world.check()


def test_cancel_at_period_end_then_back_to_free(world: World) -> None:
    uid = world.user()
    start, end = _subscribe(world, uid)
    world.send(fs.event("customer.subscription.updated",
                        fs.subscription(uid, "plus", "cus_1", "sub_1", cancel_at_period_end=True)))
    sub = _sub(world, uid)
    assert sub.cancel_at_period_end and sub.status == "active" and _plan(world, uid) == "plus"
    after_end = end * 1000 + 1000
    world.send(fs.event("customer.subscription.deleted", fs.subscription(uid, "plus", "cus_1", "sub_1", status="canceled")),
               at_ms=after_end)
    sub = _sub(world, uid)
    assert sub.status == "canceled" and _plan(world, uid) == "free"
    # A late update of the ended subscription changes nothing.
    world.send(fs.event("customer.subscription.updated", fs.subscription(uid, "plus", "cus_1", "sub_1")), at_ms=after_end)
    assert _sub(world, uid).status == "canceled"
    # From the next period on, the ledger's roll grants the free allowance again.
    world.write(lambda c: world.ledger._lock(c, uid, after_end + 31 * DAY_S * 1000))
    assert _allowances(world, uid)[-1][1] == 100 * C
    world.check()


def test_payment_failure_past_due_then_reactivation(world: World) -> None:
    uid = world.user()
    start, end = _subscribe(world, uid)
    after_end = end * 1000 + 1000
    renewal = fs.invoice(uid, "plus", "cus_1", "sub_1", end, end + 30 * DAY_S)
    world.spend(uid, 50 * C, "before")  # spend some of this period's credits
    out = world.send(fs.event("invoice.payment_failed", renewal), at_ms=after_end)
    assert out.detail == "past_due" and _sub(world, uid).status == "past_due"
    # What still works: credits left can be spent (a pack bought now, for instance).
    left = world.available(uid, after_end)  # the free sign-up allowance may still be live
    world.send(fs.event("checkout.session.completed", fs.pack_session(uid, "600")), at_ms=after_end)
    world.spend(uid, 10 * C, "while-past-due", at_ms=after_end)
    # What stops: no renewal allowance, not even from the ledger's own period roll.
    assert len(_allowances(world, uid)) == 2
    assert world.available(uid, after_end) == left + 590 * C
    # Paid at last: active again, and the period's allowance arrives (once).
    world.send(fs.event("invoice.paid", renewal), at_ms=after_end + 1000)
    world.send(fs.event("invoice.payment_failed", renewal), at_ms=after_end + 2000)  # stale: already paid
    assert _sub(world, uid).status == "active"
    assert world.available(uid, after_end + 2000) == left + (590 + 6000) * C
    world.check()


def test_events_out_of_order(world: World) -> None:
    uid = world.user()
    start = int(time.time()) - DAY_S
    end = start + 30 * DAY_S
    # The invoice and the subscription arrive before the checkout that links them.
    world.send(fs.event("customer.subscription.updated", fs.subscription(uid, "plus", "cus_9", "sub_9")))
    world.send(fs.event("invoice.paid", fs.invoice(uid, "plus", "cus_9", "sub_9", start, end, billing_reason="subscription_create")))
    world.send(fs.event("checkout.session.completed", fs.plan_session(uid, "plus", "cus_9", "sub_9")))
    sub = _sub(world, uid)
    assert (sub.status, sub.plan, sub.stripe_subscription_id) == ("active", "plus", "sub_9")
    assert world.available(uid) == (100 + 6000) * C
    # An invoice that names no user waits until its subscription is known.
    uid2 = world.user("v@example.com")
    bare = fs.invoice(uid2, "plus", "cus_8", "sub_8", start, end, billing_reason="subscription_create")
    bare["parent"]["subscription_details"]["metadata"] = {}
    bare["lines"]["data"][0]["metadata"] = {"plan": "plus"}
    assert world.send(fs.event("invoice.paid", bare)).status == "pending"
    assert world.available(uid2) == 100 * C
    world.send(fs.event("checkout.session.completed", fs.plan_session(uid2, "plus", "cus_8", "sub_8")))
    assert world.available(uid2) == (100 + 6000) * C and _sub(world, uid2).status == "active"
    # An older subscription update after a newer one is ignored.
    now = int(time.time())
    world.send(fs.event("customer.subscription.updated",
                        fs.subscription(uid, "plus", "cus_9", "sub_9", cancel_at_period_end=True), created=now + 10))
    out = world.send(fs.event("customer.subscription.updated", fs.subscription(uid, "plus", "cus_9", "sub_9"), created=now))
    assert out.detail.startswith("ignored") and _sub(world, uid).cancel_at_period_end
    world.check()


def test_refund_of_a_subscription_invoice_reverses_its_allowance(world: World) -> None:
    uid = world.user()
    start = int(time.time()) - DAY_S
    inv = fs.invoice(uid, "plus", "cus_1", "sub_1", start, start + 30 * DAY_S, billing_reason="subscription_create",
                     payment_intent="pi_sub")
    world.send(fs.event("invoice.paid", inv))
    world.spend(uid, 1000 * C, "r")  # the allowance expires first: spent from it
    world.send(fs.event("charge.refunded", fs.charge("pi_sub", 1499, 1499)))
    b = world.balance(uid)
    assert (b.balance_ucr, b.available_ucr) == (-900 * C, 0)  # 1000 spent, of which up to 100 from the free allowance
    assert world.check()["refunds"] == 6000 * C


def test_resubscribe_after_cancellation(world: World) -> None:
    uid = world.user()
    start, end = _subscribe(world, uid)
    world.send(fs.event("customer.subscription.deleted", fs.subscription(uid, "plus", "cus_1", "sub_1", status="canceled")))
    assert _plan(world, uid) == "free"
    world.send(fs.event("checkout.session.completed", fs.plan_session(uid, "pro", "cus_1", "sub_2")))
    s2 = int(time.time())
    world.send(fs.event("invoice.paid", fs.invoice(uid, "pro", "cus_1", "sub_2", s2, s2 + 30 * DAY_S,
                                                   billing_reason="subscription_create")))
    sub = _sub(world, uid)
    assert (sub.status, sub.plan, sub.stripe_subscription_id, _plan(world, uid)) == ("active", "pro", "sub_2", "pro")
    world.check()
