"""Billing over HTTP: a real gateway on a real port, a fake Stripe API, signed webhooks."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from switchboard.api.app import create_app
from switchboard.billing import subscriptions as subs
from switchboard.inference.runtime import make_ledger
from switchboard.store.db import make_engine, reading
from switchboard.store.migrate import upgrade
from switchboard.store.schema import grants
from tests.api.conftest import add_user, gateway_settings
from tests.fakes import stripe_api as fs
from tests.fakes.openai_upstream import FakeOpenAI
from tests.support.servers import ServerThread

SECRET = "whsec_api_test"
C = 1_000_000
DAY_S = 86_400


class Billing:
    def __init__(self, url: str, key: str, user_id: int, stripe: fs.FakeStripe, engine, settings) -> None:  # type: ignore[no-untyped-def]
        self.url, self.key, self.user_id, self.stripe, self.engine, self.settings = url, key, user_id, stripe, engine, settings
        self.ledger = make_ledger(settings)

    def post(self, path: str, body: object, key: str | None = None) -> httpx.Response:
        return httpx.post(self.url + path, json=body, headers={"authorization": f"Bearer {key or self.key}"}, timeout=10)

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, headers={"authorization": f"Bearer {self.key}"}, timeout=10)

    def webhook(self, evt: dict, secret: str = SECRET) -> httpx.Response:  # type: ignore[type-arg]
        body, header = fs.signed_event(secret, evt)
        return httpx.post(self.url + "/webhooks/stripe", content=body,
                          headers={"stripe-signature": header, "content-type": "application/json"}, timeout=10)

    def available(self) -> float:
        return self.get("/v1/balance").json()["available_credits"]

    def available_ucr(self) -> int:
        return int(self.get("/v1/balance").json()["available_ucr"])

    def subscribe(self, plan: str, start: int, end: int, sub_id: str = "sub_a", customer: str = "cus_a") -> None:
        """A paid subscription as Checkout and its first paid invoice leave it, at Stripe and here."""
        self.stripe.subscriptions[sub_id] = fs.subscription(self.user_id, plan, customer, sub_id, start_s=start, end_s=end)
        for evt in (fs.event("checkout.session.completed", fs.plan_session(self.user_id, plan, customer, sub_id)),
                    fs.event("invoice.paid", fs.invoice(self.user_id, plan, customer, sub_id, start, end,
                                                        billing_reason="subscription_create"))):
            assert self.webhook(evt).json()["status"] == "processed"

    def stripe_updated(self, sub_id: str = "sub_a", later_s: int = 0, created: int | None = None) -> httpx.Response:
        """The customer.subscription.updated webhook Stripe sends after an update, carrying the
        subscription as it now is; created now, `later_s` seconds later, or at `created`."""
        obj = json.loads(json.dumps(self.stripe.subscriptions[sub_id]))
        when = created if created is not None else int(time.time()) + later_s
        return self.webhook(fs.event("customer.subscription.updated", obj, created=when))

    def grants(self, like: str) -> list[tuple[int, int]]:
        with reading(self.engine) as conn:
            return [(int(r.amount_ucr), int(r.created_ms)) for r in conn.execute(
                select(grants.c.amount_ucr, grants.c.created_ms).where(grants.c.source_ref.like(like)))]

    def local(self) -> tuple[str, subs.Subscription]:
        """The plan in force and the subscription row."""
        with reading(self.engine) as conn:
            sub = subs.get(conn, self.user_id)
            assert sub is not None
            return subs.plan_in_force(conn, self.user_id), sub

    def verify(self) -> None:
        with reading(self.engine) as conn:
            assert self.ledger.verify(conn) == []
            assert sum(self.ledger.account_balances(conn).values()) == 0


@pytest.fixture
def billing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Billing]:
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_fake")
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", SECRET)
    with FakeOpenAI() as upstream, fs.FakeStripe("sk_test_fake") as stripe:
        settings = gateway_settings(tmp_path, f"sqlite:///{tmp_path / 'gw.db'}", upstream.url,
                                    stripe={"api_base": stripe.url})
        engine = make_engine(settings.resolved_database_url)
        upgrade(engine)
        user_id, key = add_user(engine, settings, "bob@example.com", "free")
        with ServerThread(create_app(settings)) as server:
            yield Billing(server.url, key, user_id, stripe, engine, settings)
        engine.dispose()


def test_checkout_for_a_pack_and_a_plan(billing: Billing) -> None:
    r = billing.post("/v1/billing/checkout", {"pack": "2000"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"].startswith("cs_") and body["url"].startswith("https://checkout.stripe.test/")
    sent = billing.stripe.sessions[-1]
    assert sent["mode"] == "payment" and sent["metadata"] == {"user_id": str(billing.user_id), "kind": "pack", "pack": "2000"}
    assert sent["line_items"][0]["price_data"]["unit_amount"] == "1000"
    r = billing.post("/v1/billing/checkout", {"plan": "plus"})
    assert r.status_code == 200, r.text
    sent = billing.stripe.sessions[-1]
    assert sent["mode"] == "subscription" and sent["subscription_data"]["metadata"]["plan"] == "plus"
    assert sent["line_items"][0]["price_data"]["recurring"]["interval"] == "month"


def test_checkout_errors_are_openai_shaped(billing: Billing) -> None:
    for body in ({"pack": "7"}, {"plan": "free"}, {}, {"plan": "plus", "pack": "600"}, [1]):
        r = billing.post("/v1/billing/checkout", body)
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(billing.url + "/v1/billing/checkout", content=b"{nope", headers={"authorization": f"Bearer {billing.key}"})
    assert r.status_code == 400
    assert billing.post("/v1/billing/checkout", {"pack": "600"}, key="sb-wrong").status_code == 401
    billing.stripe.fail_next = 400  # (5xx would be retried by the library)
    r = billing.post("/v1/billing/checkout", {"pack": "600"})
    assert r.status_code == 502 and r.json()["error"]["code"] == "payment_provider_error"


def test_webhook_bad_signature_is_400_and_grants_nothing(billing: Billing) -> None:
    evt = fs.event("checkout.session.completed", fs.pack_session(billing.user_id, "10000"))
    assert billing.webhook(evt, secret="whsec_forged").status_code == 400
    r = httpx.post(billing.url + "/webhooks/stripe", content=json.dumps(evt), timeout=10)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(billing.url + "/webhooks/stripe", content=b"\x00garbage", headers={"stripe-signature": "t=1,v1=00"})
    assert r.status_code == 400
    assert billing.available() == 100
    billing.verify()


def test_pack_bought_once_even_if_the_webhook_comes_twice(billing: Billing) -> None:
    evt = fs.event("checkout.session.completed", fs.pack_session(billing.user_id, "2000"))
    first, again = billing.webhook(evt), billing.webhook(evt)
    assert (first.status_code, again.status_code) == (200, 200)
    assert (first.json()["status"], again.json()["status"]) == ("processed", "duplicate")
    assert billing.available() == 2100
    billing.verify()


def test_signed_but_malformed_events_are_400_not_500(billing: Billing) -> None:
    for payload in ("{not json", "[]", '{"id": "evt_1"}'):
        r = httpx.post(billing.url + "/webhooks/stripe", content=payload,
                       headers={"stripe-signature": fs.sign(SECRET, payload)}, timeout=10)
        assert r.status_code == 400, r.text
    odd = fs.event("invoice.paid", {"id": "in_x", "lines": "nonsense", "parent": {"subscription_details": {"metadata": {"user_id": str(billing.user_id)}}}})
    assert billing.webhook(odd).status_code == 200
    billing.verify()


def test_subscription_show_and_cancel(billing: Billing) -> None:
    r = billing.get("/v1/billing/subscription")
    assert r.json()["plan"] == "free" and r.json()["status"] is None
    assert billing.post("/v1/billing/cancel", {}).status_code == 404
    import time as _t
    start = int(_t.time())
    billing.webhook(fs.event("checkout.session.completed", fs.plan_session(billing.user_id, "plus", "cus_a", "sub_a")))
    billing.webhook(fs.event("invoice.paid", fs.invoice(billing.user_id, "plus", "cus_a", "sub_a", start, start + 30 * 86400,
                                                         billing_reason="subscription_create")))
    sub = billing.get("/v1/billing/subscription").json()
    assert (sub["plan"], sub["status"], sub["cancel_at_period_end"]) == ("plus", "active", False)
    assert billing.available() == 6100
    billing.stripe.subscriptions["sub_a"] = fs.subscription(billing.user_id, "plus", "cus_a", "sub_a")
    r = billing.post("/v1/billing/cancel", {})
    assert r.status_code == 200 and r.json()["cancel_at_period_end"] is True
    assert billing.stripe.requests[-1][1] == "/v1/subscriptions/sub_a"
    assert billing.stripe.subscriptions["sub_a"]["cancel_at_period_end"] is True
    with reading(billing.engine) as conn:
        assert subs.get(conn, billing.user_id).cancel_at_period_end  # type: ignore[union-attr]
    billing.verify()


def _period(days_in: int = 15, days: int = 30) -> tuple[int, int]:
    start = int(time.time()) - days_in * DAY_S
    return start, start + days * DAY_S


def test_upgrade_grants_the_prorated_difference_once(billing: Billing) -> None:
    start, end = _period()
    billing.subscribe("plus", start, end)
    item = billing.stripe.subscriptions["sub_a"]["items"]["data"][0]
    r = billing.post("/v1/billing/plan", {"plan": "pro"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["change"], body["plan"], body["pending_plan"], body["status"]) == ("upgraded", "pro", None, "active")
    # Stripe was asked in its own wire format: the item found by retrieving the subscription, the
    # new price inline on the item's product, prorated and invoiced now.
    assert billing.stripe.requests[-2][:2] == ("GET", "/v1/subscriptions/sub_a")
    method, path, form = billing.stripe.requests[-1]
    assert (method, path) == ("POST", "/v1/subscriptions/sub_a")
    assert form["items"] == [{"id": item["id"], "price_data": {
        "currency": "usd", "unit_amount": "3999", "recurring": {"interval": "month"}, "product": item["price"]["product"]}}]
    assert form["proration_behavior"] == "always_invoice" and form["metadata"]["plan"] == "pro"
    assert form["payment_behavior"] == "pending_if_incomplete"  # no upgrade (and no credit) unless paid
    # The difference (18,000 - 6,000 credits), prorated to what was left of the period.
    [(extra, at)] = billing.grants(f"upgrade:{billing.user_id}:%")
    assert extra == 12_000 * C * (end * 1000 - at) // ((end - start) * 1000)
    assert 5_900 * C < extra < 6_100 * C
    assert billing.available_ucr() == (100 + 6000) * C + extra
    # Then Stripe's webhooks for it add nothing: the update (created before the change was
    # applied here, or after it: the plan is already pro), and the proration invoice.
    applied_ms = billing.local()[1].last_event_ms
    assert applied_ms is not None
    before = billing.stripe_updated(created=(applied_ms - 1) // 1000)
    assert before.json()["detail"] == "ignored: older than the state already applied"
    assert billing.stripe_updated(later_s=1).json()["detail"] == "subscription updated"
    proration = fs.invoice(billing.user_id, "pro", "cus_a", "sub_a", start, end, billing_reason="subscription_update")
    assert billing.webhook(fs.event("invoice.paid", proration)).status_code == 200
    assert billing.grants(f"upgrade:{billing.user_id}:%") == [(extra, at)]
    assert billing.available_ucr() == (100 + 6000) * C + extra
    assert billing.local()[0] == "pro"
    # Asking again changes nothing and asks Stripe nothing.
    sent = len(billing.stripe.requests)
    assert billing.post("/v1/billing/plan", {"plan": "pro"}).json()["change"] == "unchanged"
    assert len(billing.stripe.requests) == sent
    billing.verify()


def test_downgrade_waits_for_the_next_paid_invoice(billing: Billing) -> None:
    now = int(time.time())
    start, end = now - 10, now + 2  # a short period, so that the test can see the next one
    billing.subscribe("pro", start, end)
    r = billing.post("/v1/billing/plan", {"plan": "plus"})
    assert r.status_code == 200, r.text
    assert (r.json()["change"], r.json()["plan"], r.json()["pending_plan"]) == ("downgrade scheduled", "pro", "plus")
    form = billing.stripe.requests[-1][2]
    assert form["proration_behavior"] == "none" and form["items"][0]["price_data"]["unit_amount"] == "1499"
    assert "payment_behavior" not in form
    assert billing.stripe_updated(later_s=1).json()["status"] == "processed"  # Stripe's echo: still only scheduled
    in_force, sub = billing.local()
    assert (in_force, sub.plan, sub.pending_plan) == ("pro", "pro", "plus")
    assert [amount for amount, _ in billing.grants("%")] == [100 * C, 18_000 * C]  # nothing granted or taken
    time.sleep(max(0.0, end - time.time() + 0.05))
    renewal = fs.invoice(billing.user_id, "plus", "cus_a", "sub_a", end, end + 30 * DAY_S)
    assert billing.webhook(fs.event("invoice.paid", renewal)).json()["detail"] == "allowance granted"
    in_force, sub = billing.local()
    assert (in_force, sub.plan, sub.pending_plan) == ("plus", "plus", None)
    assert [amount for amount, _ in billing.grants(f"allowance:{billing.user_id}:{end * 1000}")] == [6000 * C]
    billing.verify()


def test_free_plan_cancels_at_period_end_and_the_paid_plan_resumes(billing: Billing) -> None:
    billing.subscribe("plus", *_period())
    r = billing.post("/v1/billing/plan", {"plan": "free"})
    assert r.status_code == 200, r.text
    assert (r.json()["change"], r.json()["plan"], r.json()["cancel_at_period_end"]) == ("cancellation scheduled", "plus", True)
    assert billing.stripe.requests[-1][2] == {"cancel_at_period_end": "true"}
    assert billing.stripe.subscriptions["sub_a"]["cancel_at_period_end"] is True
    r = billing.post("/v1/billing/plan", {"plan": "plus"})
    assert (r.json()["change"], r.json()["cancel_at_period_end"]) == ("cancellation withdrawn", False)
    assert billing.stripe.requests[-1][2] == {"cancel_at_period_end": "false"}
    # An upgrade while a cancellation is pending withdraws it too (an update of its own, first).
    billing.post("/v1/billing/plan", {"plan": "free"})
    sent = len(billing.stripe.requests)
    r = billing.post("/v1/billing/plan", {"plan": "pro"})
    assert (r.json()["change"], r.json()["cancel_at_period_end"]) == ("upgraded", False)
    assert [(m, form.get("cancel_at_period_end")) for m, _, form in billing.stripe.requests[sent:]] == [
        ("POST", "false"), ("GET", None), ("POST", None)]
    assert billing.stripe_updated(later_s=1).json()["status"] == "processed"
    assert billing.local()[1].cancel_at_period_end is False
    billing.verify()


def test_plan_change_needs_a_subscription_and_a_known_plan(billing: Billing) -> None:
    r = billing.post("/v1/billing/plan", {"plan": "pro"})
    assert r.status_code == 409
    error = r.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "no_active_subscription", "plan")
    assert "/v1/billing/checkout" in error["message"]
    r = billing.post("/v1/billing/plan", {"plan": "free"})  # already there
    assert r.status_code == 200 and (r.json()["change"], r.json()["plan"], r.json()["status"]) == ("unchanged", "free", None)
    for body in ({"plan": "gold"}, {}, {"plan": 5}, [1]):
        r = billing.post("/v1/billing/plan", body)
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", body
    assert billing.post("/v1/billing/plan", {"plan": "gold"}).json()["error"]["param"] == "plan"
    assert billing.post("/v1/billing/plan", {"plan": "pro"}, key="sb-wrong").status_code == 401
    assert billing.stripe.requests == []
    billing.verify()


def test_stripe_failure_changes_nothing_locally(billing: Billing) -> None:
    start, end = _period()
    billing.subscribe("plus", start, end)
    before = billing.available_ucr()
    stripe_before = json.dumps(billing.stripe.subscriptions["sub_a"], sort_keys=True)
    for method in ("GET", "POST"):  # the lookup fails, then the update itself
        billing.stripe.fail_next, billing.stripe.fail_method = 400, method
        r = billing.post("/v1/billing/plan", {"plan": "pro"})
        assert r.status_code == 502 and r.json()["error"]["code"] == "payment_provider_error", r.text
        in_force, sub = billing.local()
        assert (in_force, sub.plan, sub.pending_plan) == ("plus", "plus", None)
        assert billing.grants(f"upgrade:{billing.user_id}:%") == [] and billing.available_ucr() == before
    assert json.dumps(billing.stripe.subscriptions["sub_a"], sort_keys=True) == stripe_before
    billing.verify()


def test_upgrade_whose_payment_fails_waits_for_it(billing: Billing) -> None:
    billing.subscribe("plus", *_period())
    billing.post("/v1/billing/plan", {"plan": "free"})  # a pending cancellation, withdrawn by the upgrade
    billing.stripe.decline_payments = True
    r = billing.post("/v1/billing/plan", {"plan": "pro"})
    assert r.status_code == 402 and r.json()["error"]["code"] == "payment_failed", r.text
    form = billing.stripe.requests[-1][2]
    assert form["payment_behavior"] == "pending_if_incomplete" and "cancel_at_period_end" not in form
    in_force, sub = billing.local()
    assert (in_force, sub.plan, sub.status, sub.cancel_at_period_end) == ("plus", "plus", "active", False)
    assert billing.grants(f"upgrade:{billing.user_id}:%") == []
    assert billing.stripe_updated(later_s=1).json()["status"] == "processed"  # the pending update: no change
    assert billing.local()[1].plan == "plus"
    # The customer pays the open invoice later: Stripe applies the update and says so; the webhook upgrades.
    billing.stripe.pay_pending("sub_a")
    assert "upgraded" in billing.stripe_updated(later_s=2).json()["detail"]
    in_force, sub = billing.local()
    assert (in_force, sub.plan) == ("pro", "pro")
    [(extra, _)] = billing.grants(f"upgrade:{billing.user_id}:%")
    assert billing.available_ucr() == (100 + 6000) * C + extra
    billing.verify()


def test_monthly_statement_shows_where_credits_came_from_and_went(billing: Billing) -> None:
    """A paying user's own statement: the free allowance, a pack bought, a request charged;
    opening + movements = closing = the balance the API reports."""
    assert billing.webhook(fs.event("checkout.session.completed", fs.pack_session(billing.user_id, "2000"))).status_code == 200
    r = billing.post("/v1/chat/completions", {"model": "fake-small", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    charged = float(r.headers["x-switchboard-credits-charged"])
    st = billing.get("/v1/billing/statement").json()
    assert st["object"] == "statement" and st["month"] == time.strftime("%Y-%m", time.gmtime())
    assert st["opening_ucr"] == 0 and st["grants_ucr"] == 2100 * C and st["charges_count"] == 1
    assert st["charges_credits"] == pytest.approx(-charged)
    assert st["closing_ucr"] == st["grants_ucr"] + st["charges_ucr"] == billing.available_ucr()
    assert [g["credits"] for g in st["grants"]] == [100, 2000]
    earlier = billing.get("/v1/billing/statement?month=2020-01").json()
    assert (earlier["opening_ucr"], earlier["closing_ucr"], earlier["grants"]) == (0, 0, [])
    bad = billing.get("/v1/billing/statement?month=2026-13")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "month"
    assert httpx.get(billing.url + "/v1/billing/statement", timeout=10).status_code == 401
