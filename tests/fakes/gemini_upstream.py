"""A fake Gemini API (generativelanguage v1beta) on a real port, for provider and gateway tests.

The same shape as tests.fakes.openai_upstream.FakeOpenAI, and driven by the same `Behaviour`:

    with FakeGemini() as fake:
        fake.behaviour = Behaviour(text="Hi there", chunks=2, cached_tokens=3)
        ... POST {fake.url}/models/gemini-x:streamGenerateContent?alt=sse ...
        assert fake.last.json["contents"][0]["role"] == "user"

`fake.url` is the API base our adapter takes (ends in /v1beta); Google's own SDK takes the
server root, `fake.root`, and adds the version itself.

Wire format, as Google sends it:
  * `:streamGenerateContent?alt=sse`: `text/event-stream`, events `data: <json>\\r\\n\\r\\n`, each a
    whole GenerateContentResponse `{"candidates": [{"content": {"parts": [...], "role": "model"},
    "index": 0}], "usageMetadata": {...}, "modelVersion": ..., "responseId": ...}` in Google's
    JSON style (`": "` after keys, `<`/`>`/`&` escaped). usageMetadata (running totals) is on
    every chunk; the last content chunk carries `finishReason`. No `[DONE]`: the body ends.
  * `:streamGenerateContent` without alt=sse: the same chunks as one JSON array.
  * `:generateContent`: one whole GenerateContentResponse.
  * errors: `{"error": {"code", "message", "status", "details"}}`, pretty-printed; a 429 carries
    QuotaFailure, Help and (when `retry_after` is set) RetryInfo `{"retryDelay": "<n>s"}`
    details. Gemini sends no Retry-After header: add one with `extra_headers` if a test wants it.

How Behaviour's fields read here:
  text/chunks       -> text parts, one per chunk
  tool_calls        -> one chunk each with a whole `functionCall {name, args}` (args = the JSON
                       arguments parsed); the first call carries a `thoughtSignature`, as Gemini
                       2.5+ does. FakeToolCall.id is not sent (the Gemini API gives calls no id).
  finish_reason     -> Gemini's finishReason; OpenAI names are translated (stop/tool_calls ->
                       STOP, length -> MAX_TOKENS, content_filter -> SAFETY), others sent as-is
  prompt_tokens     -> promptTokenCount (cached tokens included, as Gemini counts)
  cached_tokens     -> cachedContentTokenCount
  reasoning_tokens  -> thoughtsTokenCount
  completion_tokens -> OpenAI-style total output: candidatesTokenCount = completion - reasoning,
                       so an adapter that normalises correctly reports completion_tokens back
  send_usage=False  -> no usageMetadata; send_finish=False or send_done=False -> no finishReason
  ignore_stream     -> answer `alt=sse` with the JSON array (application/json)
  error_code        -> the error's `status` when it is an upper-case Google status name
GeminiBehaviour adds `block_reason` (a blocked prompt); `configure()` builds one, and so does `FakeGemini()`.
A request whose generationConfig.thinkingConfig.includeThoughts is true and reasoning_tokens > 0
first gets a thought-summary part (`"thought": true`).
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.fakes.openai_upstream import Behaviour, FakeOpenAI, ReceivedRequest, _split

# google.rpc.Code names by HTTP status, as Google's front end pairs them.
GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

_FINISH = {"stop": "STOP", "tool_calls": "STOP", "length": "MAX_TOKENS", "content_filter": "SAFETY"}
# Opaque to clients; Gemini's are base64 of ~100-2000 bytes.
THOUGHT_SIGNATURE = base64.b64encode(b"\x0a\x24fake thought signature: the model's reasoning state").decode()


@dataclass
class GeminiBehaviour(Behaviour):
    """Behaviour plus what only Gemini does."""

    # Block the prompt: answer 200 with one chunk holding no candidates and
    # `promptFeedback {blockReason}` ("SAFETY", "PROHIBITED_CONTENT", "OTHER", ...).
    block_reason: str | None = None


def google_json(obj: Any, *, indent: int | None = None) -> bytes:
    """JSON as Google's front end writes it: `": "` after keys, no space after commas, and
    the HTML-sensitive characters escaped."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ": ") if indent is None else None, indent=indent)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


