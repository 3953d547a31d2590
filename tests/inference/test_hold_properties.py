"""The hold's promise, over random requests (issue 12's proof): with tools, response formats,
images, system text and history, against a vendor that bills all of it (and may ignore
max_tokens):

- a request is never charged more than its hold;
- the context-window check is on the whole billed prompt: a request whose prompt, as the vendor
  counts it, does not fit the window is refused with 413 and never reaches the vendor; one that
  reaches it fits;
- the hold covers the vendor's own prompt count, so no cost falls to the operator when the
  vendor keeps to max_tokens;
- inference never puts a user in debt, and the ledger verifies after every request.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fakes import vendor_billing
from tests.fakes.openai_upstream import FakeOpenAI
from tests.inference.conftest import VendorGateway, start_gateway
from tests.inference.test_prompt_counting import png_data_url

WINDOWS = {"wide": 128_000, "narrow": 4096}

words = st.text(alphabet=st.sampled_from("abcdefghij klmnop QRS 0123 ,.!?é漢🙂\n"), max_size=300)
long_text = st.builds(lambda w, n: w * n, st.sampled_from(["lorem ipsum ", "x", "日本語", "{\"a\": 1} "]),
                      st.integers(0, 6000))
texts = st.one_of(words, long_text)
images = st.builds(
    lambda w, h, detail: {"type": "image_url", "image_url": {"url": png_data_url(w, h), **({"detail": detail} if detail else {})}},
    st.integers(1, 2500), st.integers(1, 2500), st.sampled_from([None, "low", "high", "auto"]),
)
user_content = st.one_of(texts, st.lists(st.one_of(st.builds(lambda t: {"type": "text", "text": t}, texts), images),
                                         min_size=1, max_size=3))
properties = st.dictionaries(
    st.from_regex(r"[a-z_]{1,12}", fullmatch=True),
    st.builds(lambda t, d, e: {"type": t, "description": d, **({"enum": e} if e else {})},
              st.sampled_from(["string", "integer", "boolean"]), words,
              st.lists(st.from_regex(r"[a-z]{1,8}", fullmatch=True), max_size=4)),
    max_size=5,
)
tools = st.lists(st.builds(
    lambda name, desc, props: {"type": "function", "function": {
        "name": name, "description": desc, "parameters": {"type": "object", "properties": props}}},
    st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True), texts, properties), max_size=3)
response_formats = st.one_of(
    st.none(), st.just({"type": "json_object"}),
    st.builds(lambda props: {"type": "json_schema", "json_schema": {"name": "out", "schema": {
        "type": "object", "properties": props}}}, properties),
)
history = st.lists(st.one_of(
    st.builds(lambda t: {"role": "assistant", "content": t}, words),
    st.builds(lambda t: {"role": "user", "content": t}, words),
), max_size=3)


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(texts)})
    messages += draw(history)
    messages.append({"role": "user", "content": draw(user_content)})
    body: dict[str, Any] = {"model": draw(st.sampled_from(sorted(WINDOWS))), "messages": messages}
    if draw(st.booleans()):
        body["max_tokens"] = draw(st.integers(1, 2000))
    if chosen := draw(tools):
        body["tools"] = chosen
    if (fmt := draw(response_formats)) is not None:
        body["response_format"] = fmt
    return body


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VendorGateway]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VENDOR_TEST_KEY", "test-secret-key-123")
        with FakeOpenAI() as fake:
            yield from start_gateway(Path(tmp_path_factory.mktemp("holds")), fake)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(body=requests(), answer=texts, honour=st.booleans(), stream=st.booleans(), plan=st.sampled_from(["free", "plus"]))
def test_never_charged_above_the_hold(gateway: VendorGateway, body: dict[str, Any], answer: str, honour: bool,
                                      stream: bool, plan: str) -> None:
    gateway.fake.configure(bill_like_vendor=True, honour_max_tokens=honour, text=answer or "ok", token_chunks=True)
    seen = len(gateway.fake.chat_requests())
    uid, key = gateway.user(plan)
    r = gateway.post(key, {**body, "stream": stream})
    billed_prompt = vendor_billing.prompt_tokens({**body, "model": "gpt-4o"})  # both models' upstream name
    forwarded = gateway.fake.chat_requests()[seen:]
    assert r.status_code in (200, 402, 413), r.text
    if r.status_code == 413:
        assert r.json()["error"]["code"] == "context_length_exceeded" and not forwarded
    if billed_prompt >= WINDOWS[body["model"]]:  # the window check counts what the vendor counts
        assert r.status_code == 413, (billed_prompt, r.text[:300])
    if forwarded:
        sent = forwarded[0].json
        assert billed_prompt + sent["max_completion_tokens"] <= WINDOWS[body["model"]]
    for hold in gateway.holds(uid):
        assert hold["status"] != "active"
        assert hold["charged_ucr"] <= hold["amount_ucr"]
        for record in gateway.records(uid):
            route = json.loads(record["route"] or "{}")
            if honour:  # the vendor kept to max_tokens and its prompt count was held: nothing lost
                assert "not_charged_ucr" not in route, route
    b = gateway.balance(uid)
    assert b.debt_ucr == 0 and b.balance_ucr >= 0
    assert gateway.verify() == []
