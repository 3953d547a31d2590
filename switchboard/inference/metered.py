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
from typing import Any, NamedTuple

from switchboard.billing.ledger import HoldOp, HoldResult, Ledger, SettleOp, SettleResult
from switchboard.core.catalog import ModelSpec
from switchboard.core.errors import (
    ContextTooLong,
    CreditLimitReached,
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
from switchboard.providers.prompt_tokens import is_heavy
from switchboard.providers.tokenizers import utf8_len
from switchboard.router.router import RouteDecision, Router
from switchboard.store.runner import TransactionRunner

log = logging.getLogger(__name__)

# The shortest answer worth running when the balance cannot cover a default-length one.
MIN_AFFORDABLE_OUTPUT = 16


class Plan(NamedTuple):
    """One candidate model for a request, as counted for it."""

    spec: ModelSpec
    prompt_tokens: int  # at least what the vendor bills: the hold and the context window use it
    max_out: int  # the output cap sent upstream and enforced while reading
    prompt_estimate: int  # the best count: charged when the vendor reports no usage


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
    not_charged_ucr: int = 0  # the cost beyond what the user is charged: the operator's loss


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

    def _plan_candidate(self, spec: ModelSpec, request: ChatRequest) -> Plan:
        """The plan for this model, or ContextTooLong. The prompt is everything the vendor bills
        (messages, tools, response format, images: Provider.count_prompt), for the hold and the
        context window alike."""
        prompt = self.provider_for(spec).count_prompt(spec, request)
        room = spec.context_window - prompt.bound
        if room <= 0:
            raise ContextTooLong(
                f"This model's maximum context length is {spec.context_window} tokens. However, your "
                f"messages, tools and response format resulted in {prompt.bound} tokens. Please reduce "
                f"the length of the messages or tool definitions.",
                param="messages",
            )
        limit = spec.max_output_tokens or room
        # Without max_tokens, the hold covers `default_max_output_tokens`, not the model's whole
        # output limit (up to a million tokens for some): one request must not reserve dollars.
        wanted = request.max_tokens if request.max_tokens is not None else self.default_max_output_tokens
        return Plan(spec, prompt.bound, max(1, min(wanted, limit, room)), min(prompt.estimate, prompt.bound))

    async def _plan(self, chain: tuple[ModelSpec, ...], request: ChatRequest) -> list[Plan]:
        """`_plan_chain`, on a worker thread when counting the request takes milliseconds (a long
        prompt or large images), so that it never stalls the event loop."""
        if is_heavy(request):
            return await asyncio.to_thread(self._plan_chain, chain, request)
        return self._plan_chain(chain, request)

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
        limit_ucr: int | None = None,
    ) -> "MeteredCall":
        """Admit a request: route, count, hold. `limit_ucr` caps the hold below what the balance
        allows (an assistant turn's credit limit): a request without max_tokens is shortened to
        fit it, one that cannot fit even shortened raises CreditLimitReached."""
        started = time.perf_counter()
        request.account_id = user_id
        decision = self.router.decide(request, plan=plan, health=UserHealth(self.breakers, user_id, self.latency_ms))
        plans = await self._plan(decision.chain, request)
        held, hold_ucr = await self._hold(plans, request, user_id, request_id, limit_ucr)
        if not held.ok and not held.duplicate and decision.degrade:
            # Degrade before refusing: the best cheaper model the balance can cover.
            for spec in decision.degrade:
                try:
                    cheaper = await self._plan((spec,), request)
                except SwitchboardError:
                    continue
                if self._worst_ucr(cheaper) <= held.available_ucr:
                    explanation = {**decision.explanation, "model": spec.name,
                                   "degraded": f"balance covers {spec.name}, not {decision.model.name}"}
                    decision = RouteDecision((spec,), explanation)
                    plans = cheaper
                    held, hold_ucr = await self._hold(plans, request, user_id, request_id, limit_ucr)
                    break
        if held.duplicate:
            raise DuplicateRequest(f"request id {request_id!r} was already used", param="idempotency-key")
        if not held.ok and held.cap is not None:
            raise SpendingCapReached(held.cap.cap, held.cap.cap_ucr, held.cap.spent_ucr, held.needed_ucr)
        if not held.ok:
            raise InsufficientCredits(held.available_ucr, held.needed_ucr)
        assert held.hold_id is not None
        if held.needed_ucr < hold_ucr:
            plans = [p._replace(max_out=self._affordable_output(p.spec, p.prompt_tokens, p.max_out, held.needed_ucr))
                     for p in plans]
        call = MeteredCall(
            self, request, plans, decision, user_id=user_id, request_id=request_id, hold_id=held.hold_id,
            endpoint=endpoint, stream=stream, api_key_id=api_key_id, started=started, hold_ucr=held.needed_ucr,
        )
        if stream:
            self.streams[held.hold_id] = call
        return call

    def _plan_chain(self, chain: tuple[ModelSpec, ...], request: ChatRequest) -> list[Plan]:
        """The plan of each candidate that can serve the request."""
        needed = request.needed_abilities()
        usable = [spec for spec in chain if not spec.lacks(needed)] if needed else list(chain)
        if not usable:
            first = chain[0]
            missing = ", ".join(sorted(first.lacks(needed)))
            raise InvalidRequest(
                f"The model `{first.name}` does not support {missing}. Choose a model that does "
                f"(`GET /v1/models` lists each model's abilities).", param="model",
            )
        plans: list[Plan] = []
        too_long: ContextTooLong | None = None
        for spec in usable:
            try:
                plans.append(self._plan_candidate(spec, request))
            except ContextTooLong as exc:
                too_long = too_long or exc
        if not plans:
            assert too_long is not None
            raise too_long
        return plans

    def _worst_ucr(self, plans: list[Plan]) -> int:
        """One hold covers every candidate of the chain: a fallback never needs a second hold."""
        return max(usd_to_ucr(spec.worst_case_usd(p, m), self.usd_per_credit) for spec, p, m, _ in plans)

    async def _hold(
        self, plans: list[Plan], request: ChatRequest, user_id: int, request_id: str, limit_ucr: int | None = None,
    ) -> tuple[HoldResult, int]:
        """Place the hold; (its result, the worst case it was sized from: a smaller hold means a
        shortened answer)."""
        hold_ucr = self._worst_ucr(plans)
        # A client that set no max_tokens gets what its balance affords (down to a short answer)
        # rather than a refusal sized to the model's largest possible output.
        min_ucr = None
        if request.max_tokens is None:
            min_ucr = max(
                usd_to_ucr(spec.worst_case_usd(p, min(m, MIN_AFFORDABLE_OUTPUT)), self.usd_per_credit)
                for spec, p, m, _ in plans
            )
        amount = hold_ucr
        if limit_ucr is not None and hold_ucr > limit_ucr:
            if min_ucr is None or min_ucr > limit_ucr:
                raise CreditLimitReached(limit_ucr, min_ucr if min_ucr is not None else hold_ucr)
            amount = limit_ucr
        first = plans[0][0].name
        future = self.runner.submit(
            HoldOp(self.ledger, user_id, request_id, amount, first, min_amount_ucr=min_ucr, process_id=self.process_id),
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
        plans: list[Plan],
        decision: RouteDecision,
        *,
        user_id: int,
        request_id: str,
        hold_id: int,
        endpoint: str,
        stream: bool,
        api_key_id: int | None,
        started: float,
        hold_ucr: int,
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
        self.hold_ucr = hold_ucr  # what was held: the most this request is ever charged
        self.spec, self.prompt_tokens, self.max_output_tokens, self.prompt_estimate = plans[0]
        # Output read so far, to stop at max_tokens whatever the upstream does with it: its
        # UTF-8 bytes, and its tokens once counting started (None: too few bytes to matter).
        self._out_bytes = 0
        self._out_tokens: int | None = None
        self._per_byte = 1.0  # the most tokens a byte of output counts as (Provider.tokens_per_byte)
        self._cut = False  # the upstream went past max_tokens: it was stopped there
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
        for spec, prompt_tokens, max_out, prompt_estimate in self._plans:
            self.spec, self.prompt_tokens, self.max_output_tokens = spec, prompt_tokens, max_out
            self.prompt_estimate = prompt_estimate
            self.request.max_tokens = max_out
            self._per_byte = inference.provider_for(spec).tokens_per_byte(spec)
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
                upstream = provider.stream(spec, self.request)
                try:
                    async for event in upstream:
                        if isinstance(event, TextDelta):
                            if event.text:
                                self._mark_output()
                                text = self._within_max_tokens(provider, event.text)
                                if text is not event.text:
                                    event = TextDelta(text)
                                self._text.append(text)
                        elif isinstance(event, ToolCallDelta):
                            self._mark_output()
                            name = event.name or ""
                            text = self._within_max_tokens(provider, name + event.arguments)
                            if len(text) < len(name) + len(event.arguments):
                                event = ToolCallDelta(event.index, event.id, event.name, text[len(name):])
                            self._tool_text.append(text)
                        elif isinstance(event, Finish):
                            self.finish_reason = event.reason
                            if self._first_at is not None:  # decoding ran until here
                                self._last_at = time.perf_counter()
                        elif isinstance(event, UsageReport):
                            self._reported = event.usage
                            continue
                        yield event
                        if self._cut:  # past max_tokens: stop reading, and say so as OpenAI does
                            break
                    if self._cut:
                        self.finish_reason = "length"
                        self._last_at = time.perf_counter()
                        yield Finish("length")
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
                finally:
                    await upstream.aclose()  # closes the upstream's response (at once when cut short)
                breaker.record_success(self.user_id)
                self.attempts.append({"model": spec.name, "outcome": "ok"})
                return
        assert last_error is not None
        raise last_error

    def _within_max_tokens(self, provider: Provider, text: str) -> str:
        """`text`, or the start of it that keeps the output within max_tokens, counted with the
        model's tokenizer (or its estimate). An upstream that ignores max_tokens is cut there
        (`_cut`): the user never receives, nor pays for, more than the hold covers. Text too
        short in bytes to reach the limit is not counted at all; then each piece is counted,
        and the whole output again only when the pieces add up past the limit (a token split
        across two pieces counts in both)."""
        self._out_bytes += utf8_len(text)
        limit = self.max_output_tokens
        if self._out_tokens is None and self._out_bytes * self._per_byte <= limit:
            return text
        count = provider.count_text_tokens
        if self._out_tokens is None:
            self._out_tokens = count(self.spec, self._produced())
        tokens = count(self.spec, text)
        if self._out_tokens + tokens <= limit:
            self._out_tokens += tokens
            return text
        produced = self._produced()
        before = count(self.spec, produced)
        self._out_tokens = count(self.spec, produced + text)
        if self._out_tokens <= limit:
            return text
        self._cut = True
        head = provider.head_of_text(self.spec, text, limit - before) if limit > before else ""
        self._out_tokens = before + count(self.spec, head)
        return head

    def _produced(self) -> str:
        return "".join(self._text) + "".join(self._tool_text)

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
        # The prompt's best count and the output's count with the model's tokenizer (or its
        # estimate), never beyond max_tokens: what the upstream sent before it stopped or was
        # stopped (a client gone, a broken stream, a cut at max_tokens).
        provider = self._inference.provider_for(self.spec)
        completion = provider.count_text_tokens(self.spec, self._produced())
        return Usage(prompt_tokens=self.prompt_estimate, completion_tokens=min(completion, self.max_output_tokens))

    def _metering(
        self, outcome: str, error: str | None = None, delivered: bool = True,
    ) -> tuple[Metering, dict[str, Any]]:
        """What to charge: the cost of the usage, never more than the hold. Whatever is beyond it
        (a vendor that billed more than we could count), and the whole cost of an answer that was
        never delivered (`delivered` False), is the operator's loss."""
        usage = self.usage()
        cost = self.spec.cost_usd(usage)
        cost_ucr = usd_to_ucr(cost, self._inference.usd_per_credit)
        charge = min(cost_ucr, self.hold_ucr) if delivered else 0
        now = time.perf_counter()
        ttft = (self._first_at - self._started) * 1000 if self._first_at is not None else None
        tps = None
        if self._first_at is not None and self._last_at is not None and usage.completion_tokens > 1:
            span = self._last_at - self._first_at
            tps = (usage.completion_tokens - 1) / span if span > 0 else None
        route = dict(self.decision.explanation)
        if route.get("model", self.spec.name) != self.spec.name:  # a fallback ran: name it, as the header does
            route["fallback_from"], route["model"] = route["model"], self.spec.name
        if len(self.attempts) > 1 or (self.attempts and self.attempts[-1]["outcome"] != "ok"):
            route["attempts"] = self.attempts
        if self._cut:
            route["cut_at_max_tokens"] = self.max_output_tokens
        if cost_ucr > charge:
            route["not_charged_ucr"] = cost_ucr - charge
            route["not_charged"] = ("beyond the hold" if delivered else "nothing was delivered") + ": the operator's loss"
        metering = Metering(
            request_id=self.request_id, model=self.spec.name, provider=self.spec.provider, usage=usage,
            cost_usd=cost, charged_ucr=charge, available_ucr=0, outcome=outcome, ttft_ms=ttft,
            decode_tokens_per_s=tps, latency_ms=(now - self._started) * 1000, route=route,
            not_charged_ucr=cost_ucr - charge,
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
        return SettleOp(self._inference.ledger, self.user_id, self.hold_id, metering.charged_ucr, row,
                        loss_ucr=metering.not_charged_ucr)

    async def settle(self, outcome: str = "ok", error: str | None = None, *, delivered: bool = True) -> Metering:
        """Charge what was produced and write the usage record; wait for the commit. Not
        `delivered`: the client received nothing (a non-streaming answer that failed), so
        nothing is charged and what the vendor billed is the operator's loss."""
        metering, row = self._metering(outcome, error, delivered)
        if not self._claim():
            return metering
        future = self._inference.runner.submit(self._settlement(metering, row), order_key=self.user_id)
        # Shielded: once queued the settlement happens even if this task is cancelled.
        if outcome == "ok" and metering.ttft_ms is not None:
            self._inference.observe_latency(metering.model, metering.ttft_ms)
        result: SettleResult = await asyncio.shield(asyncio.wrap_future(future))
        metering.charged_ucr = result.charged_ucr
        metering.available_ucr = result.available_ucr
        metering.not_charged_ucr = result.loss_ucr
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
            # The client gets an error and no answer: nothing is charged (README's promise).
            await self.settle("error", exc.message, delivered=False)
            raise
        except BaseException:  # cancelled (client gone): charge what was produced, without waiting
            self.settle_in_background("cancelled")
            raise
        metering = await self.settle("ok")
        return "".join(self._text), [tool_calls[i] for i in sorted(tool_calls)], metering
