"""One description per vendor: its fake upstream, its provider kind, and how it reports usage.

Every vendor's fake is configured with the same `Behaviour` (tests/fakes/openai_upstream.py);
`expected_usage` says what our normalised Usage must be for a Behaviour, following each
vendor's documented counting rules, so the scenario tests can assert the exact charge.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from switchboard.core.types import Usage
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.gemini_upstream import FakeGemini
from tests.fakes.openai_upstream import Behaviour, FakeOpenAI

# Prices (USD per million tokens) chosen so charges are easy to read: 1 credit = USD 0.005.
PRICES = {"input": Decimal(1000), "cached": Decimal(250), "write": Decimal(1250), "output": Decimal(2000)}
BACKUP_FACTOR = 2  # the fallback model costs twice as much


def completion_of(b: Behaviour) -> int:
    if b.completion_tokens is not None:
        return b.completion_tokens
    return max(b.chunks if b.text else 0, 1)


def openai_usage(b: Behaviour) -> Usage:
    """OpenAI, xAI, DashScope: cached tokens inside prompt_tokens, reasoning inside completion."""
    return Usage(prompt_tokens=b.prompt_tokens, completion_tokens=completion_of(b),
                 cached_prompt_tokens=b.cached_tokens, reasoning_tokens=b.reasoning_tokens)


def anthropic_usage(b: Behaviour) -> Usage:
    """Anthropic: `input_tokens` excludes cache reads and writes, which come beside it
    (cache_read_input_tokens, cache_creation_input_tokens); thinking is inside output_tokens
    and not reported apart. Normalised, the prompt is the sum of the three."""
    return replace(openai_usage(b), cache_write_tokens=getattr(b, "cache_write_tokens", 0), reasoning_tokens=0)


@dataclass(frozen=True)
class VendorCase:
    kind: str
    fake_factory: Callable[[], Any]
    expected_usage: Callable[[Behaviour], Usage]
    reports_reasoning: bool = True

    def __str__(self) -> str:
        return self.kind


def cases() -> list[VendorCase]:
    return [
        VendorCase("openai", FakeOpenAI, openai_usage),
        VendorCase("xai", FakeOpenAI, openai_usage),
        VendorCase("qwen", FakeOpenAI, openai_usage),
        VendorCase("anthropic", FakeAnthropic, anthropic_usage, reports_reasoning=False),
        # Gemini counts cached tokens inside promptTokenCount (cachedContentTokenCount is a
        # part of it) and thinking beside the answer (thoughtsTokenCount apart from
        # candidatesTokenCount; the fake sends candidates = completion - reasoning), both billed,
        # thinking as output: normalised, that is exactly OpenAI's usage.
        VendorCase("gemini", FakeGemini, openai_usage),
    ]


def credits(usage: Usage, factor: int = 1) -> Decimal:
    """What a usage costs in credits at the test prices (exact; the gateway rounds up to 1e-6)."""
    cached = usage.cached_prompt_tokens
    write = usage.cache_write_tokens
    uncached = usage.prompt_tokens - cached - write
    usd = (uncached * PRICES["input"] + cached * PRICES["cached"] + write * PRICES["write"]
           + usage.completion_tokens * PRICES["output"]) * factor / Decimal(1_000_000)
    return usd / Decimal("0.005")
