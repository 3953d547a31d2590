"""`switchboard balance|usage|usage-export|ledger ...`: what users spent, and the books."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import Optional

import typer
from rich.table import Table
from sqlalchemy import select

from switchboard.accounts.usage import list_usage
from switchboard.billing.ledger import now_ms
from switchboard.billing.periods import DAY_MS
from switchboard.cli.common import Store, err, open_store, out
from switchboard.core.money import format_credits, ucr_to_credits_float
from switchboard.store.db import reading
from switchboard.store.schema import users as users_table

ledger_app = typer.Typer(help="The double-entry credit ledger.", no_args_is_help=True)


def balance(email: str, as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """A user's available and held credits."""
    store = open_store()
    user = store.user(email)
    b = store.read(lambda conn: store.ledger.balance(conn, user.id))
    period_end = datetime.fromtimestamp(b.period_end_ms / 1000, tz=timezone.utc).isoformat()
    data = {
        "email": user.email, "plan": user.plan,
        "available_credits": ucr_to_credits_float(b.available_ucr), "held_credits": ucr_to_credits_float(b.held_ucr),
        "balance_credits": ucr_to_credits_float(b.balance_ucr), "debt_credits": ucr_to_credits_float(b.debt_ucr),
        "available_ucr": b.available_ucr, "held_ucr": b.held_ucr, "period_end": period_end,
    }
    if as_json:
        sys.stdout.write(json.dumps(data) + "\n")
        return
    table = Table(title=f"{user.email} ({user.plan})", show_header=False)
    for label, ucr in (("available", b.available_ucr), ("held", b.held_ucr), ("balance", b.balance_ucr), ("debt", b.debt_ucr)):
        table.add_row(label, format_credits(ucr) + " credits")
    table.add_row("period ends", period_end)
    out.print(table)


def usage(
    email: str,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output (one JSON array)."),
    limit: int = typer.Option(20, min=1, max=10_000, help="How many records, newest first."),
    by: Optional[str] = typer.Option(None, help="Totals per 'day' or per 'model' instead of records."),
    days: int = typer.Option(30, min=1, help="With --by: how many days back."),
) -> None:
    """A user's usage records, newest first (or totals with --by day|model)."""
    store = open_store()
    user = store.user(email)
    if by is not None:
        _print_summary(store, user.id, by, days, as_json, title=f"usage of {user.email} by {by}")
        return
    records, _ = store.read(lambda conn: list_usage(conn, user.id, limit))
    if as_json:
        sys.stdout.write(json.dumps(records) + "\n")
        return
    table = Table(title=f"usage of {user.email}")
    table.add_column("when (UTC)", no_wrap=True)
    table.add_column("model", no_wrap=True)
    table.add_column("outcome")
    for col in ("in", "out", "TTFT ms", "tok/s", "credits"):
        table.add_column(col, justify="right")
    for r in records:
        table.add_row(
            datetime.fromtimestamp(r["created_ms"] / 1000, tz=timezone.utc).strftime("%m-%d %H:%M:%S"),
            r["model"], r["outcome"], str(r["prompt_tokens"]), str(r["completion_tokens"]),
            _num(r["ttft_ms"]), _num(r["decode_tokens_per_s"]), r["credits_charged_exact"],
        )
    out.print(table)


def _print_summary(store: Store, user_id: int | None, by: str, days: int, as_json: bool, title: str) -> None:
    from switchboard.accounts.usage import summarize

    if by not in ("day", "model"):
        err.print("[red]error:[/red] --by takes 'day' or 'model'")
        raise typer.Exit(2)
    since = now_ms() - days * DAY_MS
    rows = store.read(lambda conn: summarize(conn, user_id, by, since))
    if as_json:
        sys.stdout.write(json.dumps(rows) + "\n")
        return
    table = Table(title=title)
    for col in (by, "requests", "failed", "prompt", "completion", "USD", "credits"):
        table.add_column(col, justify="left" if col == by else "right", no_wrap=col == by)
    for r in rows:
        table.add_row(r[by], str(r["requests"]), str(r["failed_requests"]), str(r["prompt_tokens"]),
                      str(r["completion_tokens"]), r["cost_usd"], format_credits(r["charged_ucr"]))
    out.print(table)


