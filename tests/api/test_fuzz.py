"""Every endpoint and method of the published OpenAPI schema, fuzzed against a real gateway.

Schemathesis reads /openapi.json from the running server and generates requests from it, valid
ones and ones that break the schema, at least 50 per operation, on SQLite and on PostgreSQL.
The gateway runs in front of the fake OpenAI upstream (chat calls are real calls) and a fake
Stripe. Whatever arrives: never a 5xx, and every error in OpenAI's shape (Anthropic's for
/v1/messages), as the schema says. Stripe's webhook is fuzzed unsigned: 400; the chat channels'
webhooks (Telegram and WhatsApp on, against their fakes) unsigned: 401.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from switchboard.api.app import create_app
from switchboard.api.routes import ENDPOINTS
from switchboard.core.config import Settings
from switchboard.store.db import make_engine
from switchboard.store.migrate import upgrade
from tests.api.conftest import add_user, gateway_settings
from tests.fakes import stripe_api as fs
from tests.channels.conftest import channel_env, channels_config
from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.whatsapp_api import FakeWhatsApp
from tests.support.servers import ServerThread

# Cases per operation and generation mode. On PostgreSQL fewer: what differs there is how the
# database takes the same values (NUL characters, sizes), which fewer cases reach as well, and
# the two runs were the suite's slowest tests (about 200 s each).
CASES = {"sqlite": 50, "postgresql": 20}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@dataclass
class Target:
    url: str
    key: str
    cases: int


@pytest.fixture
def target(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Target]:
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_fake")
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", "whsec_fuzz")
    with FakeOpenAI() as upstream, fs.FakeStripe("sk_test_fake") as stripe, FakeTelegram() as tg, FakeWhatsApp() as wa:
        channel_env(monkeypatch, tg, wa)  # the chat channels' webhooks on, fuzzed unsigned: 401 (the handshake 403)
        settings_ = gateway_settings(tmp_path, database_url, upstream.url, stripe={"api_base": stripe.url},
                                     channels=channels_config(tg, wa))
        engine = make_engine(database_url)
        upgrade(engine)
        _, key = add_user(engine, settings_, "fuzz@example.com", "pro")
        with ServerThread(create_app(settings_)) as server:
            yield Target(server.url, key, CASES[engine.dialect.name])
        engine.dispose()


def test_openapi_lists_every_endpoint_with_parameters_and_bodies(target: Target) -> None:
    schema = httpx.get(target.url + "/openapi.json").json()
    paths = schema["paths"]
    assert {"/v1/chat/completions", "/v1/messages", "/v1/usage/export", "/v1/billing/statement", "/webhooks/stripe"} <= set(paths)
    listed = {(method.upper(), path) for path, ops in paths.items() for method in ops}
    served = {(method, route.path) for route in create_app(Settings()).routes
              for method in getattr(route, "methods", None) or ()
              if method != "HEAD" and not route.path.startswith(("/openapi", "/docs", "/redoc"))}
    assert listed == served == {(e.method, e.path) for e in ENDPOINTS}  # exactly what is served
    statement = paths["/v1/billing/statement"]["get"]
    assert statement["parameters"][0]["name"] == "month"
    chat = paths["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert chat["$ref"].endswith("/ChatCompletionBody")
    assert "messages" in schema["components"]["schemas"]["ChatCompletionBody"]["properties"]


def _error_shape(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every error is a JSON object in OpenAI's shape (Anthropic's on /v1/messages)."""
    if response.status_code < 400:
        return None
    body = response.json()
    if case.path == "/v1/messages":
        assert body["type"] == "error" and isinstance(body["error"]["message"], str), body
    else:
        assert set(body["error"]) >= {"message", "type", "param", "code"}, body
        assert isinstance(body["error"]["message"], str) and isinstance(body["error"]["type"], str), body
    return True


def _made_valid(case: Any) -> None:
    """Give a generated body what the schema cannot say it needs, so that many requests go all
    the way through: inference requests name the catalog's model, and each message has content
    (a tool message its tool_call_id); billing requests name a real pack or plan."""
    body = case.body
    if not isinstance(body, dict):
        return
    if case.path == "/v1/billing/checkout":
        body.clear()
        body["pack"] = "600"
    elif case.path == "/v1/billing/plan":
        body["plan"] = "pro"
    elif case.path in ("/v1/chat/completions", "/v1/messages"):
        body["model"] = "fake-small"
        body.pop("n", None)
        for message in body.get("messages") or []:
            if isinstance(message, dict) and case.path == "/v1/chat/completions":
                if message.get("content") is None:
                    message["content"] = "hi"
                if message.get("role") == "tool" and not isinstance(message.get("tool_call_id"), str):
                    message["tool_call_id"] = "call_1"


def test_fuzz_every_endpoint_no_5xx_and_openai_errors(target: Target) -> None:
    schema = schemathesis.openapi.from_url(target.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == len(ENDPOINTS)
    auth = {"Authorization": f"Bearer {target.key}"}
    statuses: dict[str, list[int]] = {}
    for operation in operations:
        seen = statuses.setdefault(operation.label, [])
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(max_examples=target.cases, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def fuzz(case: Any) -> None:
                if mode is GenerationMode.POSITIVE and len(seen) % 2:
                    _made_valid(case)
                response = case.call(base_url=target.url, headers=auth)
                seen.append(response.status_code)
                case.validate_response(response, checks=CHECKS, additional_checks=[_error_shape])

            try:
                fuzz()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE  # nothing to break in a request that takes nothing
    print({label: sorted(collections.Counter(s).items()) for label, s in statuses.items()})
    for label, seen in statuses.items():
        # /healthz takes nothing at all: its one possible request is sent once.
        assert len(seen) >= (1 if label == "GET /healthz" else target.cases), (label, len(seen))
    assert httpx.get(target.url + "/healthz").status_code == 200