class FakeGemini(FakeOpenAI):
    """The fake server. Start with `with FakeGemini() as fake:` or `.start()` / `.stop()`."""

    behaviour_class = GeminiBehaviour

    @property
    def url(self) -> str:
        """The API base, as our adapter is configured (ends in /v1beta)."""
        return f"http://{self.host}:{self.port}/v1beta"

    @property
    def root(self) -> str:
        """The server root, as google-genai's HttpOptions(base_url=...) takes it."""
        return f"http://{self.host}:{self.port}/"

    def chat_requests(self) -> list[ReceivedRequest]:
        return [r for r in self.requests if r.path.endswith((":streamGenerateContent", ":generateContent"))]

    # -- server -------------------------------------------------------------------------

    def _routes(self, app: web.Application) -> None:
        # Google serves the same methods under v1 (the google-genai SDK's default) and v1beta.
        app.router.add_post("/{version:v1|v1beta|v1alpha}/models/{target}", self._generate)
        app.router.add_get("/{version:v1|v1beta|v1alpha}/models", self._models)
        app.router.add_route("*", "/{tail:.*}", self._unknown)

    async def _unknown(self, request: web.Request) -> web.Response:
        self._record(request, await request.read())
        return _error(404, f"The requested URL {request.path} was not found on this server.", "NOT_FOUND", {})

    async def _models(self, request: web.Request) -> web.Response:
        self._record(request, b"")
        models = [
            {
                "name": f"models/{m}",
                "version": "001",
                "displayName": m,
                "inputTokenLimit": 1048576,
                "outputTokenLimit": 65536,
                "supportedGenerationMethods": ["generateContent", "countTokens"],
            }
            for m in self.models
        ]
        return web.Response(body=google_json({"models": models}, indent=2), content_type="application/json")

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        payload, b = await self._receive(request)
        headers = dict(b.extra_headers)
        model, _, method = request.match_info["target"].rpartition(":")
        if method not in ("streamGenerateContent", "generateContent") or not model:
            return _error(404, f"Method not found: {method}", "NOT_FOUND", headers)
        if not isinstance(payload, dict):
            return _error(400, "Invalid JSON payload received.", "INVALID_ARGUMENT", headers)
        if b.status >= 300:
            status_name = b.error_code if b.error_code and b.error_code.isupper() else GOOGLE_STATUS.get(b.status, "UNKNOWN")
            return _error(b.status, b.error_message, status_name, headers, retry_after=b.retry_after)

        block = getattr(b, "block_reason", None)
        if block:
            chunks = [_blocked(b, model, len(self.requests), block)]
        else:
            chunks = _chunks(b, model, len(self.requests), _wants_thoughts(payload))
        if method == "generateContent":
            return web.Response(body=google_json(_whole(chunks), indent=2), content_type="application/json", headers=headers)
        if request.query.get("alt") != "sse" or b.ignore_stream:
            return web.Response(body=google_json(chunks, indent=2), content_type="application/json", headers=headers)

        resp = web.StreamResponse(status=200, headers=headers)
        resp.content_type = "text/event-stream"
        resp.headers["Content-Disposition"] = "attachment"
        resp.headers["X-Content-Type-Options"] = "nosniff"
        await resp.prepare(request)
        for sent, chunk in enumerate(chunks):
            if await self._maybe_fail(request, resp, b, sent):
                return resp
            if b.chunk_delay_s:
                await asyncio.sleep(b.chunk_delay_s)
            await resp.write(b"data: " + google_json(chunk) + b"\r\n\r\n")
        if await self._maybe_fail(request, resp, b, len(chunks)):
            return resp
        await resp.write_eof()
        return resp

    def _garbage_frame(self) -> bytes:
        return b'data: {"this is": not json\r\n\r\n'

    def _error_frame(self, b: Behaviour) -> bytes:
        err = {"error": {"code": 500, "message": b.error_message, "status": "INTERNAL"}}
        return b"data: " + google_json(err) + b"\r\n\r\n"


def _wants_thoughts(payload: dict[str, Any]) -> bool:
    # Google's JSON parser takes both lowerCamel and snake_case field names (the SDK mixes them).
    config = payload.get("generationConfig") or payload.get("generation_config") or {}
    thinking = config.get("thinkingConfig") or config.get("thinking_config") or {}
    return bool(thinking.get("includeThoughts") or thinking.get("include_thoughts"))


def _usage(b: Behaviour, candidates: int, final: bool) -> dict[str, Any]:
    usage: dict[str, Any] = {"promptTokenCount": b.prompt_tokens, "candidatesTokenCount": candidates}
    usage["totalTokenCount"] = b.prompt_tokens + candidates + b.reasoning_tokens
    if b.cached_tokens:
        usage["cachedContentTokenCount"] = b.cached_tokens
    usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": b.prompt_tokens}]
    if b.cached_tokens:
        usage["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": b.cached_tokens}]
    if final and candidates:
        usage["candidatesTokensDetails"] = [{"modality": "TEXT", "tokenCount": candidates}]
    if b.reasoning_tokens:
        usage["thoughtsTokenCount"] = b.reasoning_tokens
    return usage


