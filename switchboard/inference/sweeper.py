"""Resolves holds that their own request will never settle: those of a process that died.

A process that dies (crash, SIGKILL) leaves its holds active. Two things find them:
inference.heartbeat, within seconds (a restart on the same host, or another process once the
dead one's heartbeat lapsed), and this module's sweep, the last resort: every hold past its
time-out (`hold_timeout_s`), and every hold whose process is no longer registered. Either way a
hold is charged what its stream had delivered as last recorded (billing.progress), never above
the hold, and voided when nothing was recorded; a usage record says what happened.

Safe to run in every process at once: settlement is exactly once per hold, and a hold settled
meanwhile (by its own request, or another process) is reported as such and changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
from decimal import Decimal
from typing import Any

from switchboard.billing import progress
from switchboard.billing.ledger import Ledger, SettleOp, now_ms
from switchboard.billing.progress import OpenHold
from switchboard.core.catalog import ModelSpec
from switchboard.core.money import UCR_PER_CREDIT, usd_text
from switchboard.core.types import Usage
from switchboard.store.db import reading
from switchboard.store.runner import TransactionRunner

log = logging.getLogger(__name__)
_WAIT_S = 120.0  # for the ledger writer to settle one hold (it retries lock conflicts itself)


def usage_row(hold: OpenHold, spec: ModelSpec | None, usd_per_credit: Decimal, outcome: str, why: str) -> dict[str, Any]:
    """The usage record of a hold resolved without its request: what was recorded as delivered
    (tokens, cost) and, in `error`, why and what was charged."""
    delivered = hold.progress_ucr is not None
    usage = Usage(prompt_tokens=hold.prompt_tokens or 0, completion_tokens=hold.completion_tokens or 0)
    charge = hold.charge_ucr
    if spec is not None:
        cost = spec.cost_usd(usage)
    else:  # the model left the catalog meanwhile: the cost of what is charged
        cost = Decimal(charge) * usd_per_credit / UCR_PER_CREDIT
    if not delivered:
        what = "nothing was recorded as delivered, so it was voided"
    else:
        what = f"charged for the {usage.completion_tokens} output tokens it had recorded as delivered"
        if charge < (hold.progress_ucr or 0):
            what += " (no more than the hold)"
    return {
        "request_id": hold.request_id, "api_key_id": None, "endpoint": "recovery", "model": hold.model,
        "provider": spec.provider if spec else "unknown", "stream": delivered, "outcome": outcome,
        "error": f"{why}; {what}", "prompt_tokens": usage.prompt_tokens, "cached_prompt_tokens": 0,
        "cache_write_tokens": 0, "completion_tokens": usage.completion_tokens, "reasoning_tokens": 0,
        "ttft_ms": None, "decode_tokens_per_s": None, "latency_ms": float(max(0, now_ms() - hold.created_ms)),
        "cost_usd": usd_text(cost),
        "route": json.dumps({"resolved": outcome, "process_id": hold.process_id}, separators=(",", ":")),
    }


def resolve(
    runner: TransactionRunner, ledger: Ledger, catalog: dict[str, ModelSpec], usd_per_credit: Decimal,
    found: list[OpenHold], outcome: str, why: str,
) -> int:
    """Settle `found` from their recorded progress through the ledger writer (which must be
    running); returns how many this call resolved. Blocking."""
    futures = [
        runner.submit(SettleOp(ledger, hold.user_id, hold.id, hold.charge_ucr,
                               usage_row(hold, catalog.get(hold.model), usd_per_credit, outcome, why)),
                      order_key=hold.user_id)
        for hold in found
    ]
    resolved = 0
    for hold, future in zip(found, futures):
        try:
            resolved += not future.result(timeout=_WAIT_S).already_resolved
        except Exception:  # noqa: BLE001 - one hold's failure must not stop the others'
            log.exception("could not resolve hold %d of user %d", hold.id, hold.user_id)
    return resolved


def sweep_once(runner: TransactionRunner, ledger: Ledger, catalog: dict[str, ModelSpec], usd_per_credit: Decimal) -> int:
    """Resolve every hold past its time-out and every hold of an unregistered process; returns
    how many this call resolved. Blocking."""
    with reading(runner.engine) as conn:
        expired = progress.timed_out(conn, now_ms())
        orphans = progress.orphaned(conn)
    resolved = resolve(runner, ledger, catalog, usd_per_credit, expired, "expired",
                       "the request was not settled before the hold's time-out")
    seen = {hold.id for hold in expired}
    resolved += resolve(runner, ledger, catalog, usd_per_credit, [h for h in orphans if h.id not in seen],
                        "interrupted", "the server process serving this request was found dead")
    if resolved:
        log.warning("swept %d hold(s) left by a stopped process", resolved)
    return resolved


async def sweep_forever(
    runner: TransactionRunner, ledger: Ledger, catalog: dict[str, ModelSpec], usd_per_credit: Decimal,
    interval_s: float,
) -> None:
    """Sweep every `interval_s` (the start-up sweep is done by the caller)."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await asyncio.to_thread(sweep_once, runner, ledger, catalog, usd_per_credit)
        except Exception:  # noqa: BLE001 - a failed sweep is retried next interval
            log.exception("hold sweep failed")
