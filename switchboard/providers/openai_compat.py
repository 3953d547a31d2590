"""Adapter for any endpoint that speaks OpenAI's Chat Completions wire format.

Always streams (`stream: true` + `stream_options.include_usage`): the gateway serves
non-streaming clients by collecting the stream, so there is one code path and the
usage figures always arrive in the final chunk. This is the gateway's hot path, so the
SSE decoding is a small synchronous splitter fed one network read at a time (one await
per read, not per line) and JSON goes through orjson.

Error contract (see providers/base.py): failures before any output are `retryable=True`
(the caller may retry or fall back); once a text/tool delta has been yielded they are
`retryable=False`. The API key is read per request from the environment and is never put
into a message, a log line or a repr.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from switchboard.core.catalog import ModelSpec
from switchboard.core.config import ProviderConfig
from switchboard.core.errors import UpstreamError
from switchboard.core.types import (
    ChatMessage,
    ChatRequest,
    Finish,
    FinishReason,
    ImagePart,
    StreamEvent,
    TextDelta,
    TextPart,
    ToolCallDelta,
    Usage,
    UsageReport,
)
from switchboard.providers.http import HTTPProvider, SSEDecoder, drain, error_message, scrub
from switchboard.providers.prompt_tokens import PromptCounter, openai_counter
from switchboard.providers.tokenizers import openai_encoding_name


# Vendors whose OpenAI-compatible endpoint has a well-known address; others need base_url.
DEFAULT_BASE_URLS: dict[str, str] = {
    "openai": "https://api.openai.com/v1",
    "xai": "https://api.x.ai/v1",
    "gemini": "https://generativelanguage.googleapis.com/v1beta/openai",
    "qwen": "https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
}

_FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",  # the legacy name for the same thing
    "content_filter": "content_filter",
    "error": "error",
}


class OpenAICompatProvider(HTTPProvider):
    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config, DEFAULT_BASE_URLS.get(config.kind))
        self._url = self.base_url + "/chat/completions"
        # OpenAI itself rejects `max_tokens` for reasoning models; others only know max_tokens.
        self._max_tokens_field = "max_completion_tokens" if config.kind == "openai" else "max_tokens"

    def prompt_counter(self, model: ModelSpec) -> PromptCounter:
        """OpenAI's own models: its public tokenizer (exact). Other vendors and servers speaking
        its format: a generous stand-in (HTTPProvider's)."""
        if self.kind == "openai":
            return openai_counter(openai_encoding_name(model.upstream_name))
        return super().prompt_counter(model)

    # -- request -------------------------------------------------------------------------

    def build_payload(self, model: ModelSpec, request: ChatRequest) -> dict[str, Any]:
        """The JSON body sent upstream (public so tests and the CLI can show it)."""
        body: dict[str, Any] = {
            "model": model.upstream_name,
            "messages": [_message_json(m) for m in request.messages],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.max_tokens is not None:
            body[self._max_tokens_field] = request.max_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.stop:
            body["stop"] = request.stop
        if request.user is not None:
            body["user"] = request.user
        if request.tools:
            tools = []
            for tool in request.tools:
                fn: dict[str, Any] = {"name": tool.name, "parameters": tool.parameters}
                if tool.description is not None:
                    fn["description"] = tool.description
                tools.append({"type": "function", "function": fn})
            body["tools"] = tools
        if request.tool_choice is not None:
            body["tool_choice"] = request.tool_choice
        if request.response_format is not None:
            body["response_format"] = request.response_format
        return body

    async def stream(self, model: ModelSpec, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        body = orjson.dumps(self.build_payload(model, request))
        key = self.config.api_key()
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if key:
            headers["Authorization"] = f"Bearer {key}"

        # Phase 1: connect and get the status line. Nothing has been produced: retryable.
        resp = await self.open(self._url, body, headers)

        async with resp:
            if resp.status >= 300:
                raise await self.status_error(resp, key)
            if resp.content_type == "application/json":
                # A server that ignored `stream: true` and answered with a whole completion.
                async for event in self._from_completion(resp, key):
                    yield event
                return

            # Phase 2: the stream. Locals, not attributes, on the per-event path.
            decoder = SSEDecoder()
            loads = orjson.loads
            yielded = False  # whether the client may have seen output (then: not retryable)
            finished = False
            done = False
            usage: dict[str, Any] | None = None
            content = resp.content
            try:
                async for chunk in content.iter_any():
                    for data in decoder.feed(chunk):
                        if data == b"[DONE]":
                            done = True
                            break
                        try:
                            obj = loads(data)
                        except orjson.JSONDecodeError:
                            raise UpstreamError(
                                f"{self.name}: malformed stream chunk from upstream",
                                retryable=not yielded,
                            ) from None
                        if type(obj) is not dict:
                            raise UpstreamError(f"{self.name}: unexpected stream chunk from upstream", retryable=not yielded)
                        if "error" in obj:  # an error reported inside a 200 stream
                            raise UpstreamError(
                                f"{self.name}: upstream error mid-stream: {scrub(error_message(obj), key)}",
                                retryable=not yielded,
                            )
                        choices = obj.get("choices")
                        if choices:
                            choice = choices[0]
                            delta = choice.get("delta")
                            if delta:
                                text = delta.get("content")
                                if text:
                                    yielded = True
                                    yield TextDelta(text)
                                calls = delta.get("tool_calls")
                                if calls:
                                    yielded = True
                                    for call in calls:
                                        fn = call.get("function") or {}
                                        yield ToolCallDelta(
                                            index=call.get("index", 0),
                                            id=call.get("id"),
                                            name=fn.get("name"),
                                            arguments=fn.get("arguments") or "",
                                        )
                            reason = choice.get("finish_reason")
                            if reason and not finished:
                                finished = True
                                yield Finish(_FINISH_REASONS.get(reason, "stop"))
                        chunk_usage = obj.get("usage")
                        if chunk_usage:
                            usage = chunk_usage  # some servers repeat it cumulatively: keep the last
                    if done:
                        break
                if not done:
                    for data in decoder.flush():
                        if data == b"[DONE]":
                            done = True
            except (TimeoutError, aiohttp.ClientError) as exc:
                if not finished:
                    self.raise_mid_stream(exc, yielded)
                # The answer is complete; only the usage chunk (or [DONE]) went missing.

            if not finished:
                if not done:
                    raise UpstreamError(f"{self.name}: upstream stream ended early", retryable=not yielded)
                yield Finish("stop")  # [DONE] without a finish_reason: a sloppy but complete stream
            if usage is not None:
                yield UsageReport(_usage(usage))
            if done and not content.at_eof():
                await drain(content)

    async def _from_completion(self, resp: aiohttp.ClientResponse, key: str | None) -> AsyncIterator[StreamEvent]:
        try:
            obj = orjson.loads(await resp.read())
            choice = obj["choices"][0]
            message = choice.get("message") or {}
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
            raise UpstreamError(f"{self.name}: malformed completion from upstream") from None
        if message.get("content"):
            yield TextDelta(message["content"])
        for i, call in enumerate(message.get("tool_calls") or []):
            fn = call.get("function") or {}
            yield ToolCallDelta(index=i, id=call.get("id"), name=fn.get("name"), arguments=fn.get("arguments") or "")
        yield Finish(_FINISH_REASONS.get(choice.get("finish_reason") or "stop", "stop"))
        if obj.get("usage"):
            yield UsageReport(_usage(obj["usage"]))

# -- helpers -------------------------------------------------------------------------------


def _message_json(message: ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role}
    content = message.content
    if isinstance(content, list):
        parts: list[dict[str, Any]] = []
        for part in content:
            if isinstance(part, TextPart):
                parts.append({"type": "text", "text": part.text})
            elif isinstance(part, ImagePart):
                image: dict[str, Any] = {"url": part.url}
                if part.detail is not None:
                    image["detail"] = part.detail
                parts.append({"type": "image_url", "image_url": image})
        out["content"] = parts
    else:
        out["content"] = content  # a string, or null (an assistant turn with only tool calls)
    if message.name is not None:
        out["name"] = message.name
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def _usage(raw: dict[str, Any]) -> Usage:
    prompt_details = raw.get("prompt_tokens_details") or {}
    completion_details = raw.get("completion_tokens_details") or {}
    cached = prompt_details.get("cached_tokens")
    if cached is None:
        cached = raw.get("prompt_cache_hit_tokens")  # DeepSeek's name for the same figure
    return Usage(
        prompt_tokens=int(raw.get("prompt_tokens") or 0),
        completion_tokens=int(raw.get("completion_tokens") or 0),
        cached_prompt_tokens=int(cached or 0),
        reasoning_tokens=int(completion_details.get("reasoning_tokens") or 0),
    )


