"""The ledger promises under real concurrency: two `switchboard serve` processes sharing one
database (SQLite and PostgreSQL), and a server killed with SIGKILL mid-webhook (mid-request:
test_crash_recovery.py)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from switchboard.core.config import Settings
from switchboard.inference.runtime import make_ledger
from switchboard.store.db import make_engine, reading
from switchboard.store.migrate import upgrade
from switchboard.store.billing_schema import payment_events
from switchboard.store.schema import grants, usage_records
from tests.api.conftest import add_user
from tests.fakes import stripe_api as fs
from tests.fakes.openai_upstream import FakeOpenAI
from tests.support.config import fake_model_toml
from tests.support.servers import ROOT, ServerProcess

EXACT_PLAN = """
[plans.exact]
name = "exact"
monthly_usd = 0
monthly_credits = {credits}
"""


def _env(tmp_path: Path, database_url: str, upstream: str, credits: int | None, **extra: str) -> dict[str, str]:
    """A server's environment; `credits` makes one plan ("exact") with that monthly allowance,
    None keeps the default plans."""
    config = tmp_path / "switchboard.toml"
    config.write_text(fake_model_toml(upstream, "" if credits is None else EXACT_PLAN.format(credits=credits)))
    return {
        "SWITCHBOARD_CONFIG": str(config), "SWITCHBOARD_DATABASE_URL": database_url,
        "SWITCHBOARD_DATA_DIR": str(tmp_path / "data"), "SWITCHBOARD_LOCAL_MODEL__ENABLED": "false",
        "SWITCHBOARD_RATE_LIMIT__REQUESTS_PER_MINUTE": "0", "SWITCHBOARD_LOG_LEVEL": "info", **extra,
    }


def _ledger_verify_cli(env: dict[str, str]) -> dict[str, Any]:
    """What the operator runs after a fault: `switchboard ledger verify --json`, in its own
    process; it exits 0 only when every balance matches its entries."""
    done = subprocess.run([sys.executable, "-m", "switchboard.cli.main", "ledger", "verify", "--json"],
                          env={**os.environ, **env}, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] and report["problems"] == []
    return report


def _settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def test_two_processes_never_overspend(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Each request: prompt "hi" is counted at 9 tokens (1 o200k token x1.5 for a server whose tokenizer is
    # unknown, + 7 of framing), max_tokens 10 -> hold 9*0.2 + 10*0.4 = 5.8 credits.
    # The upstream reports 5 prompt + 3 completion tokens -> charge 1 + 1.2 = 2.2 credits.
    n_covered, hold_credits, charge_ucr, credits = 10, 5.8, 2_200_000, 58
    with FakeOpenAI() as fake:
        fake.configure(text="a b c", chunks=3, prompt_tokens=5, completion_tokens=3, chunk_delay_s=0.05)
        env = _env(tmp_path, database_url, fake.url, credits)
        settings = _settings(env, monkeypatch)
        engine = make_engine(database_url)
        upgrade(engine)
        _, key = add_user(engine, settings, "crowd@example.com", "exact")
        with ServerProcess(env) as one, ServerProcess(env) as two:

            async def fire() -> list[int]:
                async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=200)) as http:
                    body = {"model": "fake-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
                    calls = [
                        http.post((one if i % 2 else two).url + "/v1/chat/completions", json=body,
                                  headers={"Authorization": f"Bearer {key}"})
                        for i in range(10 * n_covered)
                    ]
                    return [r.status_code for r in await asyncio.gather(*calls)]

            statuses = asyncio.run(fire())
    assert set(statuses) <= {200, 402}, statuses
    successes = statuses.count(200)
    # On a graceful stop each server logs what its ledger writer did (operators size by it).
    assert all("ledger writer:" in server.log() for server in (one, two))
    # At least the requests whose holds fit at once; never more than the balance pays for.
    assert int(credits // hold_credits) <= successes <= credits * 1_000_000 // charge_ucr
    ledger = make_ledger(settings)
    with reading(engine) as conn:
        assert ledger.verify(conn) == []
        records = conn.execute(select(usage_records.c.request_id, usage_records.c.outcome, usage_records.c.charged_ucr)).all()
        b = ledger.balance(conn, 1)
    assert len(records) == successes and len({r.request_id for r in records}) == successes
    assert all(r.outcome == "ok" and r.charged_ucr == charge_ucr for r in records)
    assert b.held_ucr == 0 and b.balance_ucr == credits * 1_000_000 - successes * charge_ucr
    engine.dispose()


def test_webhooks_delivered_to_two_processes_at_once_grant_once(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "whsec_multiprocess"
    with FakeOpenAI() as fake:
        env = _env(tmp_path, database_url, fake.url, 100, STRIPE_WEBHOOK_SECRET=secret, STRIPE_API_KEY="sk_test_x")
        settings = _settings(env, monkeypatch)
        engine = make_engine(database_url)
        upgrade(engine)
        user_id, key = add_user(engine, settings, "buyer@example.com", "exact")
        purchase = fs.event("checkout.session.completed", fs.pack_session(user_id, "2000"))
        body, signature = fs.signed_event(secret, purchase)
        with ServerProcess(env) as one, ServerProcess(env) as two:

            def deliver(i: int) -> int:
                target = one if i % 2 else two
                return httpx.post(target.url + "/webhooks/stripe", content=body, timeout=30,
                                  headers={"stripe-signature": signature, "content-type": "application/json"}).status_code

            with ThreadPoolExecutor(20) as pool:
                statuses = list(pool.map(deliver, range(20)))
            balance = httpx.get(one.url + "/v1/balance", headers={"Authorization": f"Bearer {key}"}).json()
    assert set(statuses) == {200}
    assert balance["available_credits"] == 2100  # granted once, by whichever process won
    with reading(engine) as conn:
        assert make_ledger(settings).verify(conn) == []
    engine.dispose()


C = 1_000_000


def _stripe_burst(user_ids: list[int]) -> tuple[list[dict[str, Any]], dict[int, int]]:
    """What Stripe sends for a few customers, and the credits each must end with: a free plan's
    100, a 2,000 pack (also announced by async_payment_succeeded), a 600 pack refunded in two
    steps (even users only), and a Plus subscription whose first invoice is paid (and
    announced twice)."""
    start = int(time.time()) - 86_400
    events: list[dict[str, Any]] = []
    expected: dict[int, int] = {}
    for n, uid in enumerate(user_ids):
        big, small = fs.pack_session(uid, "2000"), fs.pack_session(uid, "600")
        customer, sub = f"cus_kill{n}", f"sub_kill{n}"
        inv = fs.invoice(uid, "plus", customer, sub, start, start + 30 * 86_400, billing_reason="subscription_create")
        events += [
            fs.event("checkout.session.completed", big), fs.event("checkout.session.async_payment_succeeded", big),
            fs.event("checkout.session.completed", small),
            fs.event("checkout.session.completed", fs.plan_session(uid, "plus", customer, sub)),
            fs.event("invoice.paid", inv), fs.event("invoice.paid", inv),
        ]
        expected[uid] = (100 + 2000 + 600 + 6000) * C
        if n % 2 == 0:
            charge_id = f"ch_kill{n}"
            events += [fs.event("charge.refunded", fs.charge(small["payment_intent"], 300, 150, charge_id=charge_id)),
                       fs.event("charge.refunded", fs.charge(small["payment_intent"], 300, 300, charge_id=charge_id))]
            expected[uid] -= 600 * C
    return events, expected


def test_webhooks_survive_a_sigkill_mid_burst(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stripe delivers a burst of events; the server is SIGKILLed with deliveries in flight;
    after a restart Stripe delivers them again (it retries every event not answered 2xx: here
    every event, answered or not). Each purchase is granted once, each refund reversed once."""
    secret, kill_after, in_flight = "whsec_sigkill", 8, 6
    with FakeOpenAI() as fake:
        env = _env(tmp_path, database_url, fake.url, None, STRIPE_WEBHOOK_SECRET=secret, STRIPE_API_KEY="sk_test_x")
        settings = _settings(env, monkeypatch)
        engine = make_engine(database_url)
        upgrade(engine)
        user_ids = [add_user(engine, settings, f"payer{n}@example.com", "free")[0] for n in range(4)]
        events, expected = _stripe_burst(user_ids)
        deliveries = [fs.signed_event(secret, evt) for evt in events]
        answered: set[int] = set()
        lock = threading.Lock()
        server = ServerProcess(env).start()

        def deliver(i: int) -> None:
            body, signature = deliveries[i]
            try:
                r = httpx.post(server.url + "/webhooks/stripe", content=body, timeout=10,
                               headers={"stripe-signature": signature, "content-type": "application/json"})
            except httpx.HTTPError:
                return  # the server died under this delivery, or before it
            with lock:
                if r.status_code == 200:
                    answered.add(i)
                if len(answered) == kill_after:
                    server.kill()  # the other deliveries are in flight or still to come

        try:
            with ThreadPoolExecutor(in_flight) as pool:
                list(pool.map(deliver, range(len(deliveries))))
        finally:
            server.kill()
        assert kill_after <= len(answered) < len(deliveries)  # it died mid-burst
        with ServerProcess(env) as restarted:
            for body, signature in deliveries:
                r = httpx.post(restarted.url + "/webhooks/stripe", content=body, timeout=10,
                               headers={"stripe-signature": signature, "content-type": "application/json"})
                assert r.status_code == 200, r.text
    assert sum(_ledger_verify_cli(env)["accounts_ucr"].values()) == 0
    ledger = make_ledger(settings)
    with reading(engine) as conn:
        assert ledger.verify(conn) == []
        balances = ledger.account_balances(conn)
        for uid, credits in expected.items():
            b = ledger.balance(conn, uid)
            assert (b.available_ucr, b.held_ucr, b.debt_ucr) == (credits, 0, 0), uid
        refs = conn.execute(select(grants.c.source_ref).where(grants.c.kind != "allowance")).scalars().all()
        assert sorted(refs) == sorted({f"stripe:checkout:{e['data']['object']['id']}" for e in events
                                       if e["data"]["object"].get("mode") == "payment"})
        recorded = conn.execute(select(payment_events.c.processed_ms)).scalars().all()
        assert len(recorded) == len(events) and None not in recorded  # each once, none left pending
    assert sum(balances.values()) == 0
    assert balances["sales"] == -len(user_ids) * (2000 + 600 + 6000) * C
    assert balances["refunds"] == len(user_ids) // 2 * 600 * C
    engine.dispose()
