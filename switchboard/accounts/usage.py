"""Reading a user's own usage records, newest first, with a cursor."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, select

from switchboard.core.money import format_credits, ucr_to_credits_float, usd_text
from switchboard.store.schema import usage_records


def list_usage(conn: Connection, user_id: int, limit: int, before_id: int | None = None) -> tuple[list[dict[str, Any]], bool]:
    """Up to `limit` records older than `before_id`, newest first, and whether more exist."""
    query = select(usage_records).where(usage_records.c.user_id == user_id)
    if before_id is not None:
        query = query.where(usage_records.c.id < before_id)
    rows = conn.execute(query.order_by(usage_records.c.id.desc()).limit(limit + 1)).mappings().all()
    return [usage_json(r) for r in rows[:limit]], len(rows) > limit


def usage_json(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "usage_record",
        "request_id": row["request_id"],
        "created": row["created_ms"] // 1000,
        "created_ms": row["created_ms"],
        "endpoint": row["endpoint"],
        "model": row["model"],
        "provider": row["provider"],
        "stream": bool(row["stream"]),
        "outcome": row["outcome"],
        "error": row["error"],
        "prompt_tokens": row["prompt_tokens"],
        "cached_prompt_tokens": row["cached_prompt_tokens"],
        "cache_write_tokens": row["cache_write_tokens"],
        "completion_tokens": row["completion_tokens"],
        "reasoning_tokens": row["reasoning_tokens"],
        "ttft_ms": row["ttft_ms"],
        "decode_tokens_per_s": row["decode_tokens_per_s"],
        "latency_ms": row["latency_ms"],
        "cost_usd": row["cost_usd"],
        "credits_charged": ucr_to_credits_float(row["charged_ucr"]),
        "credits_charged_exact": format_credits(row["charged_ucr"]),
        "charged_ucr": row["charged_ucr"],
        "route": json.loads(row["route"]) if row["route"] else None,
    }


def summarize(conn: Connection, user_id: int | None, by: str, since_ms: int | None = None) -> list[dict[str, Any]]:
    """Totals per day (UTC) or per model: requests, tokens, USD cost and credits.

    `user_id` None: every user (the operator's view). One pass over the records, summed in
    Python: the USD cost is exact decimal text, which SQL could only sum as a float."""
    if by not in ("day", "model"):
        raise ValueError("group by 'day' or 'model'")
    u = usage_records.c
    query = select(u.model, u.created_ms, u.outcome, u.prompt_tokens, u.cached_prompt_tokens, u.completion_tokens,
                   u.reasoning_tokens, u.charged_ucr, u.cost_usd)
    if user_id is not None:
        query = query.where(u.user_id == user_id)
    if since_ms is not None:
        query = query.where(u.created_ms >= since_ms)
    totals: dict[str, dict[str, Any]] = {}
    for model, created, outcome, prompt, cached, completion, reasoning, charged, cost in conn.execute(query):
        key = model if by == "model" else datetime.fromtimestamp(created // 1000, tz=timezone.utc).strftime("%Y-%m-%d")
        t = totals.setdefault(key, {
            by: key, "requests": 0, "failed_requests": 0, "prompt_tokens": 0, "cached_prompt_tokens": 0,
            "completion_tokens": 0, "reasoning_tokens": 0, "cost": Decimal(0), "charged_ucr": 0,
        })
        t["requests"] += 1
        t["failed_requests"] += outcome != "ok"
        t["prompt_tokens"] += prompt
        t["cached_prompt_tokens"] += cached
        t["completion_tokens"] += completion
        t["reasoning_tokens"] += reasoning
        t["charged_ucr"] += charged
        t["cost"] += Decimal(cost)
    out = []
    for key in sorted(totals):
        t = totals[key]
        t["cost_usd"] = usd_text(t.pop("cost"))
        t["credits_charged"] = ucr_to_credits_float(t["charged_ucr"])
        out.append(t)
    return out


EXPORT_COLUMNS = (
    "id", "request_id", "created_ms", "endpoint", "model", "provider", "stream", "outcome", "prompt_tokens",
    "cached_prompt_tokens", "cache_write_tokens", "completion_tokens", "reasoning_tokens", "ttft_ms",
    "decode_tokens_per_s", "latency_ms", "cost_usd", "charged_ucr",
)


def export_page(conn: Connection, user_id: int | None, after_id: int, batch: int) -> list[dict[str, Any]]:
    """Up to `batch` usage records with ids above `after_id`, oldest first: one page of an
    export, found by key (the (user_id, id) index), so that every page costs the same however
    far into the export it is."""
    u = usage_records.c
    columns = [getattr(u, c) for c in EXPORT_COLUMNS] + [u.user_id]
    query = select(*columns).where(u.id > after_id).order_by(u.id).limit(batch)
    if user_id is not None:
        query = query.where(u.user_id == user_id)
    # Plain str keys: column names are a str subclass, which orjson refuses as keys.
    return [{str(k): v for k, v in row._asdict().items()} for row in conn.execute(query).all()]


def export_rows(conn: Connection, user_id: int | None, batch: int = 1000) -> Iterator[dict[str, Any]]:
    """Every usage record, oldest first, streamed in pages (the operator's export can be large)."""
    last = 0
    while rows := export_page(conn, user_id, last, batch):
        yield from rows
        last = rows[-1]["id"]


# Spreadsheets run a cell that starts with one of these as a formula (OWASP "CSV injection").
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value: Any) -> Any:
    """A text cell that a spreadsheet would take for a formula, with a quote in front so that it
    is shown as text (a client-chosen request id such as `=HYPERLINK(...)`). Numbers are left
    alone: their own minus sign is data."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def to_csv(rows: Iterable[dict[str, Any]], columns: tuple[str, ...], header: bool = True) -> Iterator[str]:
    """CSV text, a line at a time (the header first unless `header` is False); formula-like text
    cells are neutralised (`csv_safe`)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    if header:
        writer.writerow(columns)
        yield buffer.getvalue()
    for row in rows:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow([csv_safe(row.get(c)) for c in columns])
        yield buffer.getvalue()
