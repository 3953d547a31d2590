"""What the catalog knows about one model: where it runs, its window, its prices, its abilities."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from switchboard.core.money import per_mtok
from switchboard.core.types import Usage


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str  # the name clients ask for
    provider: str  # the provider entry that serves it
    upstream_name: str  # the name the provider knows it by
    context_window: int
    input_usd_per_mtok: Decimal
    output_usd_per_mtok: Decimal
    cached_input_usd_per_mtok: Decimal | None = None
    cache_write_usd_per_mtok: Decimal | None = None
    max_output_tokens: int | None = None
    # "tools", "vision", "json", "reasoning"; None: not declared (any request is passed through
    # and the upstream decides), as for a self-hosted server whose model we do not know.
    abilities: frozenset[str] | None = None

    def lacks(self, needed: frozenset[str]) -> frozenset[str]:
        """The abilities in `needed` this model is known not to have."""
        return frozenset() if self.abilities is None else needed - self.abilities

    def cost_usd(self, usage: Usage) -> Decimal:
        """Cost of one call: uncached input + cached input + cache writes + output (reasoning included)."""
        cached = min(usage.cached_prompt_tokens, usage.prompt_tokens)
        writes = min(usage.cache_write_tokens, usage.prompt_tokens - cached)
        uncached = usage.prompt_tokens - cached - writes
        cached_price = self.cached_input_usd_per_mtok if self.cached_input_usd_per_mtok is not None else self.input_usd_per_mtok
        write_price = self.cache_write_usd_per_mtok if self.cache_write_usd_per_mtok is not None else self.input_usd_per_mtok
        return (
            per_mtok(uncached, self.input_usd_per_mtok)
            + per_mtok(cached, cached_price)
            + per_mtok(writes, write_price)
            + per_mtok(usage.completion_tokens, self.output_usd_per_mtok)
        )

    def worst_case_usd(self, prompt_tokens: int, max_output_tokens: int) -> Decimal:
        """The most a call can cost: every prompt token uncached, every output token produced."""
        input_price = max(self.input_usd_per_mtok, self.cache_write_usd_per_mtok or Decimal(0))
        return per_mtok(prompt_tokens, input_price) + per_mtok(max_output_tokens, self.output_usd_per_mtok)
