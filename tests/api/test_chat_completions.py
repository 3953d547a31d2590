"""The OpenAI-compatible API end to end: the official SDK against a real server on a real port."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest

from switchboard.core.money import format_credits
from switchboard.store.db import reading
from tests.api.conftest import Gateway, add_user, balance, credits_for, usage_records, wait_for

PLUS_CREDITS = 6000.0


def client(gw: Gateway, **kw: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.api, api_key=gw.key, max_retries=0, **kw)  # type: ignore[arg-type]


def test_non_streaming_answer_usage_and_charge(gateway: Gateway) -> None:
    gateway.fake.configure(text="Paris is the capital.", chunks=4, prompt_tokens=20, completion_tokens=5, cached_tokens=8)
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="fake-small", messages=[{"role": "user", "content": "Capital of France?"}], max_tokens=50, temperature=0.2
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "Paris is the capital."
    assert completion.choices[0].finish_reason == "stop"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (20, 5)
    assert completion.usage.prompt_tokens_details.cached_tokens == 8
    charged = credits_for(20, 5, cached=8)
    assert raw.headers["x-switchboard-model"] == "fake-small"
    assert float(raw.headers["x-switchboard-credits-charged"]) == pytest.approx(charged)
    assert float(raw.headers["x-switchboard-credits-remaining"]) == pytest.approx(PLUS_CREDITS - charged)
    sent = gateway.fake.last.json
    assert sent["model"] == "fake-model" and sent["stream"] is True and sent["max_tokens"] == 50
    assert sent["stream_options"] == {"include_usage": True} and sent["temperature"] == 0.2
    assert balance(gateway)["available_credits"] == pytest.approx(PLUS_CREDITS - charged)
    [record] = usage_records(gateway)
    assert record["outcome"] == "ok" and record["model"] == "fake-small" and record["provider"] == "fake"
    assert (record["prompt_tokens"], record["cached_prompt_tokens"], record["completion_tokens"]) == (20, 8, 5)
    assert record["credits_charged"] == pytest.approx(charged) and record["latency_ms"] > 0
    assert record["ttft_ms"] is not None and record["ttft_ms"] <= record["latency_ms"]


def test_streaming_with_include_usage(gateway: Gateway) -> None:
    gateway.fake.configure(text="one two three four", chunks=4, prompt_tokens=12, completion_tokens=4, chunk_delay_s=0.01)
    stream = client(gateway).chat.completions.create(
        model="fake-small", messages=[{"role": "user", "content": "count"}], stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three four"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    final = chunks[-1]
    assert final.choices == [] and final.usage.prompt_tokens == 12 and final.usage.completion_tokens == 4
    meter = final.model_extra["switchboard"]
    assert meter["credits_charged"] == pytest.approx(credits_for(12, 4))
    assert meter["credits_remaining"] == pytest.approx(PLUS_CREDITS - credits_for(12, 4))
    assert meter["ttft_ms"] > 0 and meter["decode_tokens_per_s"] > 0
    # Without include_usage no usage chunk is sent, but the last chunk still carries the metering.
    plain = list(client(gateway).chat.completions.create(model="fake-small", messages=[{"role": "user", "content": "x"}], stream=True))
    assert all(c.usage is None for c in plain) and "switchboard" in plain[-1].model_extra


def test_async_client(gateway: Gateway) -> None:
    gateway.fake.configure(text="async works", chunks=2)

    async def go() -> tuple[str, str]:
        async with openai.AsyncOpenAI(base_url=gateway.api, api_key=gateway.key, max_retries=0) as aclient:
            whole = await aclient.chat.completions.create(model="fake-small", messages=[{"role": "user", "content": "hi"}])
            stream = await aclient.chat.completions.create(model="fake-small", messages=[{"role": "user", "content": "hi"}], stream=True)
            parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
            return whole.choices[0].message.content or "", "".join(parts)

    assert asyncio.run(go()) == ("async works", "async works")
    assert len(usage_records(gateway)) == 2


def test_models_lists_the_catalog(gateway: Gateway) -> None:
    models = client(gateway).models.list()
    # The chat models, then the embedding model (never chosen by auto), each with its type.
    assert [(m.id, m.model_extra["type"]) for m in models.data] == [("fake-small", "chat"),
                                                                    ("all-minilm-l6-v2", "embedding")]


def test_auth_errors(gateway: Gateway) -> None:
    with pytest.raises(openai.AuthenticationError) as bad:
        openai.OpenAI(base_url=gateway.api, api_key="sb-not-a-real-key", max_retries=0).models.list()
    assert bad.value.status_code == 401 and "sb-not-a-real-key" not in str(bad.value)
    missing = httpx.post(gateway.api + "/chat/completions", json={})
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    "body, fragment",
    [
        (b"{not json", "not valid JSON"),
        (b"", "empty"),
        (json.dumps({"model": "fake-small"}).encode(), "messages"),
        (json.dumps({"model": "fake-small", "messages": []}).encode(), "messages"),
        (json.dumps({"model": "fake-small", "messages": [{"role": "user", "content": "x"}], "temperature": 3}).encode(), "temperature"),
        (json.dumps({"model": "fake-small", "messages": [{"role": "wizard", "content": "x"}]}).encode(), "role"),
        (json.dumps({"model": "fake-small", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}).encode(), "max_tokens"),
    ],
)
def test_invalid_bodies_get_400_in_openai_format(gateway: Gateway, body: bytes, fragment: str) -> None:
    r = httpx.post(gateway.api + "/chat/completions", content=body,
                   headers={"Authorization": f"Bearer {gateway.key}", "Content-Type": "application/json"})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and fragment in error["message"]
    assert gateway.fake.chat_requests() == []  # nothing reached the upstream


def test_unknown_model_is_404(gateway: Gateway) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client(gateway).chat.completions.create(model="gpt-17", messages=[{"role": "user", "content": "x"}])
    assert err.value.code == "model_not_found" and "fake-small" in err.value.message


def test_prompt_longer_than_context_is_413(gateway: Gateway) -> None:
    with pytest.raises(openai.APIStatusError) as err:
        client(gateway).chat.completions.create(model="fake-small", messages=[{"role": "user", "content": "word " * 20_000}])
    assert err.value.status_code == 413 and err.value.code == "context_length_exceeded"
    assert balance(gateway)["held_credits"] == 0


def test_upstream_failure_before_output_is_502_and_free(gateway: Gateway) -> None:
    gateway.fake.configure(status=500, error_message="upstream exploded")
    with pytest.raises(openai.InternalServerError) as err:
        client(gateway).chat.completions.create(model="fake-small", messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 502 and "upstream exploded" in err.value.message
    b = balance(gateway)
    assert (b["available_credits"], b["held_credits"]) == (PLUS_CREDITS, 0)
    [record] = usage_records(gateway)
    assert record["outcome"] == "error" and record["charged_ucr"] == 0


def test_upstream_timeout_is_504(gateway: Gateway) -> None:
    gateway.fake.configure(first_byte_delay_s=8)  # read timeout is 5 s
    with pytest.raises(openai.APIStatusError) as err:
        client(gateway, timeout=30).chat.completions.create(model="fake-small", messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 504
    assert balance(gateway)["available_credits"] == PLUS_CREDITS


def test_upstream_cut_mid_stream_charges_what_was_produced(gateway: Gateway) -> None:
    gateway.fake.configure(text="aaaa bbbb cccc dddd eeee ffff", chunks=6, fail_after_chunks=3)
    stream = client(gateway).chat.completions.create(model="fake-small", messages=[{"role": "user", "content": "x"}], stream=True)
    received = ""
    with pytest.raises(openai.APIError):
        for chunk in stream:
            if chunk.choices:
                received += chunk.choices[0].delta.content or ""
    assert received == "aaaa bbbb cccc "
    [record] = wait_for(lambda: usage_records(gateway))
    assert record["outcome"] == "error" and 0 < record["completion_tokens"] < 8
    assert balance(gateway)["available_credits"] == pytest.approx(PLUS_CREDITS - record["credits_charged"])


def test_client_disconnect_mid_stream_charges_only_what_was_delivered(gateway: Gateway) -> None:
    gateway.fake.configure(text=" ".join(f"w{i:02d}" for i in range(40)), chunks=40, chunk_delay_s=0.1,
                           prompt_tokens=10, completion_tokens=40)
    headers = {"Authorization": f"Bearer {gateway.key}"}
    body = {"model": "fake-small", "messages": [{"role": "user", "content": "go"}], "stream": True}
    delivered = 0
    with httpx.stream("POST", gateway.api + "/chat/completions", json=body, headers=headers, timeout=30) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and '"content":"w' in line:
                delivered += 1
                if delivered == 5:
                    break  # hang up
    [record] = wait_for(lambda: usage_records(gateway))
    assert record["outcome"] == "cancelled"
    # Only what was produced before the hang-up (a chunk or two may have been in flight), far from all 40
    # words: counted with o200k, as an unknown server's tokenizer is estimated (about 2 tokens a word).
    assert 5 <= record["completion_tokens"] <= 30
    assert record["credits_charged"] < credits_for(10, 40) / 2
    b = balance(gateway)
    assert b["held_credits"] == 0
    assert b["available_credits"] == pytest.approx(PLUS_CREDITS - record["credits_charged"])
    time.sleep(0.5)
    assert len(gateway.fake.chat_requests()) == 1


def test_idempotency_key_is_never_charged_twice(gateway: Gateway) -> None:
    c = client(gateway)
    kwargs = dict(model="fake-small", messages=[{"role": "user", "content": "x"}], extra_headers={"Idempotency-Key": "abc-1"})
    first = c.chat.completions.create(**kwargs)  # type: ignore[arg-type]
    again = c.chat.completions.with_raw_response.create(**kwargs)  # type: ignore[arg-type]
    assert again.headers["idempotent-replayed"] == "true" and again.parse().id == first.id  # tests/api/test_idempotency.py
    assert len(usage_records(gateway)) == 1


def test_usage_is_newest_first_and_paginated(gateway: Gateway) -> None:
    c = client(gateway)
    for i in range(5):
        c.chat.completions.create(model="fake-small", messages=[{"role": "user", "content": "x"}], extra_headers={"X-Request-Id": f"r{i}"})
    h = {"Authorization": f"Bearer {gateway.key}"}
    page1 = httpx.get(gateway.api + "/usage?limit=3", headers=h).json()
    assert [r["request_id"] for r in page1["data"]] == ["r4", "r3", "r2"] and page1["has_more"]
    page2 = httpx.get(gateway.api + f"/usage?limit=3&before={page1['next_before']}", headers=h).json()
    assert [r["request_id"] for r in page2["data"]] == ["r1", "r0"] and not page2["has_more"]
    assert httpx.get(gateway.api + "/usage?limit=0", headers=h).status_code == 400


def test_health(gateway: Gateway) -> None:
    r = httpx.get(gateway.url + "/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    missing = httpx.get(gateway.url + "/v1/nothing-here")
    assert missing.status_code == 404 and "error" in missing.json()


def test_ledger_consistent_after_everything(gateway: Gateway) -> None:
    gateway.fake.configure(text="fine", chunks=1)
    for _ in range(3):
        client(gateway).chat.completions.create(model="fake-small", messages=[{"role": "user", "content": "x"}])
    from switchboard.inference.runtime import make_ledger

    with reading(gateway.engine) as conn:
        assert make_ledger(gateway.settings).verify(conn) == []
    assert format_credits(0) == "0"


def test_not_enough_credits_is_402_with_balance_and_need(gateway: Gateway) -> None:
    _, key = add_user(gateway.engine, gateway.settings, "poor@example.com", "free")  # 100 credits
    poor = openai.OpenAI(base_url=gateway.api, api_key=key, max_retries=0)
    with pytest.raises(openai.APIStatusError) as err:
        poor.chat.completions.create(model="fake-small", messages=[{"role": "user", "content": "word " * 400}], max_tokens=100)
    assert err.value.status_code == 402 and err.value.code == "insufficient_credits"
    # 401 o200k tokens, x1.5 for a server whose tokenizer is unknown, + 7 of framing: 609 (121.8 credits) + 100 out (40).
    assert "available 100," in err.value.message and "needs up to 161.8" in err.value.message
    assert gateway.fake.chat_requests() == []


def test_without_max_tokens_the_answer_is_shortened_to_what_the_balance_affords(gateway: Gateway) -> None:
    _, key = add_user(gateway.engine, gateway.settings, "thrifty@example.com", "free")  # 100 credits
    poor = openai.OpenAI(base_url=gateway.api, api_key=key, max_retries=0)
    # 309 prompt tokens (201 o200k tokens x1.5 + 7: 61.8 credits) + the model's 100 output tokens (40) would
    # need 101.8 credits.
    poor.chat.completions.create(model="fake-small", messages=[{"role": "user", "content": "word " * 200}])
    assert gateway.fake.last.json["max_tokens"] == 95  # (100 - 61.8) / 0.4 per token


def test_responses_validate_against_the_sdk_types(gateway: Gateway) -> None:
    """The SDK builds its objects without validating; here every body and chunk we send is
    validated against its pydantic types, so a missing or mistyped field fails the test."""
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    from tests.fakes.openai_upstream import FakeToolCall

    gateway.fake.configure(text="valid", chunks=2, tool_calls=[FakeToolCall("call_1", "f", '{"a": 1}')])
    headers = {"Authorization": f"Bearer {gateway.key}"}
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    body = {"model": "fake-small", "messages": [{"role": "user", "content": "x"}], "tools": tools}
    whole = httpx.post(gateway.api + "/chat/completions", json=body, headers=headers).json()
    completion = ChatCompletion.model_validate(whole)
    assert completion.choices[0].message.tool_calls[0].function.arguments == '{"a": 1}'
    with httpx.stream("POST", gateway.api + "/chat/completions", headers=headers,
                      json={**body, "stream": True, "stream_options": {"include_usage": True}}) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate_json(e) for e in events[:-1]]
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    models = httpx.get(gateway.api + "/models", headers=headers).json()
    from openai.types import Model

    assert [Model.model_validate(m).id for m in models["data"]] == ["fake-small", "all-minilm-l6-v2"]


def test_usage_summary_and_export(gateway: Gateway) -> None:
    import csv
    import io

    gateway.fake.configure(text="ok", chunks=1, prompt_tokens=10, completion_tokens=5)
    for _ in range(3):
        client(gateway).chat.completions.create(model="fake-small", messages=[{"role": "user", "content": "x"}])
    gateway.fake.configure(status=500)
    with pytest.raises(openai.InternalServerError):
        client(gateway).chat.completions.create(model="fake-small", messages=[{"role": "user", "content": "x"}])
    h = {"Authorization": f"Bearer {gateway.key}"}
    [by_model] = httpx.get(gateway.api + "/usage/summary?by=model", headers=h).json()["data"]
    assert by_model["model"] == "fake-small" and by_model["requests"] == 4 and by_model["failed_requests"] == 1
    assert by_model["prompt_tokens"] == 30 and by_model["credits_charged"] == pytest.approx(3 * credits_for(10, 5))
    assert by_model["cost_usd"] == "0.06"  # 3 x (10 x 0.001 + 5 x 0.002), exact
    [by_day] = httpx.get(gateway.api + "/usage/summary?by=day&days=1", headers=h).json()["data"]
    assert by_day["requests"] == 4 and len(by_day["day"]) == 10
    assert httpx.get(gateway.api + "/usage/summary?by=week", headers=h).status_code == 400
    exported = httpx.get(gateway.api + "/usage/export?format=csv", headers=h)
    assert exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert len(rows) == 4 and [r["outcome"] for r in rows] == ["ok", "ok", "ok", "error"]  # oldest first
    assert "user_id" not in rows[0]
    as_json = httpx.get(gateway.api + "/usage/export?format=json", headers=h).json()["data"]
    assert [r["request_id"] for r in as_json] == [r["request_id"] for r in rows]
