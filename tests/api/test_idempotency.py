"""Idempotency-Key as Stripe does it, end to end with the official SDKs: a completed request's
response is replayed (not charged again), a different body is 422, a request still running or a
stream is 409, and the stored response is encrypted at rest."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from sqlalchemy import select

from switchboard.store.db import reading
from switchboard.store.schema import idempotency_keys
from tests.api.conftest import Gateway, add_user, balance, usage_records, wait_for

ASK = [{"role": "user", "content": "x"}]
SENTINEL = "Zanzibar-turquoise-sentinel-4417"


def client(gw: Gateway, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.api, api_key=key or gw.key, max_retries=0)


def keyed(key: str) -> dict[str, Any]:
    return {"extra_headers": {"Idempotency-Key": key}}


def test_a_completed_request_is_replayed_and_not_charged_again(gateway: Gateway) -> None:
    gateway.fake.configure(text="first answer", prompt_tokens=10, completion_tokens=3)
    c = client(gateway)
    first = c.chat.completions.with_raw_response.create(model="fake-small", messages=ASK, **keyed("k-1"))
    after_first = balance(gateway)["available_credits"]
    gateway.fake.configure(text="a different answer")
    again = c.chat.completions.with_raw_response.create(model="fake-small", messages=ASK, **keyed("k-1"))
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert again.parse().model_dump() == first.parse().model_dump()  # the same answer, id and metering
    assert again.parse().choices[0].message.content == "first answer"
    for header in ("x-switchboard-request-id", "x-switchboard-credits-charged", "x-switchboard-model",
                   "x-switchboard-route", "content-type"):
        assert again.headers[header] == first.headers[header]
    assert first.headers["x-switchboard-request-id"] == "k-1"
    assert len(gateway.fake.chat_requests()) == 1  # the upstream ran once
    assert len(usage_records(gateway)) == 1 and balance(gateway)["available_credits"] == after_first
    # The same body written differently (key order, spacing) is the same request.
    body = {"messages": ASK, "model": "fake-small"}
    r = httpx.post(gateway.api + "/chat/completions", content=json.dumps(body, indent=2),
                   headers={"Authorization": f"Bearer {gateway.key}", "Idempotency-Key": "k-1",
                            "Content-Type": "application/json"})
    assert r.status_code == 200 and r.headers["idempotent-replayed"] == "true"


def test_the_same_key_with_another_body_is_422(gateway: Gateway) -> None:
    c = client(gateway)
    c.chat.completions.create(model="fake-small", messages=ASK, **keyed("k-2"))
    with pytest.raises(openai.UnprocessableEntityError) as err:
        c.chat.completions.create(model="fake-small", messages=[{"role": "user", "content": "y"}], **keyed("k-2"))
    assert err.value.status_code == 422 and err.value.code == "idempotency_key_reused"
    assert len(gateway.fake.chat_requests()) == 1 and len(usage_records(gateway)) == 1


def test_409_while_the_first_is_still_running_then_its_answer(gateway: Gateway) -> None:
    gateway.fake.configure(text="slow answer", first_byte_delay_s=1.5)
    results: list[Any] = []
    first = threading.Thread(target=lambda: results.append(
        client(gateway).chat.completions.create(model="fake-small", messages=ASK, **keyed("k-3"))))
    first.start()
    wait_for(lambda: gateway.fake.chat_requests())
    with pytest.raises(openai.ConflictError) as err:
        client(gateway).chat.completions.create(model="fake-small", messages=ASK, **keyed("k-3"))
    assert err.value.code == "idempotency_key_in_use" and "still running" in err.value.message
    assert "'k-3'" in err.value.message  # names the first request's id
    first.join(10)
    replay = client(gateway).chat.completions.with_raw_response.create(model="fake-small", messages=ASK, **keyed("k-3"))
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.parse().choices[0].message.content == "slow answer" == results[0].choices[0].message.content
    assert len(gateway.fake.chat_requests()) == 1 and len(usage_records(gateway)) == 1


def test_a_stream_is_not_replayed_409_naming_it(gateway: Gateway) -> None:
    c = client(gateway)
    chunks = list(c.chat.completions.create(model="fake-small", messages=ASK, stream=True, **keyed("k-4")))
    assert chunks
    with pytest.raises(openai.ConflictError) as err:
        c.chat.completions.create(model="fake-small", messages=ASK, stream=True, **keyed("k-4"))
    assert "stream" in err.value.message and "'k-4'" in err.value.message
    with pytest.raises(openai.UnprocessableEntityError):  # without stream: true, another request
        c.chat.completions.create(model="fake-small", messages=ASK, **keyed("k-4"))
    assert len(gateway.fake.chat_requests()) == 1 and len(usage_records(gateway)) == 1


def test_a_failure_that_answered_nothing_can_be_retried_with_its_key(gateway: Gateway) -> None:
    gateway.fake.configure(status=500)
    c = client(gateway)
    with pytest.raises(openai.APIStatusError) as err:
        c.chat.completions.create(model="fake-small", messages=ASK, **keyed("k-5"))
    assert err.value.status_code == 502
    gateway.fake.configure(text="worked this time", prompt_tokens=10, completion_tokens=2)
    raw = wait_for(lambda: _try(c, "k-5"))  # the failed attempt's record is released in the background
    assert raw.parse().choices[0].message.content == "worked this time"
    assert raw.headers["x-switchboard-request-id"] == "k-5~2"  # the ledger never reuses a request id
    replay = c.chat.completions.with_raw_response.create(model="fake-small", messages=ASK, **keyed("k-5"))
    assert replay.headers["idempotent-replayed"] == "true"
    records = usage_records(gateway)
    assert sorted((r["request_id"], r["outcome"]) for r in records) == [("k-5", "error"), ("k-5~2", "ok")]
    assert sum(r["credits_charged"] for r in records) == pytest.approx(10 * 0.2 + 2 * 0.4)


def test_a_stream_that_failed_before_any_output_can_be_retried(gateway: Gateway) -> None:
    gateway.fake.configure(status=500)
    c = client(gateway)
    with pytest.raises(openai.APIError):  # the error arrives inside the stream (its headers were sent)
        list(c.chat.completions.create(model="fake-small", messages=ASK, stream=True, **keyed("k-7")))
    gateway.fake.configure(text="streamed at last")

    def again() -> str | None:
        try:
            chunks = c.chat.completions.create(model="fake-small", messages=ASK, stream=True, **keyed("k-7"))
            return "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        except openai.ConflictError:
            return None

    assert wait_for(again) == "streamed at last"
    with pytest.raises(openai.ConflictError):  # now it is a stream that answered: never again
        list(c.chat.completions.create(model="fake-small", messages=ASK, stream=True, **keyed("k-7")))


def _try(c: openai.OpenAI, key: str) -> Any:
    try:
        return c.chat.completions.with_raw_response.create(model="fake-small", messages=ASK, **keyed(key))
    except openai.ConflictError:
        return None


def test_keys_are_per_user(gateway: Gateway) -> None:
    _, bob_key = add_user(gateway.engine, gateway.settings, "bob@example.com", "plus")
    gateway.fake.configure(text="for alice")
    alice = client(gateway).chat.completions.create(model="fake-small", messages=ASK, **keyed("shared"))
    gateway.fake.configure(text="for bob")
    bob = client(gateway, bob_key).chat.completions.with_raw_response.create(
        model="fake-small", messages=[{"role": "user", "content": "other"}], **keyed("shared"))
    assert "idempotent-replayed" not in bob.headers  # not alice's answer, nor a 409/422
    assert bob.parse().choices[0].message.content == "for bob" and alice.choices[0].message.content == "for alice"
    bob_again = client(gateway, bob_key).chat.completions.with_raw_response.create(
        model="fake-small", messages=[{"role": "user", "content": "other"}], **keyed("shared"))
    assert bob_again.parse().choices[0].message.content == "for bob"


def test_the_stored_response_is_encrypted_at_rest(gateway: Gateway, tmp_path: Path) -> None:
    gateway.fake.configure(text=f"The secret is {SENTINEL}.")
    answer = client(gateway).chat.completions.create(model="fake-small", messages=ASK, **keyed("k-6"))
    assert SENTINEL in answer.choices[0].message.content
    with reading(gateway.engine) as conn:
        [stored] = conn.execute(select(idempotency_keys.c.response)).scalars().all()
    assert stored and SENTINEL.encode() not in bytes(stored)
    # Nowhere in the database's files (the WAL included) is the phrase in plain text.
    files = list(tmp_path.glob("gw.db*"))
    assert files and not any(SENTINEL.encode() in f.read_bytes() for f in files)
    replay = client(gateway).chat.completions.create(model="fake-small", messages=ASK, **keyed("k-6"))
    assert SENTINEL in replay.choices[0].message.content
    key_file = gateway.settings.data_dir / "master.key"
    assert key_file.exists() and oct(key_file.stat().st_mode & 0o777) == "0o600"


def test_without_a_key_nothing_is_stored(gateway: Gateway) -> None:
    for _ in range(2):
        client(gateway).chat.completions.create(model="fake-small", messages=ASK)
    with reading(gateway.engine) as conn:
        assert conn.execute(select(idempotency_keys.c.id)).all() == []
    assert len(usage_records(gateway)) == 2


# -- Anthropic's Messages API: the same rules, errors in Anthropic's shape ----------------------


def anthropic_client(gw: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=gw.key, max_retries=0)


def test_messages_replay_422_and_409_in_anthropics_shape(gateway: Gateway) -> None:
    a = anthropic_client(gateway)
    kwargs: dict[str, Any] = dict(model="fake-small", max_tokens=5, messages=ASK)
    first = a.messages.with_raw_response.create(**kwargs, extra_headers={"Idempotency-Key": "m-1"})
    again = a.messages.with_raw_response.create(**kwargs, extra_headers={"Idempotency-Key": "m-1"})
    assert again.headers["idempotent-replayed"] == "true" and again.headers["request-id"] == "m-1"
    assert again.parse().model_dump() == first.parse().model_dump()
    with pytest.raises(anthropic.UnprocessableEntityError) as err:
        a.messages.create(**{**kwargs, "max_tokens": 6}, extra_headers={"Idempotency-Key": "m-1"})
    body: Any = err.value.body
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "different request" in body["error"]["message"]
    # The key is per endpoint too: used on /v1/chat/completions, it is another request.
    with pytest.raises(openai.UnprocessableEntityError):
        client(gateway).chat.completions.create(model="fake-small", messages=ASK, **keyed("m-1"))
    with a.messages.stream(**kwargs, extra_headers={"Idempotency-Key": "m-2"}) as stream:
        stream.get_final_message()
    with pytest.raises(anthropic.ConflictError) as conflict:
        a.messages.create(**kwargs, stream=True, extra_headers={"Idempotency-Key": "m-2"})
    body = conflict.value.body
    assert body["type"] == "error" and "'m-2'" in body["error"]["message"]
    assert len(gateway.fake.chat_requests()) == 2 and len(usage_records(gateway)) == 2
