"""Resolves holds whose process died (crash, SIGKILL) once their time-out has passed.

Nothing but the hold was recorded for such a request, so it is voided (charged nothing) and a
usage record with outcome "expired" says so. Runs at start-up and then periodically; safe to run
in every process at once, because settlement is exactly once per hold.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from sqlalchemy import Connection

from switchboard.billing.ledger import Ledger, now_ms
from switchboard.core.catalog import ModelSpec
from switchboard.store.db import reading
from switchboard.store.runner import TransactionRunner

log = logging.getLogger(__name__)


def sweep_once(runner: TransactionRunner, ledger: Ledger, catalog: dict[str, ModelSpec]) -> int:
    """Void every expired hold; returns how many this call resolved. Blocking."""
    resolved = 0
    with reading(runner.engine) as conn:
        expired = ledger.expired_holds(conn)
    for hold in expired:

        def work(conn: Connection, hold: dict[str, Any] = hold) -> bool:
            # Settled meanwhile (by its own request, or another process's sweeper): the
            # settlement below, under the wallet lock, then reports it and changes nothing.
            spec = catalog.get(hold["model"])
            usage = {
                "request_id": hold["request_id"], "api_key_id": None, "endpoint": "sweeper",
                "model": hold["model"], "provider": spec.provider if spec else "unknown", "stream": False,
                "outcome": "expired", "error": "the serving process stopped before settling; voided",
                "prompt_tokens": 0, "cached_prompt_tokens": 0, "cache_write_tokens": 0,
                "completion_tokens": 0, "reasoning_tokens": 0, "ttft_ms": None, "decode_tokens_per_s": None,
                "latency_ms": float(now_ms() - hold["created_ms"]), "cost_usd": "0",
                "route": json.dumps({"swept": True}),
            }
            return not ledger.settle(conn, hold["user_id"], hold["id"], 0, usage).already_resolved

        if runner.run_sync(work):
            resolved += 1
    if resolved:
        log.warning("swept %d expired hold(s) left by a stopped process", resolved)
    return resolved


async def sweep_forever(
    runner: TransactionRunner, ledger: Ledger, catalog: dict[str, ModelSpec], interval_s: float
) -> None:
    """Sweep every `interval_s` (the start-up sweep is done by the caller)."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await asyncio.to_thread(sweep_once, runner, ledger, catalog)
        except Exception:  # noqa: BLE001 - a failed sweep is retried next interval
            log.exception("hold sweep failed")
