"""`switchboard chat`: one prompt through the very same metered path the API uses."""

from __future__ import annotations

import uuid

from rich.console import Console
from sqlalchemy import Engine

from switchboard.accounts import users as users_mod
from switchboard.core.config import Settings
from switchboard.core.errors import SwitchboardError
from switchboard.core.money import format_credits
from switchboard.core.types import ChatMessage, ChatRequest, TextDelta
from switchboard.inference.runtime import Runtime
from switchboard.store.db import reading
from switchboard.store.schema import users


def _pick_user(runtime: Runtime, email: str | None) -> users_mod.User:
    with reading(runtime.engine) as conn:
        if email:
            return users_mod.find_user(conn, email)
        rows = conn.execute(users.select().order_by(users.c.id).limit(2)).all()
        if len(rows) == 1:
            return users_mod.user_of_row(rows[0])
        return users_mod.find_user(conn, users_mod.DEMO_EMAIL)


async def run_chat(
    settings: Settings, engine: Engine, prompt: str, model: str, email: str | None, max_tokens: int | None,
    out: Console, err: Console,
) -> int:
    runtime = Runtime(settings, engine)
    try:
        user = _pick_user(runtime, email)
    except SwitchboardError as exc:
        err.print(f"[red]error:[/red] {exc.message} (create one with `switchboard users create EMAIL`)")
        return 1
    await runtime.start(sweep=False)
    try:
        request = ChatRequest(model=model, messages=[ChatMessage("user", prompt)], max_tokens=max_tokens)
        call = await runtime.inference.begin(
            request, user_id=user.id, request_id="cli-" + uuid.uuid4().hex, endpoint="cli.chat", stream=True,
            plan=user.plan,
        )
        outcome, error = "ok", None
        try:
            async for event in call.events():
                if isinstance(event, TextDelta):
                    out.print(event.text, end="", markup=False, highlight=False, soft_wrap=True)
        except SwitchboardError as exc:
            outcome, error = "error", exc.message
        metering = await call.settle(outcome, error)
        out.print()
        if error:
            err.print(f"[red]error:[/red] {error}")
        tps = "-" if metering.decode_tokens_per_s is None else f"{metering.decode_tokens_per_s:.1f}"
        ttft = "-" if metering.ttft_ms is None else f"{metering.ttft_ms:.0f} ms"
        err.print(
            f"[dim]{metering.model}: {metering.usage.prompt_tokens} prompt + {metering.usage.completion_tokens} "
            f"completion tokens, TTFT {ttft}, {tps} tokens/s, {metering.latency_ms:.0f} ms; "
            f"charged {format_credits(metering.charged_ucr)} credits (USD {metering.cost_usd:.8f}), "
            f"{format_credits(metering.available_ucr)} left[/dim]"
        )
        return 0 if outcome == "ok" else 1
    except SwitchboardError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        return 1
    finally:
        await runtime.stop()
