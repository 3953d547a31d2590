"""`switchboard plans`, `subscription ...` and `payments ...`: what users pay for, and Stripe."""

from __future__ import annotations

import json
import sys

import typer
from rich.table import Table

from switchboard.cli.common import err, fail, load, open_store, out, utc
from switchboard.core.errors import SwitchboardError
from switchboard.core.money import format_credits

subscription_app = typer.Typer(help="Plans and paid subscriptions (Stripe).", no_args_is_help=True)
payments_app = typer.Typer(help="Stripe events not applied yet: pending and parked.", no_args_is_help=True)


def plans(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Plans and top-up packs, with prices."""
    from switchboard.billing.checkout import price_list

    data = price_list(load())
    if as_json:
        sys.stdout.write(json.dumps(data) + "\n")
        return
    table = Table(title="plans (monthly)")
    for col in ("plan", "USD/month", "credits/month", "sandbox", "rollover"):
        table.add_column(col)
    for p in data["plans"]:
        table.add_row(p["name"], p["monthly_usd"], f"{p['monthly_credits']:,}", "yes" if p["sandbox"] else "no",
                      "yes" if p["rollover"] else "no")
    out.print(table)
    table = Table(title="top-up packs (one-off)")
    for col in ("pack", "credits", "USD", "expires after"):
        table.add_column(col)
    for p in data["packs"]:
        table.add_row(p["name"], f"{p['credits']:,}", p["usd"], f"{p['expires_after_days']} days")
    out.print(table)


@subscription_app.command("show")
def subscription_show(email: str, as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """A user's plan and paid subscription."""
    from switchboard.billing import subscriptions as subs

    store = open_store()
    user = store.user(email)
    sub = store.read(lambda conn: subs.get(conn, user.id))
    data = {"email": user.email, "plan": user.plan, "subscription": sub.as_json() if sub else None}
    if as_json:
        sys.stdout.write(json.dumps(data) + "\n")
        return
    table = Table(title=f"{user.email} (plan in force: {user.plan})", show_header=False)
    for key, value in (sub.as_json() if sub else {"subscription": "none"}).items():
        if key.endswith("_ms") and value:
            value = utc(value, "%Y-%m-%dT%H:%M:%S+00:00")
        table.add_row(key.removesuffix("_ms"), str(value))
    out.print(table)


@subscription_app.command("change")
def subscription_change(
    email: str,
    plan: str = typer.Argument(..., help="A plan name from `switchboard plans`."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Change a user's plan. A Stripe subscriber's goes through Stripe, as POST /v1/billing/plan
    does (needs STRIPE_API_KEY). Anyone else's is set here, in force now: a larger allowance is
    granted at once (this period's allowance topped up to the new plan's, as `users create
    --plan` gives); a smaller one from the next period, credits already granted staying."""
    from switchboard.accounts.admin import assign_plan
    from switchboard.billing import plan_changes
    from switchboard.billing import subscriptions as subs
    from switchboard.billing.checkout import requested_plan

    store = open_store()
    user = store.user(email)
    note = ""
    try:
        requested_plan(store.settings, plan)
        if subs.billed_by_stripe(store.read(lambda conn: subs.get(conn, user.id))):
            data = plan_changes.request_plan_change(
                store.engine, store.write, store.ledger, store.settings, user.id, plan).as_json()
        else:
            assigned = store.write(lambda conn: assign_plan(conn, store.ledger, store.settings, user.id, plan))
            data = assigned.as_json()
            if assigned.granted_ucr:
                note = f"; granted {format_credits(assigned.granted_ucr)} credits now (this period's {plan} allowance)"
            elif assigned.change != subs.UNCHANGED:
                note = (f"; credits already granted stay, the {plan} allowance comes with the next period "
                        f"({utc(assigned.period_end_ms)})")
    except SwitchboardError as exc:
        fail(exc)
    in_force = store.read(lambda conn: subs.plan_in_force(conn, user.id))
    data = {"email": user.email, "plan_in_force": in_force, **data}
    if as_json:
        sys.stdout.write(json.dumps(data) + "\n")
        return
    pending = f", {data['pending_plan']} from the next period" if data.get("pending_plan") else ""
    out.print(f"{user.email}: {data['change']}; plan in force {in_force}{pending}{note}", soft_wrap=True)


@payments_app.command("pending")
def payments_pending(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    limit: int = typer.Option(200, min=1, help="Show at most this many."),
) -> None:
    """Stripe events not applied yet, and why.

    Parked ones first: they wait for an operator (fix what the reason names, then `payments
    retry`). Then pending ones, which are retried automatically."""
    from switchboard.billing import event_queue

    store = open_store()
    events, counts = store.read(lambda conn: (event_queue.not_applied(conn, limit), event_queue.counts(conn)))
    if as_json:
        sys.stdout.write(json.dumps({"counts": counts, "events": [e.as_json() for e in events]}) + "\n")
        return
    if not events:
        out.print("no pending or parked Stripe events")
        return
    table = Table(title=f"Stripe events not applied: {counts['parked']} parked, {counts['pending']} pending")
    for column in ("id", "event", "user", "status", "reason"):
        table.add_column(column, overflow="fold")
    for e in events:
        status = f"{e.status} after {e.attempts} {'try' if e.attempts == 1 else 'tries'}"
        if e.next_attempt_ms is not None:
            status += f"; next {utc(e.next_attempt_ms)}"
        table.add_row(str(e.id), f"{e.event_id}\n{e.type}\nreceived {utc(e.received_ms)}", str(e.user_id or "-"), status,
                      e.reason or "")
    out.print(table)


@payments_app.command("retry")
def payments_retry(
    events: list[str] = typer.Argument(..., help="Ids from `payments pending` (or Stripe event ids, evt_...)."),
) -> None:
    """Apply pending or parked events now; exit 1 if one is not found (or applied already)."""
    from switchboard.billing.payments import retry

    store = open_store()
    missing = False
    for ref in events:
        outcome = store.write(lambda conn: retry(conn, store.ledger, store.settings, ref))
        if outcome is None:
            missing = True
            err.print(f"[red]error:[/red] no pending or parked event {ref}", soft_wrap=True)
        else:
            out.print(f"{ref}: {outcome.status}: {outcome.detail}", soft_wrap=True)
    if missing:
        raise typer.Exit(1)

