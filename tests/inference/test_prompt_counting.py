"""Issue 12, item 1: the hold and the context-window check count everything the vendor bills.

The fake vendor bills tool descriptions, response formats, images and system text as prompt
tokens (tests/fakes/vendor_billing.py). Before this fix the gateway counted only the messages:
a Free user with 100 credits ran up thousands of credits of debt with a 400 KB tool
description, a daily cap of 1 credit let a 60-credit request through, and a 4,096-token model
answered 200 to a prompt of 50,000 tokens.
"""

from __future__ import annotations

import struct
import zlib
import base64

from switchboard.core.types import ChatMessage, ChatRequest, ImagePart, TextPart, ToolSpec
from switchboard.providers.image_tokens import image_size, openai_image_tokens
from switchboard.providers.prompt_tokens import openai_counter
from tests.fakes import vendor_billing
from tests.inference.conftest import C, VendorGateway

BIG_TOOL = {"type": "function", "function": {"name": "f", "description": "x" * 400_000}}


def png_data_url(width: int, height: int) -> str:
    """A real (blank, grey) PNG of the given size, as a base64 data: URL."""
    raw = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return "data:image/png;base64," + base64.b64encode(png).decode()


def test_a_tool_description_over_the_window_is_413(vendor: VendorGateway) -> None:
    _, key = vendor.user("plus")
    r = vendor.post(key, {"model": "narrow", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}],
                          "tools": [BIG_TOOL]})
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "context_length_exceeded"
    assert vendor.fake.chat_requests() == []


def test_a_response_format_over_the_window_is_413(vendor: VendorGateway) -> None:
    _, key = vendor.user("plus")
    schema = {"type": "object", "properties": {f"field_{i}": {"type": "string", "description": "a long field " * 5}
                                               for i in range(300)}}
    fmt = {"type": "json_schema", "json_schema": {"name": "big", "schema": schema}}
    r = vendor.post(key, {"model": "narrow", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}],
                          "response_format": fmt})
    assert r.status_code == 413 and r.json()["error"]["code"] == "context_length_exceeded"


def test_images_count_toward_the_window(vendor: VendorGateway) -> None:
    _, key = vendor.user("plus")
    image = {"type": "image_url", "image_url": {"url": png_data_url(2048, 768), "detail": "high"}}  # 1,105 tokens
    content = [{"type": "text", "text": "describe"}] + [image] * 4
    r = vendor.post(key, {"model": "narrow", "max_tokens": 1, "messages": [{"role": "user", "content": content}]})
    assert r.status_code == 413, r.text


def test_a_big_tool_description_is_held_and_never_makes_debt(vendor: VendorGateway) -> None:
    """The issue's request, 40 times, from a Free user with 100 credits: each one is held at what
    the vendor bills (about 30 credits), so the user runs three and then gets 402, and owes nothing."""
    vendor.fake.configure(bill_like_vendor=True, honour_max_tokens=True)
    uid, key = vendor.user("free")
    body = {"model": "wide", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}], "tools": [BIG_TOOL]}
    statuses = [vendor.post(key, body).status_code for _ in range(40)]
    assert statuses.count(200) == 3 and statuses[3:] == [402] * 37, statuses
    for hold in vendor.holds(uid):
        assert hold["charged_ucr"] is None or hold["charged_ucr"] <= hold["amount_ucr"]
    billed = vendor_billing.prompt_tokens(vendor.fake.chat_requests()[0].json)
    for record in vendor.records(uid):  # the vendor's own figure was charged in full: it was held
        assert record["prompt_tokens"] == billed and record["charged_ucr"] == billed * 600 + record["completion_tokens"] * 3000
    b = vendor.balance(uid)
    assert b.debt_ucr == 0 and b.balance_ucr >= 0
    assert vendor.account_balances().get("operator_losses", 0) == 0
    assert vendor.verify() == []


def test_a_daily_cap_refuses_what_it_cannot_cover(vendor: VendorGateway) -> None:
    uid, key = vendor.user("free")
    with vendor.engine.begin() as conn:
        from switchboard.inference.runtime import make_ledger
        make_ledger(vendor.settings).set_caps(conn, uid, C, None)  # 1 credit a day
    body = {"model": "wide", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}], "tools": [BIG_TOOL]}
    r = vendor.post(key, body)
    assert r.status_code == 402 and r.json()["error"]["code"] == "spending_cap_reached", r.text
    assert vendor.fake.chat_requests() == [] and vendor.holds(uid) == []
    # Without max_tokens, a request is shortened to what the cap still allows before it is refused.
    ok = vendor.post(key, {"model": "wide", "messages": [{"role": "user", "content": "hi"}]})
    assert ok.status_code == 200, ok.text
    [hold] = vendor.holds(uid)
    assert hold["amount_ucr"] <= C and hold["charged_ucr"] <= hold["amount_ucr"]


def test_the_count_covers_what_the_vendor_bills() -> None:
    """Unit check of the counter itself against the vendor's formula, for each part of a request."""
    counter = openai_counter("o200k_base")
    url = png_data_url(1024, 1024)
    assert image_size(url) == (1024, 1024)
    assert openai_image_tokens("gpt-4o", ImagePart(url, "high")) == 85 + 170 * 4  # OpenAI's worked example
    assert openai_image_tokens("gpt-4o", ImagePart(url, "low")) == 85
    request = ChatRequest("gpt-4o", [
        ChatMessage("system", "You are terse."),
        ChatMessage("user", [TextPart("What is this?"), ImagePart(url, "high")]),
    ], tools=[ToolSpec("lookup", "Looks a word up." * 50, {"type": "object", "properties": {
        "word": {"type": "string", "description": "the word"}, "lang": {"type": "string", "enum": ["en", "fr"]}}})],
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}})
    payload = {
        "model": "gpt-4o",
        "messages": [{"role": "system", "content": "You are terse."},
                     {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                                  {"type": "image_url", "image_url": {"url": url, "detail": "high"}}]}],
        "tools": [{"type": "function", "function": {"name": t.name, "description": t.description,
                                                    "parameters": t.parameters}} for t in request.tools or []],
        "response_format": request.response_format,
    }
    count = counter.count("gpt-4o", request)
    billed = vendor_billing.prompt_tokens(payload)
    assert count.bound == count.estimate >= billed
    assert count.bound - billed < 60  # generous, not wasteful
