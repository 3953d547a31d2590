"""The router: which model of the catalog runs a request, and why.

A model named explicitly runs as asked. For `auto` (or no model) the decision is:

1. task class (tasks.py) and difficulty (difficulty.py) of the request;
2. the tier it needs: the task's minimum tier, raised by the difficulty thresholds, capped by
   the user's plan;
3. the eligible models: abilities the request needs, a context window that fits the prompt, a
   provider whose circuit is closed, a tier the plan allows;
4. the cheapest eligible model of the needed tier wins (if that tier has none: the nearest tier
   above within the plan, else below); the next candidates become the fallback chain, and the
   cheaper ones the balance fallback ("degrade before refusing").

Pure and deterministic: the same request, plan, catalog and health give the same decision.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NamedTuple, Protocol

from switchboard.core.catalog import ModelSpec
from switchboard.core.config import RoutingConfig, Settings
from switchboard.core.errors import ContextTooLong, InvalidRequest, ModelNotFound, ServiceUnavailable
from switchboard.core.types import ChatRequest
from switchboard.router.tasks import classify, last_user_text

AUTO = "auto"
TIERS = ("small", "mid", "flagship")
_RANK = {t: i for i, t in enumerate(TIERS)}


class Health(Protocol):
    def available(self, provider: str) -> bool: ...
    def latency_ms(self, model: str) -> float | None: ...
    def retry_in_s(self, provider: str) -> float: ...  # when an unavailable provider may be tried again


class AllHealthy:
    """Health for offline decisions (the CLI): every provider up, no latency known."""

    def available(self, provider: str) -> bool:
        return True

    def latency_ms(self, model: str) -> float | None:
        return None

    def retry_in_s(self, provider: str) -> float:
        return 0.0


class Assessment(NamedTuple):
    """What a request is, whatever the catalog: the router's inputs besides plan and health."""

    prompt_tokens: int  # the router's quick estimate unless the caller counted them
    needed: frozenset[str]  # abilities the request needs
    task: str
    cue: str  # what decided the task class
    difficulty: float  # 0..1, from the prompt's text alone


@dataclass(frozen=True, slots=True)
class RouteDecision:
    chain: tuple[ModelSpec, ...]  # the first runs; the rest are fallbacks, in order
    explanation: dict[str, Any] = field(default_factory=dict)
    degrade: tuple[ModelSpec, ...] = ()  # cheaper models to try when the balance cannot cover the chain

    @property
    def model(self) -> ModelSpec:
        return self.chain[0]

    def header(self, ran: str | None = None) -> str:
        """The compact, ASCII-only form for the x-switchboard-route header. `ran`: the model
        that actually ran, when a fallback took over from the first choice."""
        e = self.explanation
        model = ran or self.model.name
        fallback = f"; fallback_from={self.model.name}" if model != self.model.name else ""
        if e.get("requested") != AUTO:
            return f"model={model}; reason=requested{fallback}"
        return (f"model={model}; task={e['task']}; difficulty={e['difficulty']:.2f}; "
                f"tier={e['tier']}; reason={e['reason']}{fallback}")


def blended_usd_per_mtok(spec: ModelSpec) -> Decimal:
    """One price to rank models by: a typical 3:1 input:output mix."""
    return (3 * spec.input_usd_per_mtok + spec.output_usd_per_mtok) / 4


def tier_by_price(spec: ModelSpec) -> str:
    price = blended_usd_per_mtok(spec)
    return "small" if price < 1 else "mid" if price < 6 else "flagship"


