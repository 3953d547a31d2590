"""The metered call: route -> count -> hold -> provider (with fallbacks) -> measure -> settle -> record.

`Inference.begin` does everything that can refuse a request (unknown model, prompt too long,
not enough credits) before any output, so the API can answer with a plain error status.
`MeteredCall.events` then streams the provider's events while measuring them, and
`MeteredCall.settle` charges what was produced, exactly once. If the consumer goes away
mid-stream, `settle_in_background` charges what was delivered without waiting.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from switchboard.billing.ledger import HoldOp, HoldResult, Ledger, SettleOp, SettleResult
from switchboard.core.catalog import ModelSpec
from switchboard.core.errors import (
    ContextTooLong,
    DuplicateRequest,
    InsufficientCredits,
    InvalidRequest,
    ServiceUnavailable,
    SpendingCapReached,
    SwitchboardError,
    UpstreamError,
)
from switchboard.core.money import UCR_PER_CREDIT, usd_text, usd_to_ucr
from switchboard.core.types import ChatRequest, Finish, StreamEvent, TextDelta, ToolCallDelta, Usage, UsageReport
from switchboard.inference.resilience import BreakerPolicy, CircuitBreaker, RetryPolicy, UserHealth
from switchboard.providers.base import Provider
from switchboard.router.router import RouteDecision, Router
from switchboard.store.runner import TransactionRunner

log = logging.getLogger(__name__)

# The shortest answer worth running when the balance cannot cover a default-length one.
MIN_AFFORDABLE_OUTPUT = 16


@dataclass(slots=True)
class Metering:
    """What one request used and cost, as the client and the usage record see it."""

    request_id: str
    model: str
    provider: str
    usage: Usage
    cost_usd: Decimal
    charged_ucr: int
    available_ucr: int
    outcome: str
    ttft_ms: float | None
    decode_tokens_per_s: float | None
    latency_ms: float
    route: dict[str, Any] = field(default_factory=dict)


def _provider_fault(error: UpstreamError) -> bool:
    """Failures that say the provider is unwell (not that this request was bad)."""
    status = error.upstream_status
    return status is None or status >= 500 or status == 429


class Inference:
    def __init__(
        self,
        *,
        router: Router,
        providers: dict[str, Provider],
        ledger: Ledger,
        runner: TransactionRunner,
        usd_per_credit: Decimal,
        default_max_output_tokens: int,
        retry_policy: RetryPolicy | None = None,
        breaker_failures: int = 5,
        breaker_cooldown_s: float = 30.0,
        breaker_min_users: int = 3,
        breaker_window_s: float = 60.0,
    ) -> None:
        self.retry_policy = retry_policy or RetryPolicy()
        policy = BreakerPolicy(breaker_failures, breaker_min_users, breaker_window_s, breaker_cooldown_s)
        self.breakers = {name: CircuitBreaker(policy) for name in providers}
        self._rng = random.Random()
        self._latency: dict[str, float] = {}
        self.router = router
        self.providers = providers
        self.ledger = ledger
        self.runner = runner
        self.usd_per_credit = usd_per_credit
        self.default_max_output_tokens = default_max_output_tokens
        # Holds belong to a process (inference.heartbeat): its id, stamped on every hold, and
        # the streams in flight, whose delivery it records every few seconds.
        self.process_id: int | None = None
        self.streams: weakref.WeakValueDictionary[int, MeteredCall] = weakref.WeakValueDictionary()

    def provider_for(self, spec: ModelSpec) -> Provider:
        return self.providers[spec.provider]

    def _plan_candidate(self, spec: ModelSpec, request: ChatRequest) -> tuple[int, int]:
        """(prompt tokens, max output tokens) for this model, or ContextTooLong."""
        prompt_tokens = self.provider_for(spec).count_prompt_tokens(spec, request)
        room = spec.context_window - prompt_tokens
        if room <= 0:
            raise ContextTooLong(
                f"This model's maximum context length is {spec.context_window} tokens. However, your "
                f"messages resulted in {prompt_tokens} tokens. Please reduce the length of the messages.",
                param="messages",
            )
        limit = spec.max_output_tokens or room
        # Without max_tokens, the hold covers `default_max_output_tokens`, not the model's whole
        # output limit (up to a million tokens for some): one request must not reserve dollars.
        wanted = request.max_tokens if request.max_tokens is not None else self.default_max_output_tokens
        return prompt_tokens, max(1, min(wanted, limit, room))

    async def begin(
        self,
        request: ChatRequest,
        *,
        user_id: int,
        request_id: str,
        endpoint: str,
        stream: bool,
        api_key_id: int | None = None,
        plan: str = "free",
    ) -> "MeteredCall":
        started = time.perf_counter()
        request.account_id = user_id
        decision = self.router.decide(request, plan=plan, health=UserHealth(self.breakers, user_id, self.latency_ms))
        plans = self._plan_chain(decision.chain, request)
        held, hold_ucr = await self._hold(plans, request, user_id, request_id)
        if not held.ok and not held.duplicate and decision.degrade:
            # Degrade before refusing: the best cheaper model the balance can cover.
            for spec in decision.degrade:
                try:
                    cheaper = self._plan_chain((spec,), request)
                except SwitchboardError:
                    continue
                if self._worst_ucr(cheaper) <= held.available_ucr:
                    explanation = {**decision.explanation, "model": spec.name,
                                   "degraded": f"balance covers {spec.name}, not {decision.model.name}"}
                    decision = RouteDecision((spec,), explanation)
                    plans = cheaper
                    held, hold_ucr = await self._hold(plans, request, user_id, request_id)
                    break
        if held.duplicate:
            raise DuplicateRequest(f"request id {request_id!r} was already used", param="idempotency-key")
        if not held.ok and held.cap is not None:
            raise SpendingCapReached(held.cap.cap, held.cap.cap_ucr, held.cap.spent_ucr, held.needed_ucr)
        if not held.ok:
            raise InsufficientCredits(held.available_ucr, held.needed_ucr)
        assert held.hold_id is not None
        if held.needed_ucr < hold_ucr:
            plans = [(spec, p, self._affordable_output(spec, p, m, held.needed_ucr)) for spec, p, m in plans]
        call = MeteredCall(
            self, request, plans, decision, user_id=user_id, request_id=request_id, hold_id=held.hold_id,
            endpoint=endpoint, stream=stream, api_key_id=api_key_id, started=started,
        )
        if stream:
            self.streams[held.hold_id] = call
        return call

    def _plan_chain(self, chain: tuple[ModelSpec, ...], request: ChatRequest) -> list[tuple[ModelSpec, int, int]]:
        """(model, prompt tokens, max output tokens) for each candidate that can serve the request."""
        needed = request.needed_abilities()
        usable = [spec for spec in chain if not spec.lacks(needed)] if needed else list(chain)
        if not usable:
            first = chain[0]
            missing = ", ".join(sorted(first.lacks(needed)))
            raise InvalidRequest(
                f"The model `{first.name}` does not support {missing}. Choose a model that does "
                f"(`GET /v1/models` lists each model's abilities).", param="model",
            )
        plans: list[tuple[ModelSpec, int, int]] = []
        too_long: ContextTooLong | None = None
        for spec in usable:
            try:
                prompt_tokens, max_out = self._plan_candidate(spec, request)
            except ContextTooLong as exc:
                too_long = too_long or exc
                continue
            plans.append((spec, prompt_tokens, max_out))
        if not plans:
            assert too_long is not None
            raise too_long
        return plans

    def _worst_ucr(self, plans: list[tuple[ModelSpec, int, int]]) -> int:
        """One hold covers every candidate of the chain: a fallback never needs a second hold."""
        return max(usd_to_ucr(spec.worst_case_usd(p, m), self.usd_per_credit) for spec, p, m in plans)

    async def _hold(
        self, plans: list[tuple[ModelSpec, int, int]], request: ChatRequest, user_id: int, request_id: str
    ) -> tuple[HoldResult, int]:
        hold_ucr = self._worst_ucr(plans)
        # A client that set no max_tokens gets what its balance affords (down to a short answer)
        # rather than a refusal sized to the model's largest possible output.
        min_ucr = None
        if request.max_tokens is None:
            min_ucr = max(
                usd_to_ucr(spec.worst_case_usd(p, min(m, MIN_AFFORDABLE_OUTPUT)), self.usd_per_credit)
                for spec, p, m in plans
            )
        first = plans[0][0].name
        future = self.runner.submit(
            HoldOp(self.ledger, user_id, request_id, hold_ucr, first, min_amount_ucr=min_ucr, process_id=self.process_id),
            order_key=user_id,
        )
        try:
            return await asyncio.wrap_future(future), hold_ucr
        except asyncio.CancelledError:
            # The client left while we waited: release the hold if it was placed.
            future.add_done_callback(lambda f: self._void_orphan(f, user_id))
            raise

    # -- health, for the router ------------------------------------------------------------
    def available(self, provider: str) -> bool:
        breaker = self.breakers.get(provider)
        return breaker is None or breaker.state != "open"

    def latency_ms(self, model: str) -> float | None:
        return self._latency.get(model)

    def observe_latency(self, model: str, ttft_ms: float) -> None:
        """Exponentially weighted time to first token, per model (this process's view)."""
        old = self._latency.get(model)
        self._latency[model] = ttft_ms if old is None else old + 0.2 * (ttft_ms - old)

    def _affordable_output(self, spec: ModelSpec, prompt_tokens: int, max_out: int, held_ucr: int) -> int:
        """The most output tokens whose worst case still fits in `held_ucr`."""
        if spec.output_usd_per_mtok <= 0:
            return max_out
        held_usd = Decimal(held_ucr) * self.usd_per_credit / UCR_PER_CREDIT
        room = held_usd - spec.worst_case_usd(prompt_tokens, 0)
        tokens = min(max_out, max(1, int(room * 1_000_000 / spec.output_usd_per_mtok)))
        while tokens > 1 and usd_to_ucr(spec.worst_case_usd(prompt_tokens, tokens), self.usd_per_credit) > held_ucr:
            tokens -= 1
        return tokens

    def _void_orphan(self, future: Any, user_id: int) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        held = future.result()
        if held.ok and held.hold_id is not None:
            hold_id = held.hold_id
            self.runner.submit_nowait(SettleOp(self.ledger, user_id, hold_id, 0, None), order_key=user_id)


class MeteredCall:
    """One admitted request: a placed hold and the candidates that may run it."""

    def __init__(
        self,
        inference: Inference,
        request: ChatRequest,
        plans: list[tuple[ModelSpec, int, int]],
        decision: RouteDecision,
        *,
        user_id: int,
        request_id: str,
        hold_id: int,
        endpoint: str,
        stream: bool,
        api_key_id: int | None,
        started: float,
    ) -> None:
        self._inference = inference
        self.request = request
        self._plans = plans
        self.decision = decision
        self.user_id = user_id
        self.request_id = request_id
        self.hold_id = hold_id
        self.endpoint = endpoint
        self.stream = stream
        self.api_key_id = api_key_id
        self._started = started
        self.spec, self.prompt_tokens, self.max_output_tokens = plans[0]
        self.finish_reason: str = "stop"
        self._reported: Usage | None = None
        self._text: list[str] = []  # produced text, counted when the provider reports no usage
        self._tool_text: list[str] = []
        self._first_at: float | None = None
        self._last_at: float | None = None
        self._settled = False
        self._delivered: tuple[float | None, Usage, int] | None = None  # (output time, usage, charge)
        self.attempts: list[dict[str, Any]] = []

    @property
    def model(self) -> ModelSpec:
        return self.spec

    async def events(self) -> AsyncIterator[StreamEvent]:
        """The provider's events. While nothing has been produced, a failure is retried (per the
        retry policy) and then falls back to the next candidate, all under the same hold."""
        inference = self._inference
        last_error: UpstreamError | None = None
        for spec, prompt_tokens, max_out in self._plans:
            self.spec, self.prompt_tokens, self.max_output_tokens = spec, prompt_tokens, max_out
            self.request.max_tokens = max_out
            provider = inference.provider_for(spec)
            breaker = inference.breakers[spec.provider]
            attempt = 0
            while True:
                if not breaker.allow(self.user_id):
                    wait = breaker.retry_in_s(self.user_id)
                    last_error = ServiceUnavailable(
                        f"The model `{spec.name}` is unavailable right now: its provider `{spec.provider}` is "
                        f"skipped because {breaker.reason(self.user_id)}. Retry in {max(1, round(wait))} s.",
                        retry_after_s=wait,
                    )
                    self.attempts.append({"model": spec.name, "outcome": "skipped", "error": "circuit open"})
                    break
                attempt += 1
                try:
                    async for event in provider.stream(spec, self.request):
                        if isinstance(event, TextDelta):
                            if event.text:
                                self._mark_output()
                                self._text.append(event.text)
                        elif isinstance(event, ToolCallDelta):
                            self._mark_output()
                            self._tool_text.append((event.name or "") + event.arguments)
                        elif isinstance(event, Finish):
                            self.finish_reason = event.reason
                            if self._first_at is not None:  # decoding ran until here
                                self._last_at = time.perf_counter()
                        elif isinstance(event, UsageReport):
                            self._reported = event.usage
                            continue
                        yield event
                except UpstreamError as exc:
                    breaker.record_failure(self.user_id, provider_fault=_provider_fault(exc))
                    self.attempts.append({"model": spec.name, "outcome": "error", "error": exc.message})
                    if self._first_at is not None or not exc.retryable:
                        raise
                    last_error = exc
                    delay = inference.retry_policy.delay_before_retry(exc, attempt, inference._rng)
                    if delay is None:
                        log.warning("model %s failed before output (%s); trying the next candidate", spec.name, exc.message)
                        break
                    await asyncio.sleep(delay)
                    continue
                except (SwitchboardError, asyncio.CancelledError, GeneratorExit):
                    raise
                except Exception as exc:  # a provider bug must still reach the client as a clean error
                    log.exception("provider %s raised unexpectedly", spec.provider)
                    raise UpstreamError(f"provider {spec.provider} failed: {type(exc).__name__}", retryable=False) from exc
                breaker.record_success(self.user_id)
                self.attempts.append({"model": spec.name, "outcome": "ok"})
                return
        assert last_error is not None
        raise last_error

    def _mark_output(self) -> None:
        now = time.perf_counter()
        if self._first_at is None:
            self._first_at = now
        self._last_at = now

    # -- metering -------------------------------------------------------------------------
    def usage(self) -> Usage:
        """The provider's own figures when it gave them; otherwise our count of what was produced."""
        if self._reported is not None:
            return self._reported
        if self._first_at is None:
            return Usage()  # nothing produced: nothing to charge
        provider = self._inference.provider_for(self.spec)
        completion = provider.count_text_tokens(self.spec, "".join(self._text) + "".join(self._tool_text))
        return Usage(prompt_tokens=self.prompt_tokens, completion_tokens=completion)

    def _metering(self, outcome: str, error: str | None = None) -> tuple[Metering, dict[str, Any]]:
        usage = self.usage()
        cost = self.spec.cost_usd(usage)
        charge = usd_to_ucr(cost, self._inference.usd_per_credit)
        now = time.perf_counter()
        ttft = (self._first_at - self._started) * 1000 if self._first_at is not None else None
        tps = None
        if self._first_at is not None and self._last_at is not None and usage.completion_tokens > 1:
            span = self._last_at - self._first_at
            tps = (usage.completion_tokens - 1) / span if span > 0 else None
        route = dict(self.decision.explanation)
        if len(self.attempts) > 1 or (self.attempts and self.attempts[-1]["outcome"] != "ok"):
            route["attempts"] = self.attempts
        metering = Metering(
            request_id=self.request_id, model=self.spec.name, provider=self.spec.provider, usage=usage,
            cost_usd=cost, charged_ucr=charge, available_ucr=0, outcome=outcome, ttft_ms=ttft,
            decode_tokens_per_s=tps, latency_ms=(now - self._started) * 1000, route=route,
        )
        return metering, self._usage_row(metering, error)

    def _usage_row(self, m: Metering, error: str | None = None) -> dict[str, Any]:
        return {
            "request_id": self.request_id, "api_key_id": self.api_key_id, "endpoint": self.endpoint,
            "model": m.model, "provider": m.provider, "stream": self.stream, "outcome": m.outcome,
            "error": error, "prompt_tokens": m.usage.prompt_tokens,
            "cached_prompt_tokens": m.usage.cached_prompt_tokens, "cache_write_tokens": m.usage.cache_write_tokens,
            "completion_tokens": m.usage.completion_tokens, "reasoning_tokens": m.usage.reasoning_tokens,
            "ttft_ms": m.ttft_ms, "decode_tokens_per_s": m.decode_tokens_per_s, "latency_ms": m.latency_ms,
            "cost_usd": usd_text(m.cost_usd), "route": json.dumps(m.route, separators=(",", ":")),
        }

    def _claim(self) -> bool:
        if self._settled:
            return False
        self._settled = True
        self._inference.streams.pop(self.hold_id, None)
        return True

    def delivered(self) -> tuple[Usage, int] | None:
        """What settling now as cancelled would charge (usage, micro-credits); None while nothing
        was produced. The process records it every few seconds (inference.heartbeat): should it
        die, the hold is charged that. Worked out again only after new output."""
        if self._first_at is None:
            return None
        if self._delivered is None or self._delivered[0] != self._last_at:
            metering, _ = self._metering("cancelled")
            self._delivered = (self._last_at, metering.usage, metering.charged_ucr)
        return self._delivered[1], self._delivered[2]

    def _settlement(self, metering: Metering, row: dict[str, Any]) -> SettleOp:
        """The ledger work that charges `metering` and writes `row`, for the runner."""
        return SettleOp(self._inference.ledger, self.user_id, self.hold_id, metering.charged_ucr, row)

    async def settle(self, outcome: str = "ok", error: str | None = None) -> Metering:
        """Charge what was produced and write the usage record; wait for the commit."""
        metering, row = self._metering(outcome, error)
        if not self._claim():
            return metering
        future = self._inference.runner.submit(self._settlement(metering, row), order_key=self.user_id)
        # Shielded: once queued the settlement happens even if this task is cancelled.
        if outcome == "ok" and metering.ttft_ms is not None:
            self._inference.observe_latency(metering.model, metering.ttft_ms)
        result: SettleResult = await asyncio.shield(asyncio.wrap_future(future))
        metering.charged_ucr = result.charged_ucr
        metering.available_ucr = result.available_ucr
        return metering

    def settle_in_background(self, outcome: str = "cancelled", error: str | None = None) -> None:
        """Settle without waiting: the client is gone, but what it received is still charged."""
        if not self._claim():
            return
        metering, row = self._metering(outcome, error)
        self._inference.runner.submit_nowait(self._settlement(metering, row), order_key=self.user_id)

    async def run_to_end(self) -> tuple[str, list[dict[str, Any]], Metering]:
        """For non-streaming clients: the whole answer (text, tool calls), then settlement."""
        tool_calls: dict[int, dict[str, Any]] = {}
        try:
            async for event in self.events():
                if isinstance(event, ToolCallDelta):
                    call = tool_calls.setdefault(event.index, {"id": None, "name": "", "arguments": ""})
                    call["id"] = call["id"] or event.id
                    call["name"] += event.name or ""
                    call["arguments"] += event.arguments
        except SwitchboardError as exc:
            await self.settle("error", exc.message)
            raise
        except BaseException:  # cancelled (client gone): charge what was produced, without waiting
            self.settle_in_background("cancelled")
            raise
        metering = await self.settle("ok")
        return "".join(self._text), [tool_calls[i] for i in sorted(tool_calls)], metering
