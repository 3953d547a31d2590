"""Billing over HTTP: a real gateway on a real port, a fake Stripe API, signed webhooks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from switchboard.api.app import create_app
from switchboard.billing import subscriptions as subs
from switchboard.inference.runtime import make_ledger
from switchboard.store.db import make_engine, reading
from switchboard.store.migrate import upgrade
from tests.api.conftest import add_user, gateway_settings
from tests.fakes import stripe_api as fs
from tests.fakes.openai_upstream import FakeOpenAI
from tests.support.servers import ServerThread

SECRET = "whsec_api_test"
C = 1_000_000


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
    r = billing.post("/v1/billing/cancel", {})
    assert r.status_code == 200 and r.json()["cancel_at_period_end"] is True
    assert billing.stripe.requests[-1][1] == "/v1/subscriptions/sub_a"
    assert billing.stripe.subscriptions["sub_a"]["cancel_at_period_end"] is True
    with reading(billing.engine) as conn:
        assert subs.get(conn, billing.user_id).cancel_at_period_end  # type: ignore[union-attr]
    billing.verify()