def usage_export(
    email: Optional[str] = typer.Option(None, help="One user's records (default: every user's, for the operator)."),
    fmt: str = typer.Option("csv", "--format", help="csv or json (JSON lines)."),
    by: Optional[str] = typer.Option(None, help="Export totals per 'day' or 'model' instead of records."),
    days: int = typer.Option(30, min=1, help="With --by: how many days back."),
) -> None:
    """Export usage records (or totals) as CSV or JSON lines on stdout."""
    from switchboard.accounts.usage import EXPORT_COLUMNS, export_rows, to_csv

    store = open_store()
    user_id = None
    if email:
        user_id = store.user(email).id
    if fmt not in ("csv", "json"):
        err.print("[red]error:[/red] --format takes csv or json")
        raise typer.Exit(2)
    if by is not None:
        _print_summary(store, user_id, by, days, True, title="")
        return
    with reading(store.engine) as conn:
        rows = export_rows(conn, user_id)
        if fmt == "json":
            for row in rows:
                sys.stdout.write(json.dumps(row) + "\n")
        else:
            for chunk in to_csv(rows, (*EXPORT_COLUMNS, "user_id")):
                sys.stdout.write(chunk)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


@ledger_app.command("verify")
def ledger_verify(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Recompute every balance from its entries; exit 1 naming each account that disagrees."""
    store = open_store()
    mismatches, balances, (lost_ucr, lost_requests) = store.read(lambda conn: (
        store.ledger.verify(conn), store.ledger.account_balances(conn), store.ledger.operator_losses(conn)))
    emails = dict(store.read(lambda conn: conn.execute(select(users_table.c.id, users_table.c.email)).all()))
    problems = [
        {"account": f"wallet of {emails.get(m.user_id, m.user_id)}" if m.user_id else "ledger", "check": m.what,
         "cached_ucr": m.cached, "derived_ucr": m.derived}
        for m in mismatches
    ]
    total = sum(balances.values())
    if total != 0:
        problems.append({"account": "all accounts", "check": "the accounts do not sum to zero", "cached_ucr": total, "derived_ucr": 0})
    if as_json:
        sys.stdout.write(json.dumps({"ok": not problems, "problems": problems, "accounts_ucr": balances,
                                     "operator_losses": {"ucr": lost_ucr, "requests": lost_requests}}) + "\n")
    else:
        table = Table(title="accounts (credits; they sum to zero)")
        table.add_column("account")
        table.add_column("balance", justify="right")
        for account, ucr in sorted(balances.items()):
            table.add_row(account, format_credits(ucr))
        out.print(table)
        out.print(f"operator losses: {format_credits(lost_ucr)} credits over {lost_requests} requests "
                  "(inference cost not charged to users: beyond a hold, or not delivered)")
        for p in problems:
            err.print(f"[red]MISMATCH[/red] {p['account']}: {p['check']}: cached {format_credits(p['cached_ucr'])}, "
                      f"derived {format_credits(p['derived_ucr'])}")
        if not problems:
            out.print("ledger verified: every transaction balances and every cached balance equals its entries")
    if problems:
        raise typer.Exit(1)


@ledger_app.command("statement")
def ledger_statement(
    email: str,
    month: Optional[str] = typer.Option(None, help="YYYY-MM (default: this month, UTC)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """A user's monthly statement: opening balance, grants, charges, expiries, closing balance."""
    from switchboard.billing.statements import statement

    store = open_store()
    user = store.user(email)
    try:
        st = store.read(lambda conn: statement(conn, user.id, month))
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if as_json:
        sys.stdout.write(json.dumps({"email": user.email, **st.as_json()}) + "\n")
        return
    table = Table(title=f"{user.email}, {st.month}")
    table.add_column("")
    table.add_column("credits", justify="right")
    for label, ucr in st.rows():
        table.add_row(label, format_credits(ucr))
    out.print(table)
    out.print(f"{st.charges_count} charged requests")
