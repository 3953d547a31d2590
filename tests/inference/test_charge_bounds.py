"""Issue 12, items 2 to 4: a request is never charged more than its hold.

2. An upstream that ignores max_tokens is cut at max_tokens; a vendor that still reports more
   than the hold covered has the excess booked to operator_losses, not charged to the user.
3. A stream the client cuts off is charged by the model's tokenizer for what the upstream sent
   before the disconnect, never above the hold (it used to be bytes / 4 on top of a bytes / 3
   prompt, more than the complete answer would have cost).
4. A non-streaming answer whose upstream fails mid-generation delivers nothing and costs nothing;
   what the vendor billed is the operator's loss.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import openai
import pytest
from typer.testing import CliRunner

from switchboard.cli.main import app
from tests.fakes import vendor_billing
from tests.inference.conftest import OUTPUT_UCR, PROMPT_UCR, VendorGateway

LONG = " ".join(f"word{i}" for i in range(400))  # 800 o200k tokens


def _hi(max_tokens: int, **extra: object) -> dict[str, object]:
    return {"model": "wide", "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hi"}], **extra}


def test_an_upstream_that_ignores_max_tokens_is_cut_there(vendor: VendorGateway) -> None:
    vendor.fake.configure(bill_like_vendor=True, text=LONG, token_chunks=True)  # ignores max_tokens
    uid, key = vendor.user("free")
    r = vendor.post(key, _hi(1))
    assert r.status_code == 200, r.text
    answer = r.json()
    assert vendor_billing.tokens(answer["choices"][0]["message"]["content"]) == 1
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 1
    [hold] = vendor.holds(uid)
    assert hold["charged_ucr"] <= hold["amount_ucr"]
    # Streaming: the same, and the stream says it stopped at the length limit.
    client = openai.OpenAI(base_url=vendor.api, api_key=key, max_retries=0)
    text, finish = "", None
    for chunk in client.chat.completions.create(stream=True, **_hi(5)):  # type: ignore[call-overload]
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    assert vendor_billing.tokens(text) == 5 and finish == "length"
    for hold in vendor.holds(uid):
        assert hold["charged_ucr"] <= hold["amount_ucr"]
    assert vendor.balance(uid).debt_ucr == 0


def test_usage_beyond_the_hold_is_the_operators_loss(vendor: VendorGateway, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A vendor whose report exceeds what the hold covered (a tokenizer we could only estimate):
    the user pays the hold, the rest shows in `ledger verify` and as "not charged" in the statement."""
    vendor.fake.configure(text="ok", chunks=1, prompt_tokens=100_000, completion_tokens=1)
    uid, key = vendor.user("free")
    r = vendor.post(key, _hi(10))
    assert r.status_code == 200, r.text
    [hold] = vendor.holds(uid)
    cost = 100_000 * PROMPT_UCR + OUTPUT_UCR
    assert hold["charged_ucr"] == hold["amount_ucr"] < cost
    assert r.json()["switchboard"]["charged_ucr"] == hold["amount_ucr"]
    lost = cost - hold["amount_ucr"]
    assert vendor.account_balances()["operator_losses"] == lost
    [record] = vendor.records(uid)
    assert record["charged_ucr"] == hold["amount_ucr"] and json.loads(record["route"])["not_charged_ucr"] == lost
    assert vendor.balance(uid).debt_ucr == 0 and vendor.verify() == []

    monkeypatch.setenv("SWITCHBOARD_DATABASE_URL", vendor.settings.database_url or "")
    monkeypatch.setenv("SWITCHBOARD_DATA_DIR", str(tmp_path / "cli"))
    monkeypatch.setenv("SWITCHBOARD_LOCAL_MODEL__ENABLED", "false")
    monkeypatch.delenv("SWITCHBOARD_CONFIG", raising=False)
    cli = CliRunner()
    verified = json.loads(cli.invoke(app, ["ledger", "verify", "--json"], catch_exceptions=False).stdout)
    assert verified["ok"] and verified["operator_losses"] == {"ucr": lost, "requests": 1}
    assert "operator losses" in cli.invoke(app, ["ledger", "verify"], catch_exceptions=False).stdout
    statement = json.loads(cli.invoke(app, ["ledger", "statement", "user1@example.com", "--json"],
                                      catch_exceptions=False).stdout)
    assert statement["not_charged_ucr"] == lost and statement["charges_ucr"] == -hold["amount_ucr"]
    assert "not charged" in cli.invoke(app, ["ledger", "statement", "user1@example.com"], catch_exceptions=False).stdout


def _stream_and_hang_up(vendor: VendorGateway, key: str, body: dict[str, object], after: int) -> str:
    received = ""
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.stream("POST", vendor.api + "/chat/completions", json={**body, "stream": True}, headers=headers,
                      timeout=30) as r:
        for line in r.iter_lines():
            if line.startswith("data: {") and '"content":"' in line:
                delta = json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                if delta:
                    received += delta
                    after -= 1
                    if after == 0:
                        break  # hang up
    return received


def test_a_cancelled_stream_is_charged_by_tokens_never_above_the_complete_answer(vendor: VendorGateway) -> None:
    prompt = "The quick brown fox jumps over the lazy dog. " * 300  # 3,000 tokens; 13,500 bytes
    answer = " ".join(f"part{i}" for i in range(60))
    vendor.fake.configure(bill_like_vendor=True, honour_max_tokens=True, text=answer, token_chunks=True,
                          chunk_delay_s=0.05)
    uid, key = vendor.user("plus")
    body = {"model": "wide", "max_tokens": 500, "messages": [{"role": "user", "content": prompt}]}
    complete = vendor.post(key, body)
    assert complete.status_code == 200
    full_charge = vendor.holds(uid)[0]["charged_ucr"]
    for cut in (3, 10, 40):
        received = _stream_and_hang_up(vendor, key, body, cut)
        deadline = time.monotonic() + 10
        while vendor.holds(uid)[-1]["status"] == "active" and time.monotonic() < deadline:
            time.sleep(0.05)
        hold = vendor.holds(uid)[-1]
        record = vendor.records(uid)[-1]
        assert record["outcome"] == "cancelled"
        sent_before_disconnect = vendor_billing.tokens(received) + 2  # a piece or two may have been in flight
        assert record["completion_tokens"] <= sent_before_disconnect
        assert record["prompt_tokens"] == vendor_billing.prompt_tokens({"messages": body["messages"]})
        assert hold["charged_ucr"] <= hold["amount_ucr"]
        assert hold["charged_ucr"] < full_charge


def test_a_failed_non_streaming_answer_costs_nothing(vendor: VendorGateway) -> None:
    """The upstream breaks mid-generation (connection lost, an error event, a stall): the client
    gets 502/504 and no content, and is charged nothing; the vendor's cost is the operator's loss."""
    uid, key = vendor.user("free")
    for failure, status in (({"fail_after_chunks": 2}, 502), ({"error_event_after_chunks": 2}, 502),
                            ({"stall_after_chunks": 2, "stall_s": 5}, 504)):
        vendor.fake.configure(bill_like_vendor=True, text=LONG, chunks=8, **failure)
        before = vendor.balance(uid).available_ucr
        r = vendor.post(key, _hi(1000))
        assert r.status_code == status, (failure, r.text)
        assert vendor.balance(uid).available_ucr == before
        record = vendor.records(uid)[-1]
        assert record["outcome"] == "error" and record["charged_ucr"] == 0
        assert record["completion_tokens"] > 0 and json.loads(record["route"])["not_charged_ucr"] > 0
    assert vendor.account_balances()["operator_losses"] > 0
    assert vendor.verify() == []
