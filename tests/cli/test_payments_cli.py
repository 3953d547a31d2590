"""`switchboard payments pending` and `payments retry`: the Stripe events an operator must see."""

from __future__ import annotations

import json
from typing import Any

from tests.cli.test_cli import cli  # noqa: F401 - the fixture
from tests.fakes import stripe_api as fs


def _deliver(*events: dict[str, Any]) -> list[str]:
    """Webhook events handled as the server handles them; their statuses."""
    from switchboard.billing.payments import handle_event
    from switchboard.core.config import load_settings
    from switchboard.inference.runtime import make_ledger
    from switchboard.store.db import make_engine
    from switchboard.store.runner import TransactionRunner

    settings = load_settings()
    engine = make_engine(settings.resolved_database_url)
    runner, ledger = TransactionRunner(engine), make_ledger(settings)
    statuses = [runner.run_sync(lambda conn: handle_event(conn, ledger, settings, evt)).status for evt in events]
    engine.dispose()
    return statuses


def test_pending_and_parked_events_are_listed_and_retried(cli) -> None:  # type: ignore[no-untyped-def]
    run, _ = cli
    run("users", "create", "pay@example.com")
    uid = 1  # the first user
    session = fs.pack_session(uid, "600")
    refund = fs.event("charge.refunded", fs.charge(session["payment_intent"], 300, 300))
    unknown_pack = fs.event("checkout.session.completed", fs.pack_session(uid, "999"))
    assert _deliver(refund, unknown_pack) == ["pending", "parked"]
    assert "no pending or parked" not in run("payments", "pending").stdout
    listing = json.loads(run("payments", "pending", "--json").stdout)
    assert listing["counts"] == {"pending": 1, "parked": 1}
    parked, pending = listing["events"]  # parked first
    assert (parked["event_id"], parked["status"]) == (unknown_pack["id"], "parked")
    assert parked["reason"] == "paid checkout session for an unknown pack '999'" and parked["user_id"] == uid
    assert (pending["event_id"], pending["status"], pending["reason"]) == (
        refund["id"], "pending", "no grant bought by this payment yet")
    table = run("payments", "pending").stdout
    assert "1 parked, 1 pending" in table and "pending after 1" in table
    # The purchase arrives: the refund is applied with it and leaves the list.
    assert _deliver(fs.event("checkout.session.completed", session)) == ["processed"]
    assert json.loads(run("payments", "pending", "--json").stdout)["counts"] == {"pending": 0, "parked": 1}
    # A retry by id (or Stripe event id) says what happened; the pack is still unknown.
    assert "parked: paid checkout session for an unknown pack" in run("payments", "retry", str(parked["id"])).stdout
    assert run("payments", "retry", refund["id"], ok=False).exit_code == 1  # applied already
    assert run("payments", "retry", "evt_nope", ok=False).exit_code == 1
