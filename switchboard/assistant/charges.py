"""Charging a tool call through the ledger, like a model call: hold its worst case, run it,
settle what it used, with a usage record (endpoint "tool", model "tool:NAME").

A tool with no price runs without touching the ledger. A priced tool that cannot be held (not
enough credits, a cap, the turn's limit) does not run at all.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal

from switchboard.assistant.tools.registry import Tool, ToolFailed, ToolResult
from switchboard.billing.holds import HoldOp, SettleOp
from switchboard.core.errors import CreditLimitReached, InsufficientCredits, SpendingCapReached
from switchboard.core.ids import new_id
from switchboard.core.money import UCR_PER_CREDIT, usd_text
from switchboard.inference.runtime import Runtime


@dataclass(slots=True)
class ToolCharge:
    request_id: str | None
    charged_ucr: int
    outcome: str  # ok | error


async def run_charged(runtime: Runtime, user_id: int, tool: Tool, run: Callable[[], Awaitable[ToolResult]], *,
                      limit_ucr: int | None) -> tuple[ToolResult | ToolFailed, ToolCharge]:
    """Run the tool under a hold of its worst-case price; its result (or the failure) and what it cost."""
    worst = tool.price_ucr(tool.max_units)
    if worst == 0:
        try:
            return await run(), ToolCharge(None, 0, "ok")
        except ToolFailed as exc:
            return exc, ToolCharge(None, 0, "error")
    if limit_ucr is not None and worst > limit_ucr:
        raise CreditLimitReached(limit_ucr, worst)
    inference = runtime.inference
    request_id = "tool-" + new_id()
    held = await runtime.runner.run(
        HoldOp(runtime.ledger, user_id, request_id, worst, f"tool:{tool.name}", process_id=inference.process_id),
        order_key=user_id,
    )
    if not held.ok:
        if held.cap is not None:
            raise SpendingCapReached(held.cap.cap, held.cap.cap_ucr, held.cap.spent_ucr, held.needed_ucr)
        raise InsufficientCredits(held.available_ucr, held.needed_ucr)
    started = time.perf_counter()
    outcome: ToolResult | ToolFailed
    try:
        outcome = await run()
        units, status, error = outcome.units, "ok", None
    except ToolFailed as exc:
        # The failure's words may echo what the user wrote: they go to the model (in the
        # encrypted conversation), never into the usage record, which is stored in the clear.
        outcome, units, status, error = exc, exc.units or 0, "error", f"the tool {tool.name} failed"
    except BaseException:
        # Cancelled or a bug: release the hold (charged nothing), then let it propagate.
        runtime.runner.submit_nowait(SettleOp(runtime.ledger, user_id, held.hold_id, 0, None), order_key=user_id)
        raise
    charge = min(worst, tool.price_ucr(units)) if status == "ok" or units else 0
    usd = Decimal(charge) * runtime.settings.usd_per_credit / UCR_PER_CREDIT
    row = {
        "request_id": request_id, "api_key_id": None, "endpoint": "tool", "model": f"tool:{tool.name}",
        "provider": "switchboard", "stream": False, "outcome": status, "error": error, "prompt_tokens": 0,
        "cached_prompt_tokens": 0, "cache_write_tokens": 0, "completion_tokens": 0, "reasoning_tokens": 0,
        "ttft_ms": None, "decode_tokens_per_s": None, "latency_ms": (time.perf_counter() - started) * 1000,
        "cost_usd": usd_text(usd), "route": json.dumps({"tool": tool.name, "units": units}, separators=(",", ":")),
    }
    settled = await asyncio.shield(runtime.runner.run(
        SettleOp(runtime.ledger, user_id, held.hold_id, charge, row), order_key=user_id))
    return outcome, ToolCharge(request_id, settled.charged_ucr, status)
