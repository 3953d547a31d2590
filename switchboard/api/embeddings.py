"""POST /v1/embeddings in OpenAI's format, served by the local embedding model (the one long-term
memory uses), metered and charged like any model call: the input's tokens are counted first,
their price (`memory.embedding_usd_per_mtok`) is held, the vectors are computed, and the hold is
settled with a usage record (endpoint `embeddings`). So clients built on OpenAI's SDK or
LangChain use it unchanged.

Each input is read up to the model's 256 tokens (as sentence-transformers does) and charged for
what is read. Token arrays as input and `dimensions` are refused with a 400 naming the field.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from decimal import Decimal
from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from switchboard.api.auth import authenticate
from switchboard.api.conversations import _parse
from switchboard.api.state import AppState
from switchboard.billing.holds import HoldOp, SettleOp
from switchboard.core.errors import InsufficientCredits, InvalidRequest, NotFound, SpendingCapReached
from switchboard.core.ids import new_id
from switchboard.core.money import UCR_PER_CREDIT, format_credits, usd_text, usd_to_ucr
from switchboard.memory.embedder import DIMENSIONS

MAX_INPUTS = 2048
MAX_CHARS = 32_000


class EmbeddingsBody(BaseModel):
    """OpenAI's embeddings request."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=200, description="all-minilm-l6-v2 (GET /v1/models, type embedding)")
    input: str | list[str] | list[int] | list[list[int]] = Field(description="A string or a list of strings")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1, le=100_000)
    user: str | None = Field(default=None, max_length=256)


def model_entry(name: str, usd_per_mtok: Decimal, usd_per_credit: Decimal) -> dict[str, object]:
    """The embedding model as GET /v1/models lists it."""
    per_k = float(Decimal(usd_per_mtok) / 1000 / usd_per_credit)
    return {"id": name, "object": "model", "created": 0, "owned_by": "switchboard", "type": "embedding",
            "dimensions": DIMENSIONS, "max_input_tokens": 256, "context_window": 256, "max_output_tokens": None,
            "abilities": [], "pricing": {"input_usd_per_mtok": str(usd_per_mtok), "output_usd_per_mtok": "0",
                                         "cached_input_usd_per_mtok": None, "input_credits_per_1k_tokens": per_k,
                                         "output_credits_per_1k_tokens": 0.0}}


def _texts(body: EmbeddingsBody) -> list[str]:
    value = body.input
    if isinstance(value, str):
        value = [value]
    if not value:
        raise InvalidRequest("'input' must be a non-empty string or list of strings", param="input")
    if not all(isinstance(v, str) for v in value):
        raise InvalidRequest("token arrays are not accepted as input here: send the text", param="input")
    if len(value) > MAX_INPUTS:
        raise InvalidRequest(f"'input' may hold at most {MAX_INPUTS} strings", param="input")
    for n, text in enumerate(value):
        if not text:
            raise InvalidRequest(f"input[{n}] is empty", param="input")
        if len(text) > MAX_CHARS:
            raise InvalidRequest(f"input[{n}] is longer than {MAX_CHARS} characters", param="input")
    return list(value)  # type: ignore[arg-type]


async def embeddings(request: Request) -> Response:
    state: AppState = request.app.state.sb
    principal = await authenticate(request, state.keys)
    state.limits.check(principal.user_id)
    body: EmbeddingsBody = await _parse(request, EmbeddingsBody)  # type: ignore[arg-type]
    settings = state.runtime.settings
    config = settings.memory
    if body.model != config.embedding_model:
        raise NotFound(f"The model `{body.model}` is not an embedding model here; use `{config.embedding_model}` "
                       f"(GET /v1/models lists each model's type).", param="model")
    if body.dimensions is not None and body.dimensions != DIMENSIONS:
        raise InvalidRequest(f"`{body.model}` makes {DIMENSIONS}-dimensional vectors; 'dimensions' cannot change that",
                             param="dimensions")
    texts = _texts(body)
    embedder = state.assistant.services.memory.embedder
    started = time.perf_counter()
    tokens = sum(await asyncio.to_thread(embedder.count_tokens, texts))
    cost = Decimal(tokens) * config.embedding_usd_per_mtok / 1_000_000
    amount = usd_to_ucr(cost, settings.usd_per_credit)
    runtime, uid = state.runtime, principal.user_id
    request_id = "emb-" + new_id()
    hold_id = None
    if amount > 0:
        held = await runtime.runner.run(HoldOp(runtime.ledger, uid, request_id, amount, body.model,
                                               process_id=runtime.inference.process_id), order_key=uid)
        if not held.ok:
            if held.cap is not None:
                raise SpendingCapReached(held.cap.cap, held.cap.cap_ucr, held.cap.spent_ucr, held.needed_ucr)
            raise InsufficientCredits(held.available_ucr, held.needed_ucr)
        hold_id = held.hold_id
    try:
        vectors = (await asyncio.to_thread(embedder.embed, texts)).vectors
    except BaseException:
        if hold_id is not None:  # nothing delivered: nothing charged
            runtime.runner.submit_nowait(SettleOp(runtime.ledger, uid, hold_id, 0, None), order_key=uid)
        raise
    charged, remaining = 0, None
    if hold_id is not None:
        row = {"request_id": request_id, "api_key_id": principal.api_key_id, "endpoint": "embeddings",
               "model": body.model, "provider": "local", "stream": False, "outcome": "ok", "error": None,
               "prompt_tokens": tokens, "cached_prompt_tokens": 0, "cache_write_tokens": 0, "completion_tokens": 0,
               "reasoning_tokens": 0, "ttft_ms": None, "decode_tokens_per_s": None,
               "latency_ms": (time.perf_counter() - started) * 1000, "cost_usd": usd_text(cost),
               "route": json.dumps({"model": body.model, "inputs": len(texts)}, separators=(",", ":"))}
        settled = await asyncio.shield(runtime.runner.run(SettleOp(runtime.ledger, uid, hold_id, amount, row),
                                                          order_key=uid))
        charged, remaining = settled.charged_ucr, settled.available_ucr
    data = []
    for n, vector in enumerate(vectors):
        embedding: object = (base64.b64encode(vector.astype("<f4").tobytes()).decode() if body.encoding_format == "base64"
                             else [float(x) for x in vector])
        data.append({"object": "embedding", "index": n, "embedding": embedding})
    headers = {"x-switchboard-request-id": request_id, "x-switchboard-credits-charged": format_credits(charged)}
    if remaining is not None:
        headers["x-switchboard-credits-remaining"] = format_credits(remaining)
    payload = {"object": "list", "data": data, "model": body.model,
               "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
               "credits_charged": charged / UCR_PER_CREDIT}
    return Response(orjson.dumps(payload), media_type="application/json", headers=headers)