def _chunks(b: Behaviour, model: str, n: int, thoughts: bool) -> list[dict[str, Any]]:
    """Every GenerateContentResponse chunk of one answer, in order."""
    pieces = _split(b.text, b.chunks)
    part_lists: list[list[dict[str, Any]]] = [[{"text": piece}] for piece in pieces]
    for i, call in enumerate(b.tool_calls):
        part: dict[str, Any] = {"functionCall": {"name": call.name, "args": json.loads(call.arguments or "{}")}}
        if i == 0:
            part["thoughtSignature"] = THOUGHT_SIGNATURE
        part_lists.append([part])
    if not part_lists:
        part_lists.append([{"text": ""}])
    if thoughts and b.reasoning_tokens:
        part_lists[0].insert(0, {"text": "**Thinking it over**\n\nThe fake considers the question.", "thought": True})

    candidates_total = max(b.completion_count(len(pieces)) - b.reasoning_tokens, 0)
    finish = _FINISH.get(b.finish_reason or "stop", b.finish_reason or "STOP")
    response_id = f"fakeResp{n:06d}"
    out: list[dict[str, Any]] = []
    count = len(part_lists)
    for i, parts in enumerate(part_lists, 1):
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
        last = i == count
        if last and b.send_finish and b.send_done:
            candidate["finishReason"] = finish
        candidate["index"] = 0
        chunk: dict[str, Any] = {"candidates": [candidate]}
        if b.send_usage:
            chunk["usageMetadata"] = _usage(b, candidates_total if last else candidates_total * i // count, last)
        chunk["modelVersion"] = model
        chunk["responseId"] = response_id
        out.append(chunk)
    return out


def _blocked(b: Behaviour, model: str, n: int, reason: str) -> dict[str, Any]:
    ratings = [
        {"category": c, "probability": "HIGH" if c == "HARM_CATEGORY_DANGEROUS_CONTENT" else "NEGLIGIBLE"}
        for c in ("HARM_CATEGORY_SEXUALLY_EXPLICIT", "HARM_CATEGORY_HATE_SPEECH", "HARM_CATEGORY_HARASSMENT", "HARM_CATEGORY_DANGEROUS_CONTENT")
    ]
    return {
        "promptFeedback": {"blockReason": reason, "safetyRatings": ratings},
        "usageMetadata": {
            "promptTokenCount": b.prompt_tokens,
            "totalTokenCount": b.prompt_tokens,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": b.prompt_tokens}],
        },
        "modelVersion": model,
        "responseId": f"fakeResp{n:06d}",
    }


def _whole(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """The non-streaming answer: the chunks' parts in one candidate (adjacent text joined)."""
    if "candidates" not in chunks[-1]:
        return chunks[-1]  # a blocked prompt
    parts: list[dict[str, Any]] = []
    for chunk in chunks:
        for part in chunk["candidates"][0]["content"]["parts"]:
            if parts and set(part) == {"text"} and set(parts[-1]) == {"text"}:
                parts[-1] = {"text": parts[-1]["text"] + part["text"]}
            else:
                parts.append(dict(part))
    last = chunks[-1]
    candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
    if "finishReason" in last["candidates"][0]:
        candidate["finishReason"] = last["candidates"][0]["finishReason"]
    candidate["index"] = 0
    whole: dict[str, Any] = {"candidates": [candidate]}
    if "usageMetadata" in last:
        whole["usageMetadata"] = last["usageMetadata"]
    whole["modelVersion"] = last["modelVersion"]
    whole["responseId"] = last["responseId"]
    return whole


def _error(status: int, message: str, status_name: str, headers: dict[str, str], *, retry_after: str | None = None) -> web.Response:
    err: dict[str, Any] = {"code": status, "message": message, "status": status_name}
    if status == 429:
        details: list[dict[str, Any]] = [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                        "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                        "quotaDimensions": {"location": "global", "model": "fake-model"},
                        "quotaValue": "10",
                    }
                ],
            },
            {
                "@type": "type.googleapis.com/google.rpc.Help",
                "links": [{"description": "Learn more about Gemini API quotas", "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}],
            },
        ]
        if retry_after is not None:
            details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{retry_after}s"})
        err["details"] = details
    elif status == 400 and "API key" in message:
        err["details"] = [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            }
        ]
    return web.Response(
        status=status, body=google_json({"error": err}, indent=2), content_type="application/json", headers=headers
    )
