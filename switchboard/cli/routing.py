"""`switchboard route`: routing decisions offline, for operators and for evaluation.

By default the router sees what this server would: the models it can run (the local model,
the operator's [[models]], and the shipped models of vendors whose key is set). `--catalog`
puts the whole shipped catalog in, keys or not: what would be chosen once every key is set.
Task and difficulty depend on the prompt alone, so they are the same either way.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from switchboard.core.config import VENDOR_KEY_ENV, Settings
from switchboard.core.errors import SwitchboardError
from switchboard.core.types import ChatMessage, ChatRequest
from switchboard.router.catalog import build_catalog, with_shipped
from switchboard.router.router import Router

BATCH_FIELDS = ("model", "task", "difficulty")


def make_router(settings: Settings, whole_catalog: bool = False) -> Router:
    """The router as this server builds it; with `whole_catalog`, over every shipped model too
    (vendor keys or not). ValueError when there is no model at all."""
    catalog = build_catalog(settings)
    return Router.for_settings(with_shipped(settings, catalog) if whole_catalog else catalog, settings)


def decide(router: Router, prompt: str, plan: str, names: list[str] | None, threshold: float | None) -> dict[str, Any]:
    """The decision for one prompt: always `model` (None when no model can serve it, with
    `error`), `task` and `difficulty`, then the explanation."""
    request = ChatRequest(model="auto", messages=[ChatMessage("user", prompt)])
    assessment = router.assess(request)
    result: dict[str, Any] = {"model": None, "task": assessment.task, "difficulty": assessment.difficulty}
    if names:
        t = router.config.difficulty_mid if threshold is None else threshold
        result["model"] = router.pick_from(names, assessment.difficulty, t)
        result["candidates"] = names
        result["threshold"] = t
        result["reason"] = f"difficulty {'>=' if result['model'] != names[0] else '<'} threshold {t}"
        return result
    try:
        decision = router.decide(request, plan=plan)
    except SwitchboardError as exc:
        result["error"] = exc.message
        return result
    result["model"] = decision.model.name
    result.update({k: v for k, v in decision.explanation.items() if k not in result})
    return result


def _router_or_exit(settings: Settings, whole_catalog: bool, err: Console) -> Router | None:
    try:
        return make_router(settings, whole_catalog)
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc} (or use --catalog to route over the shipped catalog)", soft_wrap=True)
        return None


def route_one(settings: Settings, prompt: str, plan: str, names: list[str] | None, threshold: float | None,
              as_json: bool, whole_catalog: bool, out: Console, err: Console) -> int:
    router = _router_or_exit(settings, whole_catalog, err)
    if router is None:
        return 1
    result = decide(router, prompt, plan, names, threshold)
    result["catalog"] = "shipped" if whole_catalog else "server"
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
        return 0 if result["model"] else 1
    out.print(f"[bold]{result['model'] or 'no model'}[/bold]  task={result['task']}  difficulty={result['difficulty']:.2f}")
    if names:
        out.print(result["reason"])
        return 0
    if result["model"] is None:
        err.print(f"[red]error:[/red] {result['error']}", soft_wrap=True)
        return 1
    for line in result["why"]:
        out.print(f"  - {line}")
    out.print(f"  - {result['reason']}; fallbacks: {', '.join(result['fallbacks']) or 'none'}")
    title = ("candidates: the whole shipped catalog, keys or not" if whole_catalog
             else "candidates: the models this server can run")
    table = Table(title=title + " (cheapest first within each tier)")
    for col in ("model", "tier", "USD/Mtok (3:1 mix)", "eligible"):
        table.add_column(col, overflow="fold")
    for c in result["candidates"]:
        table.add_row(c["model"], c["tier"], c["usd_per_mtok"], "yes" if c["eligible"] else c["why_not"])
    out.print(table)
    if not whole_catalog:
        err.print("vendor models join when their API key is set "
                  f"({', '.join(names[0] for names in VENDOR_KEY_ENV.values())}); "
                  "--catalog shows the choice over the whole shipped catalog", soft_wrap=True)
    return 0


def route_batch(settings: Settings, path: Path, plan: str, names: list[str] | None, threshold: float | None,
                whole_catalog: bool, err: Console) -> int:
    """One JSON line out per line in, in order. A bad line gets an `error` line, not a crash."""
    router = _router_or_exit(settings, whole_catalog, err)
    if router is None:
        return 1
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
            write(json.dumps({k: result[k] for k in (*BATCH_FIELDS, "error") if k in result}) + "\n")
    return 0
