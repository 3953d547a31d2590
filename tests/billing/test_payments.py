"""Stripe webhook handling on SQLite and PostgreSQL: packs, idempotency, refunds, ordering."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from switchboard.billing.checkout import checkout_params
from switchboard.billing.payments import BadSignature, verify_event
from switchboard.billing.stripe_events import user_id_of
from switchboard.core.config import StripeConfig
from switchboard.core.errors import InvalidRequest
from switchboard.store.billing_schema import payment_events
from switchboard.store.runner import TransactionRunner
from switchboard.store.schema import grants
from tests.billing.billing_support import DAY, C, World
from tests.fakes import stripe_api as fs

SECRET = "whsec_test_secret"


@pytest.fixture
def world(engine: Engine, tmp_path: Path) -> World:
    return World(engine, tmp_path)


def test_pack_purchase_grants_once_even_when_delivered_twice(world: World) -> None:
    uid = world.user()
    evt = fs.event("checkout.session.completed", fs.pack_session(uid, "2000"))
    first, again = world.send(evt), world.send(evt)
    assert first.status == "processed" and again.status == "duplicate"
    # The same purchase in a second event (async_payment_succeeded) is not granted again either.
    assert world.send(fs.event("checkout.session.async_payment_succeeded", evt["data"]["object"])).status == "processed"
    assert world.available(uid) == (100 + 2000) * C
    topups = world.read(lambda c: c.execute(select(grants).where(grants.c.kind == "topup")).all())
    assert len(topups) == 1 and topups[0].expires_ms > int(time.time() * 1000) + 364 * DAY
    assert world.check()["sales"] == -2000 * C


def test_unpaid_session_grants_nothing_and_a_paid_one_of_no_known_user_is_parked(world: World) -> None:
    uid = world.user()
    assert world.send(fs.event("checkout.session.completed", fs.pack_session(uid, "600", paid=False))).status == "processed"
    # Money received for no one (or for a pack no longer sold) is the operator's to sort out.
    assert world.send(fs.event("checkout.session.completed", fs.pack_session(9999, "600"))).status == "parked"
    assert world.send(fs.event("checkout.session.completed", fs.pack_session(uid, "7"))).status == "parked"
    assert world.available(uid) == 100 * C
    world.check()


def test_refund_reverses_remaining_and_turns_spent_credit_into_debt(world: World) -> None:
    uid = world.user()
    session = fs.pack_session(uid, "600")
    world.send(fs.event("checkout.session.completed", session))
    world.spend(uid, 400 * C, "r1")  # 100 allowance first (expires first), then 300 of the pack
    ch = fs.charge(session["payment_intent"], 300, 300)
    assert world.send(fs.event("charge.refunded", ch)).status == "processed"
    b = world.balance(uid)
    # The pack's 300 left go back; the 300 already spent are now owed.
    assert (b.balance_ucr, b.debt_ucr, b.available_ucr) == (-300 * C, 300 * C, 0)
    balances = world.check()
    assert balances["refunds"] == 600 * C
    # The same refund again (new event id) changes nothing.
    world.send(fs.event("charge.refunded", ch))
    assert world.check()["refunds"] == 600 * C
    # The next grant pays the debt first.
    world.send(fs.event("checkout.session.completed", fs.pack_session(uid, "2000")))
    b = world.balance(uid)
    assert (b.debt_ucr, b.available_ucr) == (0, 1700 * C)
    world.check()


def test_partial_refunds_reverse_in_proportion_once_each(world: World) -> None:
    uid = world.user()
    session = fs.pack_session(uid, "2000")
    world.send(fs.event("checkout.session.completed", session))
    ch_id = "ch_partial"
    world.send(fs.event("charge.refunded", fs.charge(session["payment_intent"], 1000, 250, charge_id=ch_id)))
    assert world.available(uid) == (100 + 1500) * C
    world.send(fs.event("charge.refunded", fs.charge(session["payment_intent"], 1000, 250, charge_id=ch_id)))
    assert world.available(uid) == (100 + 1500) * C
    world.send(fs.event("charge.refunded", fs.charge(session["payment_intent"], 1000, 1000, charge_id=ch_id)))
    assert world.available(uid) == 100 * C
    assert world.check()["refunds"] == 2000 * C


def test_refund_before_the_purchase_is_kept_then_applied(world: World) -> None:
    uid = world.user()
    session = fs.pack_session(uid, "600")
    early = world.send(fs.event("charge.refunded", fs.charge(session["payment_intent"], 300, 300)))
    assert early.status == "pending"
    assert world.available(uid) == 100 * C
    world.send(fs.event("checkout.session.completed", session))
    assert world.available(uid) == 100 * C  # granted, then reversed in the same transaction
    pending = world.read(lambda c: c.execute(select(payment_events).where(payment_events.c.processed_ms.is_(None))).all())
    assert pending == []
    assert world.check()["refunds"] == 600 * C


def test_expired_then_refunded_credit_comes_out_of_breakage_not_debt(world: World) -> None:
    uid = world.user()
    session = fs.pack_session(uid, "600")
    world.send(fs.event("checkout.session.completed", session))
    later = int(time.time() * 1000) + 400 * DAY
    world.write(lambda c: world.ledger._lock(c, uid, later))  # the pack (and allowances) expire
    world.send(fs.event("charge.refunded", fs.charge(session["payment_intent"], 300, 300)), at_ms=later)
    assert world.balance(uid, later).debt_ucr == 0
    world.check()


def test_bad_signature_and_garbage_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", SECRET)
    config = StripeConfig()
    body, header = fs.signed_event(SECRET, fs.event("checkout.session.completed", fs.pack_session(1, "600")))
    assert verify_event(body, header, config)["type"] == "checkout.session.completed"
    for payload, sig in (
        (body, fs.sign("whsec_wrong", body.decode())),
        (body, None),
        (body, "garbage"),
        (body + b" ", header),  # tampered
        (body, fs.sign(SECRET, body.decode(), int(time.time()) - 3600)),  # replayed after the tolerance
        (b"\xff\xfe", fs.sign(SECRET, "x")),
    ):
        with pytest.raises(BadSignature):
            verify_event(payload, sig, config)
    not_json = "{not json"
    with pytest.raises(BadSignature):
        verify_event(not_json.encode(), fs.sign(SECRET, not_json), config)


def test_checkout_params_for_plans_and_packs(world: World) -> None:
    plan = checkout_params(world.settings, 7, "a@example.com", plan="plus")
    assert plan["mode"] == "subscription" and plan["metadata"] == {"user_id": "7", "kind": "plan", "plan": "plus"}
    assert plan["line_items"][0]["price_data"]["unit_amount"] == 1499
    assert plan["subscription_data"]["metadata"]["plan"] == "plus"
    pack = checkout_params(world.settings, 7, "a@example.com", pack="5000")
    assert pack["mode"] == "payment" and pack["line_items"][0]["price_data"]["unit_amount"] == 2500
    assert pack["payment_intent_data"]["metadata"]["pack"] == "5000"
    for bad in ({"plan": "free"}, {"plan": "gold"}, {"pack": "7"}, {}):
        with pytest.raises(InvalidRequest):
            checkout_params(world.settings, 7, "a@example.com", **bad)


def _period(days_ago: int = 1, length_days: int = 30) -> tuple[int, int]:
    now = int(time.time())
    return now - days_ago * 86400, now - days_ago * 86400 + length_days * 86400


def test_renewal_exactly_once_even_twice_and_concurrently(world: World, engine: Engine) -> None:
    uid = world.user()
    start, end = _period()
    inv = fs.invoice(uid, "plus", "cus_1", "sub_1", start, end, billing_reason="subscription_create")
    # The same invoice delivered as several distinct events, from several "processes" at once.
    events = [fs.event("invoice.paid", inv) for _ in range(6)] + [fs.event("invoice.paid", inv, event_id="evt_same")] * 4
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(events))

    def deliver(evt: dict) -> None:  # type: ignore[type-arg]
        runner = TransactionRunner(engine)  # its own transactions, like another server process
        from switchboard.billing.payments import handle_event
        barrier.wait()
        try:
            runner.run_sync(lambda c: handle_event(c, world.ledger, world.settings, evt))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=deliver, args=(e,)) for e in events]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    allowances = world.read(lambda c: c.execute(
        select(grants.c.amount_ucr).where(grants.c.user_id == uid, grants.c.source_ref == f"allowance:{uid}:{start * 1000}")).all())
    assert allowances == [(6000 * C,)]
    assert world.available(uid) == (100 + 6000) * C
    world.check()


def test_metadata_user_ids_are_ascii_digits_within_the_id_range() -> None:
    assert user_id_of("42") == 42 and user_id_of(str(2**63 - 1)) == 2**63 - 1
    # "١" (Arabic-Indic one) and "１" (fullwidth) pass str.isdigit() and int() reads them.
    for bad in ("\u0661", "\u0664\u0662", "\uff11", "+1", " 1", "1 ", "1_0", "0", "-1", str(2**63), "1" * 30, "", None, 42):
        assert user_id_of(bad) is None, bad
