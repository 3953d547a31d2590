"""Stripe events that cannot be applied yet, on SQLite and PostgreSQL: a refund is never lost
whatever the order of arrival, every pending event gets its turn, and those that cannot be
applied are parked where an operator sees them and can retry them."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine

from switchboard.billing import event_queue, payments
from switchboard.billing import subscriptions as subs
from switchboard.billing.payments import handle_event
from switchboard.store.runner import TransactionRunner
from tests.billing.billing_support import DAY, C, World
from tests.fakes import stripe_api as fs

DAY_S = 86_400
MINUTE = 60_000


@pytest.fixture
def world(engine: Engine, tmp_path: Path) -> World:
    return World(engine, tmp_path)


def _stuck(world: World, n: int, at: int) -> None:
    """`n` paid invoices of subscriptions nobody here knows (no metadata, unknown customer)."""
    start = at // 1000 - DAY_S
    for i in range(n):
        inv = fs.invoice(0, "plus", f"cus_stranger{i}", f"sub_stranger{i}", start, start + 30 * DAY_S, metadata=False)
        assert world.send(fs.event("invoice.paid", inv), at_ms=at).status == "pending"


def _queued(world: World) -> dict[str, str]:
    return world.read(lambda c: {q.event_id: q.status for q in event_queue.not_applied(c, limit=1000)})


def test_a_refund_before_its_purchase_is_applied_with_it_behind_a_stuck_queue(world: World) -> None:
    uid = world.user()
    now = int(time.time() * 1000)
    _stuck(world, 55, now)
    session = fs.pack_session(uid, "600")
    refund = fs.event("charge.refunded", fs.charge(session["payment_intent"], 300, 300))
    assert world.send(refund, at_ms=now).status == "pending"
    assert world.send(fs.event("checkout.session.completed", session), at_ms=now).status == "processed"
    assert world.available(uid) == 100 * C  # the pack was granted and refunded in one transaction
    assert world.check()["refunds"] == 600 * C
    queued = _queued(world)
    assert refund["id"] not in queued and len(queued) == 55  # the strangers' invoices still wait, visibly


def test_refunds_before_the_purchase_in_any_order_reverse_what_was_refunded(world: World) -> None:
    uid = world.user()
    session = fs.pack_session(uid, "2000")
    pi = session["payment_intent"]
    # Two refunds of one charge, the later (cumulative) one first; then the purchase.
    assert world.send(fs.event("charge.refunded", fs.charge(pi, 1000, 500, charge_id="ch_r"))).status == "pending"
    assert world.send(fs.event("charge.refunded", fs.charge(pi, 1000, 250, charge_id="ch_r"))).status == "pending"
    world.send(fs.event("checkout.session.completed", session))
    assert world.available(uid) == (100 + 1000) * C  # half of the pack, as amount_refunded says
    assert world.check()["refunds"] == 1000 * C
    assert _queued(world) == {}


def test_a_refund_of_an_invoice_before_the_invoice_and_its_subscription(world: World) -> None:
    """The chain: the refund waits for the invoice's payment, the invoice for the checkout that
    names its subscription; the checkout brings both in one transaction."""
    uid = world.user()
    start = int(time.time()) - DAY_S
    inv = fs.invoice(uid, "plus", "cus_c", "sub_c", start, start + 30 * DAY_S, billing_reason="subscription_create",
                     payment_intent="pi_chain", metadata=False)
    assert world.send(fs.event("charge.refunded", fs.charge("pi_chain", 1499, 1499))).status == "pending"
    assert world.send(fs.event("invoice.paid", inv)).status == "pending"
    assert world.send(fs.event("checkout.session.completed", fs.plan_session(uid, "plus", "cus_c", "sub_c"))).status \
        == "processed"
    assert world.check()["refunds"] == 6000 * C
    assert world.available(uid) == 100 * C
    assert _queued(world) == {}


def test_every_pending_event_gets_its_turn(world: World) -> None:
    """An event that becomes applicable without any event saying so (an upgrade made through
    the API, which its prorated invoice waited for) is retried even behind many stuck ones."""
    uid = world.user()
    t0 = int(time.time() * 1000)
    start = t0 // 1000 - DAY_S
    world.send(fs.event("checkout.session.completed", fs.plan_session(uid, "plus", "cus_1", "sub_1")), at_ms=t0)
    world.send(fs.event("invoice.paid", fs.invoice(uid, "plus", "cus_1", "sub_1", start, start + 30 * DAY_S,
                                                   billing_reason="subscription_create")), at_ms=t0)
    _stuck(world, 60, t0)
    proration = fs.event("invoice.paid", fs.invoice(uid, "pro", "cus_1", "sub_1", start, start + 30 * DAY_S,
                                                    billing_reason="subscription_update", payment_intent="pi_up"))
    assert world.send(proration, at_ms=t0).status == "pending"  # no upgrade yet
    assert world.write(lambda c: subs.change_plan(c, world.ledger, world.settings, uid, "pro", t0)) == "upgraded"
    upgraded = world.available(uid)
    deliveries = 0
    while proration["id"] in _queued(world):
        deliveries += 1
        assert deliveries <= 20, "the prorated invoice never got its turn"
        other = fs.event("customer.created", {"id": f"cus_other{deliveries}", "object": "customer"})
        world.send(other, at_ms=t0 + deliveries * 10 * MINUTE)
    # Linked to the upgrade's credits: refunding the prorated invoice takes them back.
    world.send(fs.event("charge.refunded", fs.charge("pi_up", 1000, 1000)), at_ms=t0 + 30 * DAY)
    assert world.available(uid) < upgraded
    world.check()


def test_events_that_never_apply_are_parked_and_still_woken(world: World) -> None:
    uid = world.user()
    t0 = int(time.time() * 1000)
    start = t0 // 1000 - DAY_S
    inv = fs.event("invoice.paid", fs.invoice(uid, "plus", "cus_late", "sub_late", start, start + 30 * DAY_S,
                                              billing_reason="subscription_create", metadata=False))
    assert world.send(inv, at_ms=t0).status == "pending"
    at = t0
    for _ in range(event_queue.PARK_AFTER_ATTEMPTS):
        at += event_queue.MAX_RETRY_MS
        world.write(lambda c: payments.retry_due(c, world.ledger, world.settings, at))
    (parked,) = world.read(lambda c: event_queue.not_applied(c))
    assert (parked.event_id, parked.status, parked.attempts) == (inv["id"], "parked", event_queue.PARK_AFTER_ATTEMPTS)
    assert parked.reason == "no user for this invoice's subscription yet"
    assert world.write(lambda c: payments.retry_due(c, world.ledger, world.settings, at + DAY)) == []  # no timed retries
    # The checkout that names the subscription arrives late (Stripe retried it for days): the
    # parked invoice is applied with it.
    world.send(fs.event("checkout.session.completed", fs.plan_session(uid, "plus", "cus_late", "sub_late")), at_ms=at)
    assert world.available(uid) == (100 + 6000) * C
    assert _queued(world) == {}


def test_an_operator_retries_a_parked_event(world: World) -> None:
    uid = world.user()
    start = int(time.time()) - DAY_S
    inv = fs.event("invoice.paid", fs.invoice(uid, "plus", "cus_op", "sub_op", start, start + 30 * DAY_S,
                                              billing_reason="subscription_create", metadata=False))
    world.send(inv)
    # The operator links the subscription by hand (no event brings it), then retries.
    world.write(lambda c: subs.link(c, uid, "plus", customer_id="cus_op", subscription_id="sub_op"))
    (queued,) = world.read(lambda c: event_queue.not_applied(c))
    out = world.write(lambda c: payments.retry(c, world.ledger, world.settings, str(queued.id)))
    assert out is not None and out.status == "processed" and world.available(uid) == (100 + 6000) * C
    assert world.write(lambda c: payments.retry(c, world.ledger, world.settings, inv["id"])) is None  # applied already
    world.check()


def test_a_refund_and_its_purchase_at_two_processes_at_once(world: World, engine: Engine) -> None:
    """Delivered concurrently, each by its own transactions (as two server processes would):
    neither may miss the other, on either database."""
    pairs = []
    for i in range(6):
        session = fs.pack_session(world.user(f"p{i}@example.com"), "600")
        pairs.append((fs.event("checkout.session.completed", session),
                      fs.event("charge.refunded", fs.charge(session["payment_intent"], 300, 300))))
    errors: list[BaseException] = []

    def deliver(evt: dict, barrier: threading.Barrier) -> None:  # type: ignore[type-arg]
        runner = TransactionRunner(engine)
        barrier.wait()
        try:
            runner.run_sync(lambda c: handle_event(c, world.ledger, world.settings, evt))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    for purchase, refund in pairs:
        barrier = threading.Barrier(2)
        threads = [threading.Thread(target=deliver, args=(e, barrier)) for e in (refund, purchase)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert world.check()["refunds"] == 6 * 600 * C
    assert _queued(world) == {}
