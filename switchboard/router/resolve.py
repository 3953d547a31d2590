"""Which model runs a request: the one asked for, or for "auto" the configured default.

The full router (task classes, difficulty, plans, health) comes later; this keeps its shape:
a decision is an ordered chain of candidates (the first runs; the rest are fallbacks) plus an
explanation that is stored with the usage record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from switchboard.core.catalog import ModelSpec
from switchboard.core.errors import InvalidRequest, ModelNotFound

AUTO = "auto"


@dataclass(frozen=True, slots=True)
class RouteDecision:
    chain: tuple[ModelSpec, ...]
    explanation: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> ModelSpec:
        return self.chain[0]


def _price_key(spec: ModelSpec) -> tuple[Any, ...]:
    return (spec.input_usd_per_mtok + spec.output_usd_per_mtok, spec.name)


class StaticRouter:
    """Explicit model names pass through; "auto" picks the default (or the cheapest model)."""

    def __init__(self, catalog: dict[str, ModelSpec], default_model: str | None = None) -> None:
        if not catalog:
            raise ValueError("the catalog is empty: enable the local model or declare [[models]]")
        if default_model is not None and default_model not in catalog:
            raise ValueError(f"default_model {default_model!r} is not in the catalog")
        self.catalog = catalog
        by_price = sorted(catalog.values(), key=_price_key)
        self._auto_chain = tuple(
            [catalog[default_model]] + [s for s in by_price if s.name != default_model]
            if default_model
            else by_price
        )

    def decide(self, requested: str | None) -> RouteDecision:
        if not requested or requested == AUTO:
            return RouteDecision(
                self._auto_chain,
                {"requested": AUTO, "model": self._auto_chain[0].name, "reason": "default model for auto",
                 "fallbacks": [s.name for s in self._auto_chain[1:]]},
            )
        spec = self.catalog.get(requested)
        if spec is None:
            if len(requested) > 200:
                raise InvalidRequest("model name is too long", param="model")
            known = ", ".join(sorted(self.catalog))
            raise ModelNotFound(
                f"The model `{requested}` does not exist or you do not have access to it. Available: {known}, auto.",
                param="model",
            )
        return RouteDecision((spec,), {"requested": requested, "model": spec.name, "reason": "requested by name"})
