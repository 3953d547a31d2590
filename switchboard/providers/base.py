"""The one interface every provider adapter implements.

A provider turns a canonical `ChatRequest` into a stream of `StreamEvent`s. It never
touches money: the inference layer meters what the stream yields. Adapters raise
`UpstreamError` / `UpstreamTimeout` for failures; `retryable=False` once output has been
produced (the caller must not retry or fall back after the client has seen tokens).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from functools import lru_cache

from switchboard.core.catalog import ModelSpec
from switchboard.core.types import ChatRequest, StreamEvent
from switchboard.providers.prompt_tokens import PromptCounter, TokenCount, openai_compatible_counter


class Provider(ABC):
    """One configured provider (an API endpoint with its credentials, or the local model)."""

    name: str
    kind: str

    @abstractmethod
    def stream(self, model: ModelSpec, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        """Run the request, yielding text/tool deltas, then a Finish and (if known) a UsageReport."""

    def count_prompt(self, model: ModelSpec, request: ChatRequest) -> TokenCount:
        """The prompt tokens the vendor will bill for this request: everything it reads (messages,
        tools, response format, images; providers.prompt_tokens). `bound` is for the hold and the
        context-window check, `estimate` is charged when the vendor reports no usage. Adapters
        override it with their vendor's tokenizer and framing; one that only overrides
        `count_prompt_tokens` (an exact count, as the local model's) gets that for both."""
        n = self.count_prompt_tokens(model, request)
        return TokenCount(n, n)

    def count_prompt_tokens(self, model: ModelSpec, request: ChatRequest) -> int:
        """Prompt tokens this request will use, at least what the vendor will bill."""
        return estimate_prompt_tokens(request)

    def count_text_tokens(self, model: ModelSpec, text: str) -> int:
        """Tokens in a piece of produced text (the best estimate): used to stop reading at
        max_tokens and when a stream ends without a usage report."""
        return _generic().text.estimate(text) if text else 0

    def head_of_text(self, model: ModelSpec, text: str, tokens: int) -> str:
        """The start of produced `text` that counts as at most `tokens` (`count_text_tokens`):
        what is passed on when an upstream goes past max_tokens."""
        return _generic().text.head(text, tokens)

    def tokens_per_byte(self, model: ModelSpec) -> float:
        """The most tokens `count_text_tokens` makes of one UTF-8 byte: below max_tokens / this
        many bytes, produced text needs no counting."""
        return _generic().text.per_byte

    async def start(self) -> None:
        """Open pools or load weights. Called once per process."""

    async def aclose(self) -> None:
        """Release pools and threads."""


@lru_cache(maxsize=1)
def _generic() -> PromptCounter:
    """For a provider that knows nothing better: o200k scaled, OpenAI's framing (built on first
    use: loading a tokenizer takes a few tenths of a second)."""
    return openai_compatible_counter()


def estimate_prompt_tokens(request: ChatRequest) -> int:
    """A generous count of a request's prompt for a vendor we know nothing about."""
    return _generic().count(request.model, request).bound
