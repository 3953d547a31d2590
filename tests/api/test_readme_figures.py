"""Every figure of the README's tour is one the code produces (issue 13, item 10): the figures are
read out of README.md and docs/api.md, and the tour's request is run through a real gateway, at
the embedded model's prices, and through the embedded model itself."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx

from switchboard.api.app import create_app
from switchboard.core.config import LocalModelConfig, Settings
from switchboard.core.money import format_credits, usd_text, usd_to_ucr
from switchboard.core.types import Usage
from switchboard.store.db import make_engine
from switchboard.store.migrate import upgrade
from tests.api.conftest import add_user
from tests.fakes.openai_upstream import FakeOpenAI
from tests.support.servers import ServerThread

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
API_DOC = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
LOCAL = LocalModelConfig()


@dataclass(frozen=True)
class Tour:
    """The tour's first request and what the README says it answers."""

    body: dict  # type: ignore[type-arg]
    model: str
    charged: str
    remaining: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: str
    per_output_token: str


def _find(pattern: str, text: str = README) -> re.Match[str]:
    match = re.search(pattern, text, re.S)
    assert match, f"README.md no longer says {pattern!r}: update this test with it"
    return match


def tour() -> Tour:
    body = json.loads(_find(r"curl -s http://127\.0\.0\.1:8000/v1/chat/completions .*?-d '(\{.*?\})' -i").group(1))
    headers = _find(r"x-switchboard-model: (\S+)\nx-switchboard-credits-charged: ([\d.]+)\n"
                    r"x-switchboard-credits-remaining: ([\d.]+)")
    usage = _find(r'"usage": \{"prompt_tokens": (\d+), "completion_tokens": (\d+)')
    cost = _find(r"USD ([\d.]+),\s+which\s+at\s+USD\s+[\d.]+\s+a\s+credit")
    per_token = _find(r"each\s+more\s+token\s+of\s+answer\s+costs\s+([\d.]+)\s+credits")
    return Tour(body, headers.group(1), headers.group(2), headers.group(3), int(usage.group(1)), int(usage.group(2)),
                cost.group(1), per_token.group(1))


def test_the_readme_prices_and_plans_are_the_configured_ones() -> None:
    settings = Settings()
    assert _find(r"1 credit = USD ([\d.]+) of inference").group(1) == str(settings.usd_per_credit)
    free, plus, plus_usd, pro, pro_usd = _find(
        r"Free \(([\d,]+)\s+credits\s+a\s+month\),\s+Plus\s+\(([\d,]+),\s+USD\s+([\d.]+)\),\s+Pro\s+\(([\d,]+),\s+"
        r"USD\s+([\d.]+)\)").groups()
    plans = settings.plans
    assert int(free.replace(",", "")) == plans["free"].monthly_credits
    assert (int(plus.replace(",", "")), Decimal(plus_usd)) == (plans["plus"].monthly_credits, plans["plus"].monthly_usd)
    assert (int(pro.replace(",", "")), Decimal(pro_usd)) == (plans["pro"].monthly_credits, plans["pro"].monthly_usd)
    t = tour()
    spec = settings.catalog[t.model]
    cost = spec.cost_usd(Usage(prompt_tokens=t.prompt_tokens, completion_tokens=t.completion_tokens))
    assert usd_text(cost) == t.cost_usd
    assert format_credits(usd_to_ucr(cost, settings.usd_per_credit)) == t.charged
    assert format_credits(usd_to_ucr(spec.cost_usd(Usage(completion_tokens=1)), settings.usd_per_credit)) == t.per_output_token


def test_the_tour_request_is_charged_what_the_readme_and_api_doc_say(tmp_path: Path) -> None:
    """The same request through a real gateway, to an upstream that reports the README's usage
    at the embedded model's prices, for a new free user: the headers are the README's, the
    `switchboard` object docs/api.md's."""
    t = tour()
    with FakeOpenAI() as fake:
        fake.configure(text="Paris.", chunks=1, prompt_tokens=t.prompt_tokens, completion_tokens=t.completion_tokens)
        settings = Settings(
            data_dir=tmp_path, local_model={"enabled": False}, rate_limit={"requests_per_minute": 0},
            providers=[{"name": "same-prices", "kind": "openai-compatible", "base_url": fake.url}],
            models=[{"name": LOCAL.name, "provider": "same-prices", "context_window": LOCAL.context_window,
                     "max_output_tokens": LOCAL.max_output_tokens, "input_usd_per_mtok": LOCAL.input_usd_per_mtok,
                     "output_usd_per_mtok": LOCAL.output_usd_per_mtok}],
        )
        engine = make_engine(settings.resolved_database_url)
        upgrade(engine)
        _, key = add_user(engine, settings, "demo@example.com", "free")
        engine.dispose()
        with ServerThread(create_app(settings)) as server:
            r = httpx.post(server.url + "/v1/chat/completions", json=t.body, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    assert (r.headers["x-switchboard-model"], r.headers["x-switchboard-credits-charged"],
            r.headers["x-switchboard-credits-remaining"]) == (t.model, t.charged, t.remaining)
    meter = r.json()["switchboard"]
    doc = json.loads("{" + _find(r'"switchboard": \{(.*?)\}\n```', API_DOC).group(1).replace("...", "") + "}")
    for field in ("model", "provider", "cost_usd", "credits_charged", "credits_remaining", "charged_ucr"):
        expected = "local" if field == "provider" else meter[field]  # the fake stands in for the local provider
        assert doc[field] == expected, f"docs/api.md says {field} {doc[field]!r}; the code gives {expected!r}"


def test_the_embedded_model_counts_the_tour_prompt_as_the_readme_says(tmp_path: Path) -> None:
    """The tour's request on a fresh install: the embedded model, its own count of the prompt
    (the README's), and a charge that is exactly that usage at its prices (the answer's length
    may vary from run to run)."""
    t = tour()
    settings = Settings(data_dir=tmp_path, local_model={"threads": 1})  # a fresh install's defaults
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    _, key = add_user(engine, settings, "demo@example.com", "free")
    engine.dispose()
    with ServerThread(create_app(settings)) as server:
        r = httpx.post(server.url + "/v1/chat/completions", json=t.body, headers={"Authorization": f"Bearer {key}"},
                       timeout=120)
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    assert r.headers["x-switchboard-model"] == t.model
    assert usage["prompt_tokens"] == t.prompt_tokens, (
        f"README.md's tour says {t.prompt_tokens} prompt tokens; the embedded model counts {usage['prompt_tokens']}: "
        "update the README's figures (and docs/api.md's) from a real run")
    spec = settings.catalog[t.model]
    charged = usd_to_ucr(spec.cost_usd(Usage(usage["prompt_tokens"], usage["completion_tokens"])), settings.usd_per_credit)
    assert r.headers["x-switchboard-credits-charged"] == format_credits(charged)
    assert r.headers["x-switchboard-credits-remaining"] == format_credits(settings.plan_allowance_ucr("free") - charged)