class Router:
    def __init__(
        self,
        catalog: dict[str, ModelSpec],
        config: RoutingConfig,
        difficulty: Callable[[str], float],
        *,
        default_model: str | None = None,
        shipped_tiers: dict[str, str] | None = None,
    ) -> None:
        if not catalog:
            raise ValueError("the catalog is empty: enable the local model or declare [[models]]")
        if default_model is not None and default_model not in catalog:
            raise ValueError(f"default_model {default_model!r} is not in the catalog")
        self.catalog = catalog
        self.config = config
        self.difficulty = difficulty
        self.default_model = default_model
        shipped_tiers = shipped_tiers or {}
        self.tiers: dict[str, str] = {}
        for name, spec in catalog.items():
            self.tiers[name] = (
                config.tiers.get(name) or shipped_tiers.get(name)
                or ("small" if spec.provider == "local" else tier_by_price(spec))
            )
        # Per-model figures computed once: a decision only reads them.
        self._price = {name: blended_usd_per_mtok(spec) for name, spec in catalog.items()}
        self._price_text = {name: str(price.normalize()) for name, price in self._price.items()}
        self._rank = {name: _RANK[tier] for name, tier in self.tiers.items()}
        # Ranked once: cheapest first within each tier, then by name (deterministic).
        self._ranked = sorted(catalog.values(), key=lambda s: (self._rank[s.name], self._price[s.name], s.name))

    @classmethod
    def for_settings(cls, catalog: dict[str, ModelSpec], settings: Settings) -> "Router":
        """The router as every entry point builds it: the settings' policy, the trained
        difficulty estimate, and the shipped models' tiers."""
        from switchboard.router.catalog import shipped_models
        from switchboard.router.difficulty_loader import load_difficulty

        return cls(catalog, settings.routing, load_difficulty(), default_model=settings.default_model,
                   shipped_tiers={m.spec.name: m.tier for m in shipped_models()})

    # -- explicit names -----------------------------------------------------------------
    def named(self, requested: str) -> RouteDecision:
        spec = self.catalog.get(requested)
        if spec is None:
            if len(requested) > 200:
                raise InvalidRequest("model name is too long", param="model")
            known = ", ".join(sorted(self.catalog))
            from switchboard.router.catalog import missing_vendor_key  # the error path only

            vendor = missing_vendor_key(requested)
            if vendor is not None:
                name, env = vendor
                raise ModelNotFound(
                    f"The model `{requested}` is one of {name}'s, and this server has no {name} API key "
                    f"(its operator sets {env} to offer {name}'s models). Available here: {known}, auto.",
                    param="model",
                )
            raise ModelNotFound(
                f"The model `{requested}` does not exist or you do not have access to it. Available: {known}, auto.",
                param="model",
            )
        return RouteDecision((spec,), {"requested": requested, "model": spec.name, "reason": "requested by name"})

    # -- auto ---------------------------------------------------------------------------
    def decide(
        self, request: ChatRequest, *, plan: str = "free", prompt_tokens: int | None = None,
        health: Health | None = None,
    ) -> RouteDecision:
        if request.model and request.model != AUTO:
            return self.named(request.model)
        health = health or AllHealthy()
        cfg = self.config
        tokens, needed_abilities, task, cue, difficulty = self.assess(request, prompt_tokens)
        need = cfg.task_min_tier.get(task, "small")  # type: ignore[call-overload]
        why = [f"{task} ({cue}) needs at least {need}"]
        by_difficulty = "flagship" if difficulty >= cfg.difficulty_flagship else "mid" if difficulty >= cfg.difficulty_mid else "small"
        if _RANK[by_difficulty] > _RANK[need]:
            need = by_difficulty
            why.append(f"difficulty {difficulty:.2f} needs {need}")
        cap = cfg.plan_max_tier.get(plan, "flagship")
        if _RANK[need] > _RANK[cap]:
            why.append(f"the {plan} plan allows up to {cap}")
            need = cap
        considered: list[dict[str, Any]] = []
        eligible: list[ModelSpec] = []
        unavailable: list[ModelSpec] = []  # could serve the request, but their provider is failing
        above_plan: set[str] = set()
        cap_rank = _RANK[cap]
        for spec in self._ranked:
            tier = self.tiers[spec.name]
            reason = None
            if self._rank[spec.name] > cap_rank:
                reason = f"above the {plan} plan"
                above_plan.add(spec.name)
            elif missing := spec.lacks(needed_abilities):
                reason = "lacks " + ", ".join(sorted(missing))
            elif tokens >= spec.context_window:
                reason = "context window too small"
            elif not health.available(spec.provider):
                reason = "provider circuit open"
                unavailable.append(spec)
            considered.append({"model": spec.name, "tier": tier, "usd_per_mtok": self._price_text[spec.name],
                               "eligible": reason is None, **({"why_not": reason} if reason else {})})
            if reason is None:
                eligible.append(spec)
        if not eligible and unavailable:
            raise _outage(unavailable, health)
        within_plan = [c for c in considered if c["model"] not in above_plan]
        if not eligible and within_plan and all(c["why_not"] == "context window too small" for c in within_plan):
            raise _too_long(tokens, [self.catalog[c["model"]] for c in within_plan])
        if not eligible and not within_plan:
            raise InvalidRequest(f"None of the models here is open to the {plan} plan (it allows {cap} models).",
                                 param="model")
        if not eligible:
            raise InvalidRequest(
                "No model in the catalog can serve this request"
                + (f" (needs {', '.join(sorted(needed_abilities))})" if needed_abilities else "") + ".",
                param="model",
            )
        order = self._preference(eligible, need, health)
        winner = order[0]
        won_tier = self.tiers[winner.name]
        if self.default_model and self.default_model in {s.name for s in eligible} and won_tier == need:
            default = self.catalog[self.default_model]
            if self.tiers[default.name] == need:
                order.remove(default)
                order.insert(0, default)
                winner = default
        if won_tier == need:
            reason = f"cheapest eligible {won_tier} model"
        elif winner.provider == "local" and len(eligible) == 1:
            reason = "the only eligible model"
        else:
            reason = f"no eligible {need} model; nearest tier {won_tier}"
        chain = tuple(order[: 1 + cfg.fallbacks])
        price = self._price
        winner_price = price[winner.name]
        degrade = tuple(s for s in sorted(eligible, key=lambda s: (-self._rank[s.name], price[s.name], s.name))
                        if price[s.name] < winner_price)
        explanation = {
            "requested": AUTO, "task": task, "task_cue": cue, "difficulty": difficulty, "plan": plan,
            "tier": need, "model": winner.name, "reason": reason, "why": why,
            "prompt_tokens_estimate": tokens, "fallbacks": [s.name for s in chain[1:]], "candidates": considered,
        }
        return RouteDecision(chain, explanation, degrade)

    def cheapest(self, plan: str, needed: frozenset[str] = frozenset()) -> ModelSpec:
        """The cheapest model the plan may use that has the `needed` abilities: for background
        work (summaries, memory extraction) that must not pay for capacity it does not need."""
        cap = _RANK[self.config.plan_max_tier.get(plan, "flagship")]
        usable = [s for s in self._ranked if self._rank[s.name] <= cap and not s.lacks(needed)]
        if not usable:
            raise InvalidRequest(f"No model here is open to the {plan} plan for this work.", param="model")
        return min(usable, key=lambda s: (self._price[s.name], s.name))

    def assess(self, request: ChatRequest, prompt_tokens: int | None = None) -> Assessment:
        """Task class and difficulty of a request: they depend on the request alone, never on
        which models are in the catalog or eligible (`switchboard route` shows them either way)."""
        tokens = prompt_tokens if prompt_tokens is not None else _quick_tokens(request)
        needed = request.needed_abilities()
        text = last_user_text(request)
        task, cue = classify(request, tokens, self.config.long_document_tokens, needed=needed, text=text)
        return Assessment(tokens, needed, task, cue, round(float(self.difficulty(text)), 4))

    def _preference(self, eligible: list[ModelSpec], need: str, health: Health) -> list[ModelSpec]:
        """Needed tier first (cheapest first), then tiers above (nearest first), then below."""
        target = _RANK[need]

        local_last = self.config.local_model_last
        rank_of, price = self._rank, self._price

        def key(spec: ModelSpec) -> tuple[Any, ...]:
            rank = rank_of[spec.name]
            distance = (0, 0) if rank == target else (1, rank - target) if rank > target else (2, target - rank)
            latency = health.latency_ms(spec.name)
            last = local_last and spec.provider == "local"
            return (last, distance, price[spec.name], math.inf if latency is None else latency, spec.name)

        order = sorted(eligible, key=key)
        slack = self.config.prefer_faster_within
        if slack > 0 and len(order) > 1:
            first = order[0]
            limit = price[first.name] * Decimal(str(1 + slack))
            peers = [s for s in order if self.tiers[s.name] == self.tiers[first.name] and price[s.name] <= limit]
            fastest = min(peers, key=lambda s: (health.latency_ms(s.name) or math.inf, price[s.name], s.name))
            if fastest is not first and health.latency_ms(fastest.name) is not None:
                order.remove(fastest)
                order.insert(0, fastest)
        return order

    # -- offline evaluation --------------------------------------------------------------
    def pick_from(self, names: list[str], difficulty: float, threshold: float) -> str:
        """`--models A,B,...` (cheapest first): the first model below the threshold, then one step
        up per equal slice of [threshold, 1]."""
        if len(names) == 1 or difficulty < threshold:
            return names[0]
        steps = len(names) - 1
        span = (1 - threshold) / steps  # steps >= 1: one name has returned above
        index = 1 + int((difficulty - threshold) / span) if span > 0 else steps
        return names[min(index, steps)]


def _outage(unavailable: list[ModelSpec], health: Health) -> ServiceUnavailable:
    """Models could serve the request, but none of them can run now: a 503 saying when to retry,
    not a 400 (the request itself is fine)."""
    names = ", ".join(spec.name for spec in unavailable[:5]) + (", ..." if len(unavailable) > 5 else "")
    retry = min(health.retry_in_s(spec.provider) for spec in unavailable)
    return ServiceUnavailable(
        f"The models that can serve this request ({names}) are unavailable right now: their providers "
        f"are failing. Retry in {max(1, math.ceil(retry))} s.", retry_after_s=retry,
    )


def _too_long(tokens: int, models: list[ModelSpec]) -> ContextTooLong:
    """No model's context window holds the prompt: 413 context_length_exceeded, as for a model
    asked for by name (inference.metered counts exactly; this is the router's estimate)."""
    largest = max(spec.context_window for spec in models)
    return ContextTooLong(
        f"The largest context window of the models that could serve this request is {largest} tokens. "
        f"However, your messages come to about {tokens} tokens. Please reduce the length of the messages.",
        param="messages",
    )


def _quick_tokens(request: ChatRequest) -> int:
    return sum(len(m.text()) for m in request.messages) // 4 + 4 * len(request.messages)
