"""Chat Completions responses in OpenAI's wire format (JSON objects and SSE chunks)."""

from __future__ import annotations

from typing import Any

import orjson

from switchboard.api.access_log import note_metering
from switchboard.core.types import Usage
from switchboard.core.money import format_credits, ucr_to_credits_float, usd_text
from switchboard.inference.metered import Metering


def usage_json(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_prompt_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def metering_json(m: Metering) -> dict[str, Any]:
    """Switchboard's own figures for one request (beside OpenAI's `usage`). Every response that
    reports a metering, in either API's format, builds it here: the access log takes its figures."""
    note_metering(m)
    return {
        "request_id": m.request_id,
        "model": m.model,
        "provider": m.provider,
        "outcome": m.outcome,
        "cost_usd": usd_text(m.cost_usd),
        "credits_charged": ucr_to_credits_float(m.charged_ucr),
        "credits_remaining": ucr_to_credits_float(m.available_ucr),
        "charged_ucr": m.charged_ucr,
        "ttft_ms": None if m.ttft_ms is None else round(m.ttft_ms, 3),
        "decode_tokens_per_s": None if m.decode_tokens_per_s is None else round(m.decode_tokens_per_s, 2),
        "latency_ms": round(m.latency_ms, 3),
        "cached_prompt_tokens": m.usage.cached_prompt_tokens,
        "cache_write_tokens": m.usage.cache_write_tokens,
        "reasoning_tokens": m.usage.reasoning_tokens,
    }


def metering_headers(m: Metering) -> dict[str, str]:
    return {
        "x-switchboard-model": m.model,
        "x-switchboard-credits-charged": format_credits(m.charged_ucr),
        "x-switchboard-credits-remaining": format_credits(m.available_ucr),
        "x-switchboard-request-id": m.request_id,
    }


def completion_json(
    completion_id: str, created: int, text: str, tool_calls: list[dict[str, Any]], finish_reason: str, m: Metering
) -> bytes:
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not tool_calls else None, "refusal": None}
    if tool_calls:
        message["tool_calls"] = [
            {"id": c["id"] or f"call_{i}", "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
            for i, c in enumerate(tool_calls)
        ]
    return orjson.dumps({
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": m.model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}],
        "usage": usage_json(m.usage),
        "switchboard": metering_json(m),
    })


class ChunkWriter:
    """Builds `data: {...}\\n\\n` chunks sharing one id, created time and model."""

    __slots__ = ("_prefix", "_suffix", "completion_id", "created", "model")

    def __init__(self, completion_id: str, created: int, model: str) -> None:
        self.completion_id = completion_id
        self.created = created
        self.model = model
        # Every delta chunk is the same bytes around the delta: build the frame once.
        self._prefix = (
            b'data: {"id":' + orjson.dumps(completion_id) + b',"object":"chat.completion.chunk","created":'
            + str(created).encode() + b',"model":' + orjson.dumps(model)
            + b',"system_fingerprint":null,"choices":[{"index":0,"delta":'
        )
        self._suffix = b',"logprobs":null,"finish_reason":null}]}\n\n'

    def delta(self, delta: dict[str, Any]) -> bytes:
        return self._prefix + orjson.dumps(delta) + self._suffix

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        body = {
            "id": self.completion_id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model, "system_fingerprint": None, "choices": choices, **extra,
        }
        return b"data: " + orjson.dumps(body) + b"\n\n"

    def finish(self, reason: str, **extra: Any) -> bytes:
        return self.chunk([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": reason}], **extra)


DONE = b"data: [DONE]\n\n"


def sse_error(error: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(error) + b"\n\n"
