"""One assistant turn: model, tool calls, results, model, ... until an answer or a limit.

Every model call is the metered path (`Inference.begin`: routing, hold, settlement, usage
record); there is no other way to call a model. Each call's hold is capped by what is left of
the turn's credit limit (`limit_ucr`), each tool's hold too, so a turn never spends more than
its limit: it stops and says so first. Other limits: model calls (steps), wall time, and the
same tool call (name and arguments) repeated. Whatever happens, what was said and charged
is stored, and the user is told plainly how the turn ended.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import orjson
from sqlalchemy import Connection

from switchboard.assistant import context
from switchboard.assistant.charges import run_charged
from switchboard.assistant.conversations import Conversation, Message
from switchboard.assistant.events import TextDelta, ToolFinished, ToolStarted, Totals, TurnCompleted, TurnEvent, TurnFailed
from switchboard.assistant.lease import Held
from switchboard.assistant.memory_hooks import MemoryHooks
from switchboard.assistant.profile import Profile
from switchboard.assistant.services import AssistantServices
from switchboard.assistant.tools.registry import Tool, ToolContext, ToolFailed, ToolRegistry, ToolResult, parse_arguments
from switchboard.core.catalog import ModelSpec
from switchboard.core.config import Settings
from switchboard.core.errors import (
    CreditLimitReached,
    InsufficientCredits,
    SpendingCapReached,
    SwitchboardError,
)
from switchboard.core.ids import new_id
from switchboard.core.money import credits_to_ucr, format_credits
from switchboard.core.types import ChatMessage, ChatRequest, TextDelta as ModelText, ToolCall, ToolCallDelta
from switchboard.inference.metered import Metering
from switchboard.inference.resilience import UserHealth
from switchboard.providers.tokenizers import utf8_len

log = logging.getLogger(__name__)

_OUTPUT_RESERVE = 1024  # tokens of the window kept for the reply when fitting history
_PROBE_TTL_S = 5.0
_PROBES: dict[tuple[Any, ...], tuple[float, ModelSpec, bool]] = {}  # see Turn._tools_and_model
_MARGIN = 64
_PER_TEXT_FRAMING = 8  # a message's role and framing, more than any vendor counts
_TOOLS_FRAMING = 600  # the tools block's framing (Anthropic's is about 400 tokens), and more
_REMINDER_INTENT = re.compile(r"\bremind(?:er)?s?\b|\brappel", re.IGNORECASE)
REMIND_HINT = "(To set a reminder here, type /remind followed by when and what, e.g. /remind in 10 minutes stretch.)"


@dataclass(frozen=True, slots=True)
class TurnLimits:
    credits_ucr: int
    steps: int
    seconds: float
    repeats: int

    @classmethod
    def for_plan(cls, settings: Settings, plan: str) -> TurnLimits:
        config = settings.plans.get(plan) or settings.plans["free"]
        return cls(credits_to_ucr(config.turn_credits), config.turn_steps, config.turn_seconds,
                   settings.assistant.max_repeated_tool_calls)


class _Stop(Exception):
    """The turn ends early, for a reason the user is told."""

    def __init__(self, reason: str, text: str) -> None:
        super().__init__(text)
        self.reason, self.text = reason, text


class Turn:
    def __init__(self, services: AssistantServices, registry: ToolRegistry, profile: Profile,
                 conversation: Conversation, history: list[Message], *, now: datetime | None = None,
                 memory_hooks: MemoryHooks | None = None, message: str | None = None,
                 lease: Held[Any] | None = None) -> None:
        self.services = services
        self.history = history  # the newest messages after the summary, the user's new one last
        self.lease = lease  # the conversation's, released by the turn's last write
        self.memory_hooks = memory_hooks  # long-term memory's recall (None: none)
        self.message = message  # the user's message this turn answers (already stored)
        self.runtime = services.runtime
        self.settings = services.runtime.settings
        self.registry = registry
        self.profile = profile
        self.conversation = conversation
        self.now = now or datetime.now(timezone.utc)
        self.limits = TurnLimits.for_plan(self.settings, profile.plan)
        self.totals = Totals()
        self.turn_id = "turn-" + new_id()
        self._started = time.monotonic()
        self._calls: Counter[tuple[str, str]] = Counter()
        self._said: list[str] = []  # text shown to the user so far, kept if the turn fails

    @property
    def _left_ucr(self) -> int:
        return max(0, self.limits.credits_ucr - self.totals.charged_ucr)

    def _left_s(self) -> float:
        return self.limits.seconds - (time.monotonic() - self._started)

    # -- the loop -----------------------------------------------------------------------------
    async def run(self) -> AsyncIterator[TurnEvent]:
        """The turn for the conversation's newest user message (already stored)."""
        uid, conv = self.profile.user_id, self.conversation
        try:
            tools, spec = self._tools_and_model()
            messages = await self._context(tools, spec)
            step = 0
            while True:
                step += 1
                if step > self.limits.steps:
                    raise _Stop("steps", f"I stopped here: this turn reached its limit of {self.limits.steps} steps.")
                if self._left_s() <= 0:
                    raise _Stop("time", "I stopped here: this turn ran out of time.")
                request = ChatRequest(model=conv.model or "auto", messages=messages,
                                      tools=[t.spec() for t in tools] or None)
                text, calls, metering = None, [], None
                async for event in self._model_call(request):
                    if isinstance(event, TextDelta):
                        yield event
                    else:
                        text, calls, metering = event
                assert metering is not None
                if not calls:
                    reply = (text or "").strip() or "(no answer)"
                    if not tools and _REMINDER_INTENT.search(self._user_text(messages)):
                        reply += "\n\n" + REMIND_HINT
                        yield TextDelta("\n\n" + REMIND_HINT)
                    message = await self._store("assistant", reply, last=True, model=metering.model,
                                                request_ids=[metering.request_id], credits_ucr=metering.charged_ucr)
                    yield TurnCompleted(message, await self._final_totals(known=True))
                    return
                await self._store("assistant", text, tool_calls=calls, model=metering.model,
                                  request_ids=[metering.request_id], credits_ucr=metering.charged_ucr)
                messages.append(ChatMessage("assistant", text or "", tool_calls=[
                    ToolCall(c["id"], c["name"], c["arguments"]) for c in calls]))
                for call in calls:
                    async for event in self._tool_call(call, tools, messages):
                        yield event
        except _Stop as stop:
            note = stop.text
            prefix = "\n\n" if self._said else ""
            yield TextDelta(prefix + note)
            message = await self._store("assistant", "".join(self._said) + prefix + note, kind="text", last=True)
            yield TurnCompleted(message, await self._final_totals(), stopped=stop.reason)
        except (InsufficientCredits, SpendingCapReached) as exc:
            yield await self._failed(exc, _credit_words(exc))
        except SwitchboardError as exc:
            yield await self._failed(exc, f"Sorry, this turn failed: {exc.message}")
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug must still end the turn with a stored, plain message
            log.exception("assistant turn failed for user %s in %s", uid, conv.id)
            yield await self._failed(SwitchboardError("internal error"), "Sorry, something went wrong on our side.")

    def _tools_and_model(self) -> tuple[list[Tool], ModelSpec]:
        """The tools this turn offers and the model it will most likely run on (for fitting).
        Remembered for a few seconds per plan, pinned model and router: the metered call routes
        the real request anyway, this only sizes the history."""
        tools = self.registry.for_plan(self.profile.plan)
        inference = self.runtime.inference
        key = (id(inference.router), self.profile.plan, self.conversation.model, tuple(t.name for t in tools))
        known = _PROBES.get(key)
        if known is not None and known[0] > time.monotonic():
            return (tools if known[2] else []), known[1]
        tools, spec = self._probe(tools)
        if len(_PROBES) > 256:
            _PROBES.clear()
        _PROBES[key] = (time.monotonic() + _PROBE_TTL_S, spec, bool(tools))
        return tools, spec

    def _probe(self, tools: list[Tool]) -> tuple[list[Tool], ModelSpec]:
        inference = self.runtime.inference
        health = UserHealth(inference.breakers, self.profile.user_id, inference.latency_ms)
        probe_text = "hello"
        probe = ChatRequest(model=self.conversation.model or "auto", messages=[ChatMessage("user", probe_text)],
                            tools=[t.spec() for t in tools] or None)
        try:
            decision = inference.router.decide(probe, plan=self.profile.plan, health=health)
        except SwitchboardError:
            probe.tools = None
            decision = inference.router.decide(probe, plan=self.profile.plan, health=health)
        spec = decision.model
        if not probe.tools or spec.lacks(frozenset({"tools"})):
            tools = []
        return tools, spec

    async def _context(self, tools: list[Tool], spec: ModelSpec) -> list[ChatMessage]:
        """System prompt, summary, memories and the newest history that fits `spec`'s window,
        counted as the metered path counts it (the bound it holds for), so that what is sent is
        never refused. When a bound from the text's size alone shows that everything fits, as
        it usually does, nothing is counted at all."""
        conv = self.conversation
        provider = self.runtime.inference.provider_for(spec)
        per_byte = provider.tokens_per_byte(spec)
        specs = [t.spec() for t in tools] or None

        def upper(text: str) -> int:  # at least what `count` says, from the size alone
            return math.ceil(per_byte * utf8_len(text)) + _PER_TEXT_FRAMING

        def count(text: str) -> int:
            return provider.count_prompt(spec, ChatRequest(spec.name, [ChatMessage("user", text)])).bound

        def whole(messages: list[ChatMessage]) -> int:
            return provider.count_prompt(spec, ChatRequest(spec.name, messages, tools=specs)).bound

        history = self.history
        notes = await self._recall(self.message, spec, upper)
        system = context.system_prompt(self.settings.assistant.system_prompt, self.profile, self.now, tools=bool(tools))
        reserve = min(_OUTPUT_RESERVE, spec.max_output_tokens or _OUTPUT_RESERVE)

        def head_with(summary: str | None) -> list[ChatMessage]:
            return ([ChatMessage("system", system)] + ([context.summary_message(summary)] if summary else [])
                    + ([context.memory_message(notes)] if notes else []))

        def fitted_after(head: list[ChatMessage]) -> context.Fitted:
            texts = [m.text() for m in head] + [context.text_of(m) for m in history]
            tool_text = orjson.dumps([[t.name, t.description, t.parameters] for t in tools]).decode() if tools else ""
            quick = sum(upper(t) for t in texts) + upper(tool_text) + _TOOLS_FRAMING
            if quick + reserve + _MARGIN <= spec.context_window:
                return context.fit(history, sys.maxsize, upper)  # all of it fits: nothing to count
            fitted = context.fit(history, max(0, spec.context_window - reserve - whole(head) - _MARGIN), count)
            # The sum of per-message counts is close to the whole's; make sure of the whole.
            while len(fitted.messages) > 1 and whole(head + fitted.messages) + reserve > spec.context_window:
                fitted = context.fit(history, max(0, fitted.tokens - count(fitted.messages[0].text()) - 1), count)
            return fitted

        head = head_with(conv.summary)
        fitted = fitted_after(head)
        if fitted.dropped:
            summary = await self._summarise(conv.summary, fitted.dropped)
            if summary:  # the summary takes room too: fit again around it
                head = head_with(summary)
                fitted = fitted_after(head)
        if not fitted.messages and history:  # not even the newest message fits: send it alone, let the count refuse
            fitted.messages = [context.to_chat(history[-1])]
        return head + fitted.messages

    async def _recall(self, message: str | None, spec: ModelSpec, count: Callable[[str], int]) -> list[str]:
        """Long-term memory's notes for the user's message, within `memory.recall_tokens`
        (at most an eighth of the window)."""
        if not message or self.memory_hooks is None:
            return []
        budget = min(self.settings.memory.recall_tokens, spec.context_window // 8)
        return await self.memory_hooks.notes(self.profile, self.conversation.id, message, self.now, budget, count)

    async def _summarise(self, previous: str | None, dropped: list[Message]) -> str | None:
        """Fold the messages that no longer fit into the conversation's summary, with the
        cheapest model this plan may use, metered and charged like any other call."""
        uid, conv = self.profile.user_id, self.conversation
        words = self.settings.assistant.summary_words
        cheapest = self.runtime.inference.router.cheapest(self.profile.plan)
        request = ChatRequest(model=cheapest.name, max_tokens=words * 3, messages=[
            ChatMessage("system", "You summarise conversations faithfully and briefly."),
            ChatMessage("user", context.summary_request_text(previous, dropped, words)),
        ])
        try:
            call = await self.runtime.inference.begin(
                request, user_id=uid, request_id="sum-" + new_id(), endpoint="assistant.summary", stream=False,
                plan=self.profile.plan, limit_ucr=self._left_ucr)
            text, _, metering = await call.run_to_end()
        except SwitchboardError as exc:
            log.warning("could not summarise conversation %s: %s", conv.id, exc.message)
            return None
        self._count(metering)
        text = text.strip()
        if not text:
            return None
        upto = dropped[-1].id
        await self.services.write(uid, lambda c: self.services.conversations.set_summary(c, uid, conv.id, text, upto))
        conv.summary, conv.summary_upto = text, upto
        return text

    async def _model_call(self, request: ChatRequest) -> AsyncIterator[Any]:
        """One metered model call, streamed: TextDelta events, then (text, tool calls, metering)."""
        uid = self.profile.user_id
        request_id = "turn-" + new_id()
        try:
            call = await self.runtime.inference.begin(
                request, user_id=uid, request_id=request_id, endpoint="assistant", stream=True,
                plan=self.profile.plan, limit_ucr=self._left_ucr)
        except CreditLimitReached as exc:
            raise _Stop("credits", self._limit_words(exc)) from None
        parts: list[str] = []
        calls: dict[int, dict[str, str]] = {}
        settled = False
        try:
            async with asyncio.timeout(max(0.1, self._left_s())):
                async for event in call.events():
                    if isinstance(event, ModelText) and event.text:
                        parts.append(event.text)
                        self._said.append(event.text)
                        yield TextDelta(event.text)
                    elif isinstance(event, ToolCallDelta):
                        slot = calls.setdefault(event.index, {"id": "", "name": "", "arguments": ""})
                        slot["id"] = slot["id"] or (event.id or "")
                        slot["name"] += event.name or ""
                        slot["arguments"] += event.arguments
            metering = await call.settle("ok")
            settled = True
        except TimeoutError:
            metering = await call.settle("cancelled", "the turn's time limit")
            settled = True
            self._count(metering)
            raise _Stop("time", "I stopped here: this turn ran out of time.") from None
        except SwitchboardError as exc:
            metering = await call.settle("error", exc.message)
            settled = True
            self._count(metering)
            raise
        finally:
            if not settled:
                call.settle_in_background("cancelled")
        self._count(metering)
        tool_calls = [{"id": c["id"] or f"call_{new_id()[:24]}", "name": c["name"], "arguments": c["arguments"] or "{}"}
                      for _, c in sorted(calls.items())]
        yield ("".join(parts), tool_calls, metering)

    async def _tool_call(self, call: dict[str, str], tools: list[Tool], messages: list[ChatMessage]
                         ) -> AsyncIterator[TurnEvent]:
        uid = self.profile.user_id
        name, arguments = call["name"], call["arguments"]
        key = (name, _canonical(arguments))
        self._calls[key] += 1
        if self._calls[key] > self.limits.repeats:
            raise _Stop("loop", f"I stopped here: I was calling {name} with the same arguments again and again, "
                                f"which would not get anywhere.")
        tool = next((t for t in tools if t.name == name), None)
        yield ToolStarted(call["id"], name, arguments)
        charge_ucr, outcome = 0, "error"
        request_id: str | None = None
        if tool is None:
            content = f"error: there is no tool named {name!r}"
        else:
            ctx = ToolContext(uid, self.profile.plan, self.profile.name, self.profile.time_zone, self.conversation.id,
                              self.now, self.services, turn_id=self.turn_id,
                              credits_left_ucr=max(0, self._left_ucr - tool.price_ucr(tool.max_units)))
            timeout = max(0.1, min(self.settings.assistant.tool_timeout_s, self._left_s()))

            async def run() -> ToolResult:
                assert tool is not None
                async with asyncio.timeout(timeout):
                    return await tool.handler(ctx, parse_arguments(arguments))

            try:
                result, charge = await run_charged(self.runtime, uid, tool, run, limit_ucr=self._left_ucr)
            except CreditLimitReached as exc:
                yield ToolFinished(call["id"], name, "refused", 0)
                raise _Stop("credits", self._limit_words(exc, f"running {name}")) from None
            except TimeoutError:
                result, charge = ToolFailed(f"{name} took too long and was stopped"), None
            if isinstance(result, ToolFailed):
                content = f"error: {result}"
            else:
                content, outcome = result.content, "ok"
                # Its work's own requests (a sandbox's model calls), settled already: the turn's too.
                self.totals.charged_ucr += result.settled_ucr
                self.totals.request_ids.extend(result.settled_request_ids)
            if charge is not None:
                charge_ucr, request_id = charge.charged_ucr, charge.request_id
                self.totals.charged_ucr += charge_ucr
                if request_id:
                    self.totals.request_ids.append(request_id)
            self.profile = _with_zone(self.profile, ctx.time_zone)
        await self._store("tool", content, tool_call_id=call["id"], name=name,
                          request_ids=[request_id] if request_id else None, credits_ucr=charge_ucr)
        messages.append(context.to_chat(Message(0, "", self.conversation.id, "tool", "tool", content, 0,
                                                tool_call_id=call["id"], name=name)))
        yield ToolFinished(call["id"], name, outcome, charge_ucr)

    def _limit_words(self, exc: CreditLimitReached, what: str = "the next step") -> str:
        return (f"I stopped here: {what} could cost up to {format_credits(exc.needed_ucr)} credits, more than the "
                f"{format_credits(exc.limit_ucr)} left of this turn's limit of "
                f"{format_credits(self.limits.credits_ucr)} credits.")

    # -- bookkeeping ----------------------------------------------------------------------------
    def _count(self, metering: Metering) -> None:
        self.totals.charged_ucr += metering.charged_ucr
        self.totals.remaining_ucr = metering.available_ucr
        self.totals.request_ids.append(metering.request_id)
        if metering.model not in self.totals.models and metering.usage.total_tokens:
            self.totals.models.append(metering.model)

    async def _final_totals(self, *, known: bool = False) -> Totals:
        """The turn's totals with the balance left: as the last settlement reported it (`known`:
        the turn ended with a model call, nothing was charged after it), else read."""
        if known and self.totals.remaining_ucr is not None:
            return self.totals
        uid = self.profile.user_id
        balance = await self.services.read(uid, lambda c: self.runtime.ledger.balance(c, uid))
        self.totals.remaining_ucr = balance.available_ucr
        return self.totals

    async def _store(self, role: str, content: str | None, *, kind: str = "text", last: bool = False,
                     **extra: Any) -> Message:
        """Store a message of the turn; the `last` one releases the conversation's lease in its
        transaction."""
        uid, conv_id = self.profile.user_id, self.conversation.id
        conversations = self.services.conversations

        def work(c: Connection) -> Message:
            return conversations.add_message(c, uid, conv_id, role=role, kind=kind, content=content, **extra)

        if not last or self.lease is None:
            return await self.services.write(uid, work)
        return await self.lease.last_write(lambda w: self.services.write(uid, w), work)

    async def _failed(self, exc: SwitchboardError, words: str) -> TurnFailed:
        said = "".join(self._said)
        text = f"{said}\n\n{words}" if said else words
        message = await self._store("assistant", text, kind="error", last=True)
        return TurnFailed(message, words, exc.code or "error", exc.status, await self._final_totals())

    @staticmethod
    def _user_text(messages: list[ChatMessage]) -> str:
        return next((m.text() for m in reversed(messages) if m.role == "user"), "")


def _canonical(arguments: str) -> str:
    try:
        return json.dumps(json.loads(arguments or "{}"), sort_keys=True, separators=(",", ":"))
    except ValueError:
        return arguments


def _with_zone(profile: Profile, time_zone: str) -> Profile:
    if profile.time_zone == time_zone:
        return profile
    return Profile(profile.user_id, profile.email, profile.plan, profile.name, time_zone)


def _credit_words(exc: SwitchboardError) -> str:
    if isinstance(exc, SpendingCapReached):
        return f"I can't answer right now: {exc.message} Type /balance to see your balance and caps."
    return ("You're out of credits, so I can't answer this one. Type /balance to see your balance and when your "
            "credits renew; top-up packs are available from your account.")
