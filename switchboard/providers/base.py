"""The one interface every provider adapter implements.

A provider turns a canonical `ChatRequest` into a stream of `StreamEvent`s. It never
touches money: the inference layer meters what the stream yields. Adapters raise
`UpstreamError` / `UpstreamTimeout` for failures; `retryable=False` once output has been
produced (the caller must not retry or fall back after the client has seen tokens).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator

from switchboard.core.catalog import ModelSpec
from switchboard.core.types import ChatRequest, StreamEvent


class Provider(ABC):
    """One configured provider (an API endpoint with its credentials, or the local model)."""

    name: str
    kind: str

    @abstractmethod
    def stream(self, model: ModelSpec, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        """Run the request, yielding text/tool deltas, then a Finish and (if known) a UsageReport."""

    def count_prompt_tokens(self, model: ModelSpec, request: ChatRequest) -> int:
        """Prompt tokens this request will use. Adapters with the model's tokenizer count exactly;
        the default is a deliberately generous estimate (UTF-8 bytes / 3 plus framing), so that
        holds cover the real count; any excess the vendor reports is still charged (as debt)."""
        return estimate_prompt_tokens(request)

    def count_text_tokens(self, model: ModelSpec, text: str) -> int:
        """Tokens in a piece of produced text, used when a stream ends without a usage report."""
        return max(1, math.ceil(len(text.encode("utf-8")) / 4)) if text else 0

    async def start(self) -> None:
        """Open pools or load weights. Called once per process."""

    async def aclose(self) -> None:
        """Release pools and threads."""


def estimate_prompt_tokens(request: ChatRequest) -> int:
    total = 3  # reply priming
    for message in request.messages:
        total += 4 + math.ceil(len(message.text().encode("utf-8")) / 3)
        if message.tool_calls:
            for call in message.tool_calls:
                total += 4 + math.ceil(len((call.name + call.arguments).encode("utf-8")) / 3)
        if isinstance(message.content, list):
            total += 1000 * sum(1 for part in message.content if not hasattr(part, "text"))
    if request.tools:
        for tool in request.tools:
            total += 8 + math.ceil(len(str(tool.parameters).encode("utf-8")) / 3)
    return total
