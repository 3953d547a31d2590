"""Reading a user's own usage records, newest first, with a cursor."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, select

from switchboard.core.money import format_credits, ucr_to_credits_float
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
