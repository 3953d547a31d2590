"""`switchboard route`: routing decisions offline, for operators and for evaluation."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from switchboard.core.config import Settings
from switchboard.core.types import ChatMessage, ChatRequest
from switchboard.router.catalog import build_catalog, with_shipped
from switchboard.router.router import Router


def make_router(settings: Settings) -> Router:
    """The router as the server builds it, over the full shipped catalog (vendor keys or not:
    offline decisions show what would be chosen once the keys are set)."""
    return Router.for_settings(with_shipped(settings, build_catalog(settings)), settings)


def decide(router: Router, prompt: str, plan: str, names: list[str] | None, threshold: float | None) -> dict[str, Any]:
    request = ChatRequest(model="auto", messages=[ChatMessage("user", prompt)])
    decision = router.decide(request, plan=plan)
    result = {"model": decision.model.name, "task": decision.explanation["task"],
              "difficulty": decision.explanation["difficulty"]}
    if names:
        t = router.config.difficulty_mid if threshold is None else threshold
        result["model"] = router.pick_from(names, result["difficulty"], t)
        result["candidates"] = names
        result["threshold"] = t
        result["reason"] = f"difficulty {'>=' if result['model'] != names[0] else '<'} threshold {t}"
    else:
        result.update({k: v for k, v in decision.explanation.items() if k not in result})
    return result


def route_one(settings: Settings, prompt: str, plan: str, names: list[str] | None, threshold: float | None,
              as_json: bool, out: Console, err: Console) -> int:
    result = decide(make_router(settings), prompt, plan, names, threshold)
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
        return 0
    out.print(f"[bold]{result['model']}[/bold]  task={result['task']}  difficulty={result['difficulty']:.2f}")
    if names:
        out.print(result["reason"])
        return 0
    for line in result["why"]:
        out.print(f"  - {line}")
    out.print(f"  - {result['reason']}; fallbacks: {', '.join(result['fallbacks']) or 'none'}")
    table = Table(title="candidates (cheapest first within each tier)")
    for col in ("model", "tier", "USD/Mtok (3:1 mix)", "eligible"):
        table.add_column(col)
    for c in result["candidates"]:
        table.add_row(c["model"], c["tier"], c["usd_per_mtok"], "yes" if c["eligible"] else c["why_not"])
    out.print(table)
    return 0


def route_batch(settings: Settings, path: Path, plan: str, names: list[str] | None, threshold: float | None,
                err: Console) -> int:
    """One JSON line out per line in, in order. A bad line gets an `error` line, not a crash."""
    router = make_router(settings)
    write = sys.stdout.write
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                write(json.dumps({"error": f"line {number} is empty"}) + "\n")
                continue
            try:
                item = json.loads(line)
                prompt = item["prompt"]
                if not isinstance(prompt, str):
                    raise TypeError("prompt must be a string")
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                write(json.dumps({"error": f"line {number}: {exc}"}) + "\n")
                continue
            result = decide(router, prompt, plan, names, threshold)
            write(json.dumps({k: result[k] for k in ("model", "task", "difficulty")}) + "\n")
    return 0
