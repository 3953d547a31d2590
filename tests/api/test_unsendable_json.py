"""JSON that parses but could never be sent upstream (an integer past 64 bits) is a 400, not a 500."""

from __future__ import annotations

import httpx

from tests.api.conftest import Gateway

HUGE = 123456789012345678901234567890


def test_an_integer_past_64_bits_in_tools_is_a_400_naming_the_field(gateway: Gateway) -> None:
    body = {"model": "fake-small", "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"maximum": HUGE}}}]}
    response = httpx.post(gateway.api + "/chat/completions", json=body, headers={"Authorization": f"Bearer {gateway.key}"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "tools.0.function.parameters"
    anthropic = {"model": "fake-small", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}],
                 "tools": [{"name": "f", "input_schema": {"type": "object", "maximum": HUGE}}]}
    response = httpx.post(gateway.url + "/v1/messages", json=anthropic, headers={"x-api-key": gateway.key})
    assert response.status_code == 400
    assert response.json()["type"] == "error" and "64 bits" in response.json()["error"]["message"]
    assert gateway.fake.requests == []
