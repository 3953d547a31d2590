"""Issue 13, as a client and an operator meet it: a revoked key refused by every server process
within 2 s (and its last use recorded), errors that say what to do (a vendor without a key, a
prompt over every window with `auto`, an upstream's address never shown, the route header after
a fallback), purchases without Stripe, and a daily cap that shortens rather than refuses."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import httpx
import openai
import pytest
from typer.testing import CliRunner

from switchboard.accounts.keys import list_keys
from switchboard.cli.main import app as cli_app
from switchboard.core.config import Settings
from switchboard.store.db import read
from tests.api.conftest import Gateway, wait_for
from tests.api.test_limits_and_fallback import _models, _serve
from tests.fakes.openai_upstream import Behaviour, FakeOpenAI
from tests.support.config import fake_model_toml
from tests.support.servers import ServerProcess, free_port

ASK = [{"role": "user", "content": "Say something."}]


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_a_revoked_key_is_refused_by_every_server_process_within_2_s(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeOpenAI() as fake:
        config = tmp_path / "sb.toml"
        config.write_text(fake_model_toml(fake.url))
        env = {"SWITCHBOARD_CONFIG": str(config), "SWITCHBOARD_DATA_DIR": str(tmp_path / "data"),
               "SWITCHBOARD_LOCAL_MODEL__ENABLED": "false", "SWITCHBOARD_RATE_LIMIT__REQUESTS_PER_MINUTE": "0",
               "SWITCHBOARD_ACCESS_LOG": "false"}
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        cli = CliRunner()
        assert cli.invoke(cli_app, ["db", "upgrade"]).exit_code == 0
        assert cli.invoke(cli_app, ["users", "create", "ada@example.com"]).exit_code == 0
        key = cli.invoke(cli_app, ["keys", "create", "ada@example.com"]).stdout.strip()
        with ServerProcess(env, workers=2) as server, httpx.Client(base_url=server.url) as client:
            # Enough requests, on fresh connections, that both workers have the key in their cache.
            for _ in range(12):
                assert client.get("/v1/balance", headers={**_auth(key), "connection": "close"}).status_code == 200
            revoked = cli.invoke(cli_app, ["keys", "revoke", key[:10]])
            assert revoked.exit_code == 0 and "revoked key 1" in revoked.stdout
            at = time.monotonic()
            wait_for(lambda: client.get("/v1/balance", headers={**_auth(key), "connection": "close"}).status_code == 401,
                     timeout=5)
            # From 2 s after the revocation on, no process accepts it.
            time.sleep(max(0.0, 2.0 - (time.monotonic() - at)))
            codes = {client.get("/v1/balance", headers={**_auth(key), "connection": "close"}).status_code for _ in range(12)}
            assert codes == {401}
            r = client.post("/v1/chat/completions", headers=_auth(key), json={"model": "fake-small", "messages": ASK})
            assert r.status_code == 401
        # Its last use was recorded (written off the request path within a second or two).
        keys = json.loads(cli.invoke(cli_app, ["keys", "list", "ada@example.com", "--json"]).stdout)
        assert keys[0]["status"] == "revoked" and keys[0]["last_used_ms"] is not None


def test_last_use_is_recorded_at_most_once_a_minute(gateway: Gateway) -> None:
    for _ in range(3):
        assert httpx.get(gateway.api + "/balance", headers=_auth(gateway.key)).status_code == 200
    used = wait_for(lambda: read(gateway.engine, lambda c: list_keys(c, gateway.user_id))[0].last_used_ms)
    assert abs(used - time.time() * 1000) < 10_000
    time.sleep(1.5)  # a refresh or two later
    for _ in range(3):
        httpx.get(gateway.api + "/balance", headers=_auth(gateway.key))
    time.sleep(1.5)
    assert read(gateway.engine, lambda c: list_keys(c, gateway.user_id))[0].last_used_ms == used


def _two_models(url: str, **extra: object) -> Settings:
    """"cheap" and "sturdy" (twice the price), both with a 4,096-token window."""
    return Settings(local_model={"enabled": False}, rate_limit={"requests_per_minute": 0}, **_models(url), **extra)  # type: ignore[arg-type]


def test_a_shipped_model_without_its_vendor_key_is_a_404_that_names_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with FakeOpenAI() as fake:
        server, key = _serve(tmp_path, _two_models(fake.url, data_dir=tmp_path))
        with server:
            r = httpx.post(server.url + "/v1/chat/completions", headers=_auth(key),
                           json={"model": "claude-haiku-5-5", "messages": ASK})
            assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
            message = r.json()["error"]["message"]
            assert "no Anthropic API key" in message and "ANTHROPIC_API_KEY" in message
            r = httpx.post(server.url + "/v1/chat/completions", headers=_auth(key), json={"model": "gpt-9000", "messages": ASK})
            assert r.status_code == 404 and "does not exist" in r.json()["error"]["message"]


def test_auto_over_every_context_window_is_413(tmp_path: Path) -> None:
    with FakeOpenAI() as fake:
        server, key = _serve(tmp_path, _two_models(fake.url, data_dir=tmp_path))
        long = [{"role": "user", "content": "word " * 40_000}]  # about 40K tokens: over every 4K window
        with server:
            for model in ("auto", "sturdy"):
                r = httpx.post(server.url + "/v1/chat/completions", headers=_auth(key), json={"model": model, "messages": long})
                assert r.status_code == 413, r.text
                assert r.json()["error"]["code"] == "context_length_exceeded"
            assert fake.chat_requests() == []
            balance = httpx.get(server.url + "/v1/balance", headers=_auth(key)).json()
            assert balance["held_credits"] == 0 and balance["available_credits"] == 6000


def test_after_a_fallback_the_route_header_names_the_model_that_ran(tmp_path: Path) -> None:
    with FakeOpenAI() as fake:
        settings = _two_models(fake.url, data_dir=tmp_path, default_model="cheap",
                               resilience={"attempts_per_model": 1, "breaker_failures": 0})
        server, key = _serve(tmp_path, settings)
        with server:
            client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
            fake.enqueue(Behaviour(status=503), Behaviour(text="from the fallback"))
            raw = client.chat.completions.with_raw_response.create(model="auto", messages=ASK, max_tokens=20)
            assert raw.headers["x-switchboard-model"] == "sturdy"
            assert raw.headers["x-switchboard-route"].startswith("model=sturdy;")
            assert "fallback_from=cheap" in raw.headers["x-switchboard-route"]
            assert raw.parse().model == "sturdy"
            [record] = httpx.get(server.url + "/v1/usage", headers=_auth(key)).json()["data"]
            assert (record["model"], record["route"]["model"], record["route"]["fallback_from"]) == ("sturdy", "sturdy", "cheap")
            fake.enqueue(Behaviour(status=503), Behaviour(text="streamed by the fallback"))
            with client.chat.completions.with_streaming_response.create(
                    model="auto", messages=ASK, max_tokens=20, stream=True) as stream:
                assert stream.headers["x-switchboard-model"] == "sturdy"
                assert stream.headers["x-switchboard-route"].startswith("model=sturdy;")
                chunks = list(stream.parse())
            assert {c.model for c in chunks} == {"sturdy"}
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "streamed by the fallback"
            # Named and served first time: the header is as before.
            raw = client.chat.completions.with_raw_response.create(model="cheap", messages=ASK, max_tokens=20)
            assert raw.headers["x-switchboard-route"] == "model=cheap; reason=requested"


def test_an_upstream_failure_never_shows_its_address(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()  # nothing listens there
    settings = Settings(
        data_dir=tmp_path, local_model={"enabled": False}, rate_limit={"requests_per_minute": 0},
        resilience={"attempts_per_model": 1, "breaker_failures": 0},
        providers=[{"name": "inhouse", "kind": "openai-compatible", "base_url": f"http://127.0.0.1:{port}/v1"}],
        models=[{"name": "private", "provider": "inhouse", "context_window": 4096,
                 "input_usd_per_mtok": 1, "output_usd_per_mtok": 1}],
    )
    server, key = _serve(tmp_path, settings)
    with server, caplog.at_level(logging.WARNING, logger="switchboard"):
        for stream in (False, True):
            r = httpx.post(server.url + "/v1/chat/completions", headers=_auth(key),
                           json={"model": "private", "messages": ASK, "stream": stream})
            body = r.text
            assert ("upstream_error" in body) and "cannot reach upstream" in body
            assert "127.0.0.1" not in body and str(port) not in body
        records = httpx.get(server.url + "/v1/usage", headers=_auth(key)).json()["data"]
        assert records and all("127.0.0.1" not in (r["error"] or "") for r in records)
    assert f"127.0.0.1:{port}" in caplog.text  # the operator's log keeps it


def test_an_upstream_error_message_is_scrubbed_of_addresses(tmp_path: Path) -> None:
    with FakeOpenAI() as fake:
        server, key = _serve(tmp_path, _two_models(fake.url, data_dir=tmp_path, resilience={"attempts_per_model": 1}))
        fake.configure(status=400, error_message="bad request: see http://10.0.4.7:8000/v1/models or gpu-7.internal:9000")
        with server:
            r = httpx.post(server.url + "/v1/chat/completions", headers=_auth(key), json={"model": "cheap", "messages": ASK})
            assert r.status_code == 502
            message = r.json()["error"]["message"]
            assert "bad request: see <address>" in message and "10.0.4.7" not in message and "internal" not in message


def test_checkout_without_stripe_is_a_plain_503(gateway: Gateway, monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("STRIPE_API_KEY", raising=False)
    with caplog.at_level(logging.WARNING, logger="switchboard"):
        for _ in range(2):
            r = httpx.post(gateway.api + "/billing/checkout", headers=_auth(gateway.key), json={"plan": "pro"})
            assert r.status_code == 503
            error = r.json()["error"]
            assert error["message"] == "Purchases are not available on this server." and "STRIPE" not in r.text
    assert caplog.text.count("STRIPE_API_KEY") == 1  # the operator is told, once


def test_a_daily_cap_shortens_a_request_without_max_tokens(gateway: Gateway) -> None:
    """As a low balance does (README): the cap leaves room for a short answer, so the request
    runs, shortened; with a max_tokens the cap cannot cover, it is refused."""
    cli = CliRunner()
    gateway.fake.configure(text="a short answer", chunks=2, prompt_tokens=10, completion_tokens=5, honour_max_tokens=True)
    env = {"SWITCHBOARD_DATABASE_URL": gateway.settings.resolved_database_url}
    # A 40-credit daily cap: the default output cap (100 tokens, 40 credits) and the prompt do not fit.
    result = cli.invoke(cli_app, ["caps", "set", "alice@example.com", "--daily", "40"], env=env)
    assert result.exit_code == 0, result.output
    client = openai.OpenAI(base_url=gateway.api, api_key=gateway.key, max_retries=0)
    answer = client.chat.completions.create(model="fake-small", messages=ASK)
    assert answer.choices[0].message.content == "a short answer"
    sent = gateway.fake.last.json["max_tokens"] if "max_tokens" in gateway.fake.last.json else gateway.fake.last.json["max_completion_tokens"]
    assert sent < 100
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="fake-small", messages=ASK, max_tokens=100)
    assert err.value.status_code == 402 and err.value.code == "spending_cap_reached"
