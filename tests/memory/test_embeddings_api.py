"""POST /v1/embeddings through OpenAI's own SDK, metered and charged; /v1/models lists the
embedding model after the chat models; the memories API over HTTP."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import openai

from tests.api.conftest import Gateway, balance, fake_upstream, gateway, usage_records  # noqa: F401 (fixtures)

AUTH = "Authorization"


def test_embeddings_in_openais_format_metered_and_charged(gateway: Gateway) -> None:
    client = openai.OpenAI(base_url=gateway.api, api_key=gateway.key)
    before = balance(gateway)["available_ucr"]
    one = client.embeddings.create(model="all-minilm-l6-v2", input="My sister is called Ana.")
    assert len(one.data) == 1 and len(one.data[0].embedding) == 384
    assert abs(np.linalg.norm(one.data[0].embedding) - 1) < 1e-3
    many = client.embeddings.create(model="all-minilm-l6-v2", input=["cats", "dogs", "tax law"])  # asks base64
    assert [d.index for d in many.data] == [0, 1, 2]
    cats, dogs, law = (np.array(d.embedding) for d in many.data)
    assert cats @ dogs > cats @ law
    raw = httpx.post(gateway.api + "/embeddings", headers={AUTH: f"Bearer {gateway.key}"},
                     json={"model": "all-minilm-l6-v2", "input": "cats", "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, cats, atol=1e-6)
    assert one.usage.prompt_tokens == one.usage.total_tokens > 0
    records = [r for r in usage_records(gateway) if r["endpoint"] == "embeddings"]
    assert len(records) == 3 and all(r["model"] == "all-minilm-l6-v2" and r["credits_charged"] > 0 for r in records)
    assert balance(gateway)["available_ucr"] < before


def test_bad_embedding_requests_are_clear_400s_and_404s(gateway: Gateway) -> None:
    headers = {AUTH: f"Bearer {gateway.key}"}
    for body, status, param in (({"model": "fake-small", "input": "x"}, 404, "model"),
                                ({"model": "all-minilm-l6-v2", "input": [[1, 2, 3]]}, 400, "input"),
                                ({"model": "all-minilm-l6-v2", "input": []}, 400, "input"),
                                ({"model": "all-minilm-l6-v2", "input": "x", "dimensions": 10}, 400, "dimensions"),
                                ({"model": "all-minilm-l6-v2"}, 400, None)):
        response = httpx.post(gateway.api + "/embeddings", headers=headers, json=body)
        assert response.status_code == status, (body, response.text)
        if param:
            assert response.json()["error"]["param"] == param


def test_models_lists_the_embedding_model_last_and_auto_never_picks_it(gateway: Gateway) -> None:
    models = httpx.get(gateway.api + "/models", headers={AUTH: f"Bearer {gateway.key}"}).json()["data"]
    assert models[-1]["id"] == "all-minilm-l6-v2" and models[-1]["type"] == "embedding"
    assert {m["type"] for m in models[:-1]} == {"chat"}
    chat = httpx.post(gateway.api + "/chat/completions", headers={AUTH: f"Bearer {gateway.key}"},
                      json={"model": "auto", "messages": [{"role": "user", "content": "embed this"}]})
    assert chat.status_code == 200 and chat.json()["model"] != "all-minilm-l6-v2"


def test_the_memories_api(gateway: Gateway) -> None:
    h = {AUTH: f"Bearer {gateway.key}"}
    created = httpx.post(gateway.api + "/memories", headers=h, json={"text": "I am allergic to peanuts."})
    assert created.status_code == 201 and created.json()["object"] == "memory"
    mid = created.json()["id"]
    imported = httpx.post(gateway.api + "/memories/import", headers=h, json={"messages": [
        {"role": "user", "name": "Ada", "content": "We booked the cabin for the 14th.", "source_id": "t1",
         "created_at": "2025-06-01T10:00:00"},
        {"role": "assistant", "content": "Great, the lake cabin?", "source_id": "t2", "created_at": None}]})
    assert imported.status_code == 201 and imported.json()["imported"] == 2
    again = httpx.post(gateway.api + "/memories/import", headers=h, json={"messages": [
        {"role": "user", "content": "We booked the cabin for the 14th.", "source_id": "t1"},
        {"role": "user", "content": "And the boat for the 15th.", "source_id": "t3"}]})
    assert (again.json()["imported"], again.json()["skipped"]) == (1, 1)  # t1 was imported before
    found = httpx.post(gateway.api + "/memories/search", headers=h, json={"query": "food allergy", "limit": 1}).json()
    assert found["data"][0]["id"] == mid
    fixed = httpx.patch(f"{gateway.api}/memories/{mid}", headers=h, json={"text": "I am allergic to peanuts and cashews."})
    assert fixed.status_code == 200
    page = httpx.get(gateway.api + "/memories?limit=2", headers=h).json()
    assert page["has_more"] is True and len(page["data"]) == 2
    old = httpx.get(f"{gateway.api}/memories/{mid}", headers=h).json()
    assert old["status"] == "superseded" and old["superseded_by"] == fixed.json()["id"]
    assert httpx.get(gateway.api + "/memories/mem_00", headers=h).status_code == 404
    assert httpx.delete(f"{gateway.api}/memories/{fixed.json()['id']}", headers=h).json()["versions_deleted"] == 2
    assert httpx.delete(gateway.api + "/memories", headers=h).json()["deleted"] == 3
    assert httpx.get(gateway.api + "/memories", headers=h).json()["data"] == []
