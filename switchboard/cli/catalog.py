"""`switchboard models` and `switchboard route`: the catalog and the router, offline (neither
needs the database)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich import box
from rich.table import Table

from switchboard.cli.common import err, error_line, load, out
from switchboard.core.config import VENDOR_KEY_ENV, Settings
from switchboard.core.money import credits_per_1k_tokens, usd_text

# The full table needs about this many columns; a narrower terminal gets the compact one.
WIDE_COLUMNS = 110


def model_rows(settings: Settings, all_models: bool) -> list[dict[str, Any]]:
    """Each model with its prices in USD per million tokens and in credits per 1,000 tokens."""
    from switchboard.router.catalog import build_catalog, shipped_models, with_shipped

    catalog = build_catalog(settings)
    shipped = {m.spec.name: m for m in shipped_models()}
    specs = list((with_shipped(settings, catalog) if all_models else catalog).values())
    per_k = lambda usd: credits_per_1k_tokens(usd, settings.usd_per_credit)  # noqa: E731
    rows = []
    for spec in specs:
        info = shipped.get(spec.name)
        rows.append({
            "name": spec.name, "provider": spec.provider, "available": spec.name in catalog,
            "tier": info.tier if info else None, "context_window": spec.context_window,
            "input_usd_per_mtok": usd_text(spec.input_usd_per_mtok),
            "cached_input_usd_per_mtok": None if spec.cached_input_usd_per_mtok is None else usd_text(spec.cached_input_usd_per_mtok),
            "output_usd_per_mtok": usd_text(spec.output_usd_per_mtok),
            "input_credits_per_1k": usd_text(per_k(spec.input_usd_per_mtok)),
            "output_credits_per_1k": usd_text(per_k(spec.output_usd_per_mtok)),
            "abilities": None if spec.abilities is None else sorted(spec.abilities),
            "price_date": info.price_date if info else None, "price_source": info.price_source if info else None,
        })
    return rows


def _wide_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="models (USD per million tokens; credits per 1,000 tokens)")
    for col in ("model", "provider", "ready", "context", "in $", "cached $", "out $", "in cr/1k", "out cr/1k"):
        table.add_column(col, no_wrap=col == "model", justify="left" if col in ("model", "provider", "ready") else "right")
    for r in rows:
        table.add_row(r["name"], r["provider"], "yes" if r["available"] else "no key", f"{r['context_window']:,}",
                      r["input_usd_per_mtok"], r["cached_input_usd_per_mtok"] or "-", r["output_usd_per_mtok"],
                      r["input_credits_per_1k"], r["output_credits_per_1k"])
    return table


def _compact_table(rows: list[dict[str, Any]]) -> Table:
    """For 80 columns: a heading row per provider (and whether it has a key), prices paired."""
    table = Table(title="models: USD per 1M tokens, credits per 1k tokens", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("model", overflow="fold")
    table.add_column("context", justify="right", overflow="fold")
    table.add_column("USD in/out", justify="right", overflow="fold")
    table.add_column("cached", justify="right", overflow="fold")
    table.add_column("credits in/out", justify="right", overflow="fold")
    provider = None
    for r in rows:
        if r["provider"] != provider:
            provider = r["provider"]
            ready = "" if r["available"] else " (no key)"
            table.add_row(f"[bold]{provider}[/bold]{ready}", end_section=False)
        table.add_row(f" {r['name']}", f"{r['context_window']:,}", f"{r['input_usd_per_mtok']}/{r['output_usd_per_mtok']}",
                      r["cached_input_usd_per_mtok"] or "-", f"{r['input_credits_per_1k']}/{r['output_credits_per_1k']}")
    return table


def models(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    all_models: bool = typer.Option(True, "--all/--available", help="Also list shipped models of vendors without a key."),
) -> None:
    """The model catalog, with prices in USD per million tokens and in credits per 1,000 tokens."""
    rows = model_rows(load(), all_models)
    if as_json:
        sys.stdout.write(json.dumps(rows) + "\n")
        return
    out.print(_wide_table(rows) if out.width >= WIDE_COLUMNS else _compact_table(rows))
    if any(not r["available"] for r in rows):
        err.print("models marked 'no key' become available when the vendor's API key is set "
                  f"({', '.join(names[0] for names in VENDOR_KEY_ENV.values())})")


def route(
    prompt: Optional[str] = typer.Argument(None, help="The prompt to route (or use --batch)."),
    plan: str = typer.Option("pro", help="The user's plan: caps the tiers the router may choose."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    batch: Optional[Path] = typer.Option(None, help="A JSONL file, one object with a `prompt` field per line."),
    models_: Optional[str] = typer.Option(None, "--models", help="Only these models, cheapest first: A,B,..."),
    threshold: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="Difficulty where the stronger model takes over."),
    whole_catalog: bool = typer.Option(False, "--catalog", help="Route over the whole shipped catalog, vendor keys or not "
                                                                "(default: the models this server can run)."),
) -> None:
    """Show how this server would route a prompt (calls no model, needs no database)."""
    from switchboard.cli.routing import route_batch, route_one

    settings = load()
    if (prompt is None) == (batch is None):
        error_line("give a PROMPT or --batch FILE, not both", 2)
    names = [m.strip() for m in models_.split(",") if m.strip()] if models_ else None
    if batch is not None:
        raise typer.Exit(route_batch(settings, batch, plan, names, threshold, whole_catalog, err))
    raise typer.Exit(route_one(settings, prompt or "", plan, names, threshold, as_json, whole_catalog, out, err))
