"""Signed Stripe events that cannot be used, against a real server on SQLite and PostgreSQL:
each is recorded and answered 200 (never 500, which rolled its record back and made Stripe
send it forever), parked with its reason, and grants nothing; a redelivery is a duplicate."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select

from switchboard.api.app import create_app
from switchboard.inference.runtime import make_ledger
from switchboard.store.billing_schema import payment_events
from switchboard.store.db import make_engine, reading
from switchboard.store.migrate import upgrade
from tests.api.conftest import add_user, gateway_settings
from tests.fakes import stripe_api as fs
from tests.fakes.openai_upstream import FakeOpenAI
from tests.support.servers import ServerThread

SECRET = "whsec_poison_test"
C = 1_000_000


class Webhooks:
    def __init__(self, url: str, engine: Engine, user_id: int, key: str, settings: Any) -> None:
        self.url, self.engine, self.user_id, self.key, self.settings = url, engine, user_id, key, settings

    def send(self, evt: dict[str, Any]) -> httpx.Response:
        body, header = fs.signed_event(SECRET, evt)
        return httpx.post(self.url + "/webhooks/stripe", content=body, timeout=10,
                          headers={"stripe-signature": header, "content-type": "application/json"})

    def available_ucr(self) -> int:
        r = httpx.get(self.url + "/v1/balance", headers={"authorization": f"Bearer {self.key}"}, timeout=10)
        return int(r.json()["available_ucr"])

    def recorded(self) -> dict[str, tuple[str, str | None]]:
        with reading(self.engine) as conn:
            rows = conn.execute(select(payment_events.c.event_id, payment_events.c.status, payment_events.c.outcome))
            return {r.event_id: (r.status, r.outcome) for r in rows}


@pytest.fixture
def hooks(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Webhooks]:
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", SECRET)
    with FakeOpenAI() as upstream:
        settings = gateway_settings(tmp_path, database_url, upstream.url)
        engine = make_engine(settings.resolved_database_url)
        upgrade(engine)
        user_id, key = add_user(engine, settings, "target@example.com", "free")
        assert user_id == 1  # the user "١" (Arabic-Indic one) used to name
        with ServerThread(create_app(settings)) as server:
            yield Webhooks(server.url, engine, user_id, key, settings)
        engine.dispose()


def _with(evt: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `evt` with the field at dotted `path` (under data.object, or top-level with a
    leading '.') set to `value`."""
    evt = copy.deepcopy(evt)
    node = evt if path.startswith(".") else evt["data"]["object"]
    keys = path.lstrip(".").split(".")
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[keys[-1]] = value
    return evt


def _poison(user_id: int) -> dict[str, dict[str, Any]]:
    def pack() -> dict[str, Any]:
        return fs.event("checkout.session.completed", fs.pack_session(user_id, "600"))

    def refund() -> dict[str, Any]:
        return fs.event("charge.refunded", fs.charge("pi_poison", 300, 300))

    def invoice() -> dict[str, Any]:
        return fs.event("invoice.paid", fs.invoice(user_id, "plus", "cus_p", "sub_p", 0, 1))

    sub = fs.event("customer.subscription.updated", fs.subscription(user_id, "plus", "cus_p", "sub_p"))
    return {
        "created as text": _with(pack(), ".created", "yesterday"),
        "created huge": _with(pack(), ".created", 10**30),
        "created fractional": _with(pack(), ".created", 1.5),
        "30-digit user_id": _with(_with(pack(), "metadata.user_id", "1" * 30), "client_reference_id", "2" * 30),
        "Arabic-Indic digit user_id": _with(_with(pack(), "metadata.user_id", "\u0661"), "client_reference_id", "\u0661"),
        "list as the object's id": _with(refund(), "id", ["ch_1", "ch_2"]),
        "over-long event id": _with(pack(), ".id", "evt_" + "x" * 300),
        "over-long subscription id": _with(sub, "id", "sub_" + "y" * 300),
        "over-long customer id": _with(pack(), "customer", "cus_" + "z" * 300),
        "integer payment_intent.id": _with(refund(), "payment_intent", {"id": 12345, "object": "payment_intent"}),
        "integer payment_intent": _with(pack(), "payment_intent", 12345),
        "huge amount_refunded": _with(refund(), "amount_refunded", 10**40),
        "huge period start": _with(invoice(), "lines.data.0.period.start", 10**25),
        "lines that are not a list": _with(invoice(), "lines", "nonsense"),
        "NUL in metadata": _with(pack(), "metadata.pack", "600\x00"),
    }


def test_poison_events_are_recorded_parked_and_answered_200(hooks: Webhooks) -> None:
    before = hooks.available_ucr()
    sent = {}
    for name, evt in _poison(hooks.user_id).items():
        r = hooks.send(evt)
        assert r.status_code == 200, (name, r.text)
        assert r.json()["status"] == "parked", (name, r.json())
        again = hooks.send(evt)
        assert (again.status_code, again.json()["status"]) == (200, "duplicate"), name
        sent[name] = evt
    recorded = hooks.recorded()
    assert len(recorded) == len(sent)  # each recorded once, the over-long id under a digest
    assert all(status == "parked" and outcome for status, outcome in recorded.values())
    assert hooks.available_ucr() == before  # nothing granted to anyone
    with reading(hooks.engine) as conn:
        ledger = make_ledger(hooks.settings)
        assert ledger.verify(conn) == [] and sum(ledger.account_balances(conn).values()) == 0
