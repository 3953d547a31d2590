"""Routing decisions on a small synthetic catalog: cheap where it can be, strong where it must be."""

from __future__ import annotations

from decimal import Decimal

import pytest

from switchboard.core.catalog import ModelSpec
from switchboard.core.config import RoutingConfig
from switchboard.core.errors import InvalidRequest, ModelNotFound, ServiceUnavailable
from switchboard.core.types import ChatMessage, ChatRequest, ImagePart, TextPart, ToolSpec
from switchboard.router.router import Router
from switchboard.router.tasks import classify

ALL = frozenset({"tools", "vision", "json", "reasoning"})


def spec(name: str, provider: str, inp: str, out: str, window: int = 100_000, abilities: frozenset[str] = ALL) -> ModelSpec:
    return ModelSpec(name, provider, name, window, Decimal(inp), Decimal(out), abilities=abilities)


CATALOG = {s.name: s for s in [
    spec("tiny", "a", "0.05", "0.2", window=8_000, abilities=frozenset({"tools"})),
    spec("small", "b", "0.1", "0.4"),
    spec("mid", "a", "1", "4"),
    spec("mid-b", "b", "1.2", "4"),
    spec("big", "c", "5", "25"),
    spec("local", "local", "0.01", "0.04", abilities=frozenset()),
]}


def router(difficulty: float = 0.0, **config: object) -> Router:
    return Router(CATALOG, RoutingConfig(**config), lambda text: difficulty)


def ask(text: str, **kw: object) -> ChatRequest:
    return ChatRequest(model="auto", messages=[ChatMessage("user", text)], **kw)  # type: ignore[arg-type]


class Health:
    def __init__(self, down: set[str] = set(), latency: dict[str, float] | None = None) -> None:
        self.down, self.latency = down, latency or {}

    def available(self, provider: str) -> bool:
        return provider not in self.down

    def latency_ms(self, model: str) -> float | None:
        return self.latency.get(model)

    def retry_in_s(self, provider: str) -> float:
        return 42.0 if provider in self.down else 0.0


@pytest.mark.parametrize("text, task", [
    ("Remind me to call mum at 6", "chat"),
    ("hi!", "chat"),
    ("What is the capital of Peru?", "factual"),
    ("Write a short cover letter for a barista job", "writing"),
    ("Why does this python function raise a KeyError?\n```def f(d): return d['x']```", "coding"),
    ("Solve for x: 3x + 7 = 22", "math"),
])
def test_task_classes(text: str, task: str) -> None:
    assert classify(ask(text), 20, 8000)[0] == task


def test_a_reminder_takes_the_cheapest_small_model_not_the_local_one() -> None:
    decision = router().decide(ask("remind me to buy milk"), plan="pro")
    assert decision.model.name == "tiny" and decision.explanation["tier"] == "small"
    assert decision.explanation["task"] == "chat"
    assert [s.name for s in decision.chain] == ["tiny", "small", "mid"]  # fallbacks: same tier, then up
    assert decision.chain[-1].provider != "local"


def test_coding_needs_mid_and_hard_prompts_get_the_flagship() -> None:
    assert router().decide(ask("Fix this bug in my python code"), plan="pro").model.name == "mid"
    hard = router(difficulty=0.9).decide(ask("What is the capital of Peru?"), plan="pro")
    assert hard.model.name == "big" and "difficulty 0.90 needs flagship" in hard.explanation["why"]
    medium = router(difficulty=0.35).decide(ask("What is the capital of Peru?"), plan="pro")
    assert medium.model.name == "mid"


def test_free_plan_routes_to_low_cost_models_only() -> None:
    decision = router(difficulty=0.95).decide(ask("Prove Fermat's little theorem"), plan="free")
    assert decision.model.name == "tiny"
    assert all(s.name in {"tiny", "small", "local"} for s in decision.chain)
    assert "the free plan allows up to small" in decision.explanation["why"]


def test_abilities_and_context_window_filter_candidates() -> None:
    image = ChatRequest("auto", [ChatMessage("user", [TextPart("what is this"), ImagePart("https://x/y.png")])])
    decision = router().decide(image, plan="pro")
    assert decision.model.name == "small" and decision.explanation["task"] == "vision"
    why_not = {c["model"]: c.get("why_not") for c in decision.explanation["candidates"]}
    assert why_not["tiny"] == "lacks vision" and why_not["local"] == "lacks vision"
    tools = ask("weather?", tools=[ToolSpec("w", None, {"type": "object"})])
    assert router().decide(tools, plan="pro").model.name == "tiny"
    long = router().decide(ask("summarise this"), plan="pro", prompt_tokens=9_000)
    assert long.model.name == "mid" and long.explanation["task"] == "long_document"  # tiny's 8k window is too small


def test_open_circuit_and_latency() -> None:
    decision = router().decide(ask("remind me"), plan="pro", health=Health(down={"a"}))
    assert decision.model.name == "small"  # "tiny" is on provider a
    fast = router(prefer_faster_within=0.5).decide(
        ask("fix my python code"), plan="pro", health=Health(latency={"mid": 900.0, "mid-b": 120.0}))
    assert fast.model.name == "mid-b"  # 20% dearer, 7x faster


def test_models_that_could_serve_but_are_down_are_an_outage_not_a_bad_request() -> None:
    everyone_down = Health(down={"a", "b", "c", "local"})
    with pytest.raises(ServiceUnavailable) as err:
        router().decide(ask("remind me"), plan="pro", health=everyone_down)
    assert err.value.status == 503 and err.value.retry_after_s == 42.0
    assert err.value.headers() == {"retry-after": "42"} and "unavailable right now" in err.value.message
    # What no model can do at all (the only one up lacks tools) stays a 400.
    only_local = Health(down={"a", "b", "c"})
    with pytest.raises(ServiceUnavailable):  # models with tools exist, but are down
        router().decide(ask("x", tools=[ToolSpec("w", None, {})]), plan="pro", health=only_local)
    with pytest.raises(InvalidRequest) as bad:
        Router({"local": CATALOG["local"]}, RoutingConfig(), lambda t: 0.0).decide(
            ask("x", tools=[ToolSpec("w", None, {})]), health=Health(down={"local"}))
    assert bad.value.status == 400


def test_decisions_are_deterministic_and_explained() -> None:
    r = router(difficulty=0.5)
    first = r.decide(ask("Write an essay on tides"), plan="plus")
    assert first == r.decide(ask("Write an essay on tides"), plan="plus")
    e = first.explanation
    assert {"task", "difficulty", "candidates", "reason", "tier", "model"} <= set(e)
    assert first.header().startswith(f"model={first.model.name}; task=writing; difficulty=0.50")
    assert first.header().isascii()


def test_named_models_pass_through_and_unknown_is_404() -> None:
    assert router().decide(ChatRequest("big", [ChatMessage("user", "x")])).model.name == "big"
    with pytest.raises(ModelNotFound):
        router().decide(ChatRequest("nope", [ChatMessage("user", "x")]))
    with pytest.raises(InvalidRequest):
        Router({"local": CATALOG["local"]}, RoutingConfig(), lambda t: 0.0).decide(
            ask("x", tools=[ToolSpec("w", None, {})]))


def test_pick_from_a_weak_strong_pair_by_threshold() -> None:
    r = router()
    assert r.pick_from(["weak", "strong"], 0.29, 0.3) == "weak"
    assert r.pick_from(["weak", "strong"], 0.3, 0.3) == "strong"
    assert [r.pick_from(["a", "b", "c"], d, 0.4) for d in (0.1, 0.5, 0.8)] == ["a", "b", "c"]
