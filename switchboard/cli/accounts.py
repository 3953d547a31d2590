"""`switchboard users|keys|credits|caps ...`: the accounts an operator looks after every day."""

from __future__ import annotations

import json
import sys
from typing import Any, Optional

import typer
from rich.table import Table
from sqlalchemy import select

from switchboard.accounts import admin
from switchboard.accounts import keys as keys_mod
from switchboard.accounts import users as users_mod
from switchboard.billing.ledger import now_ms
from switchboard.billing.periods import DAY_MS
from switchboard.cli.common import error_line, fail, open_store, out, parse_credits, utc
from switchboard.core.errors import SwitchboardError
from switchboard.core.money import format_credits, ucr_to_credits_float

users_app = typer.Typer(help="Users and plans.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
credits_app = typer.Typer(help="Credit grants and debits.", no_args_is_help=True)
caps_app = typer.Typer(help="Per-user spending caps.", no_args_is_help=True)

JSON = typer.Option(False, "--json", help="Machine-readable output.")


def _credits(ucr: int | None) -> str:
    return "none" if ucr is None else format_credits(ucr)


def _emit(data: Any) -> None:
    sys.stdout.write(json.dumps(data) + "\n")


# -- users ------------------------------------------------------------------------------------
@users_app.command("create")
def users_create(email: str, plan: str = typer.Option("free", help="free, plus or pro (or a configured plan).")) -> None:
    """Create a user with the plan's monthly allowance."""
    store = open_store()
    try:
        user = store.write(lambda conn: users_mod.create_user(conn, store.ledger, email, plan))
    except SwitchboardError as exc:
        fail(exc)
    out.print(f"created user {user.email} (id {user.id}, plan {user.plan}, "
              f"{store.settings.plan(plan).monthly_credits} credits this month)")


@users_app.command("list")
def users_list(
    plan: Optional[str] = typer.Option(None, help="Only users on this plan."),
    limit: int = typer.Option(100, min=1, help="Show at most this many, oldest first."),
    as_json: bool = JSON,
) -> None:
    """Every user: plan, credits available and held, active keys."""
    store = open_store()
    rows, total = store.read(lambda conn: (admin.list_users(conn, store.ledger, limit, plan), admin.count_users(conn)))
    if as_json:
        _emit([{**r, "available_credits": ucr_to_credits_float(r["available_ucr"]),
                "held_credits": ucr_to_credits_float(r["held_ucr"])} for r in rows])
        return
    if not rows:
        out.print("no users" + (f" on the {plan} plan" if plan else "") + " (create one with `switchboard users create EMAIL`)")
        return
    table = Table(title=f"users ({len(rows)} of {total})" if len(rows) < total else "users")
    for col in ("id", "email", "plan", "created (UTC)", "available", "held", "keys"):
        table.add_column(col, justify="right" if col in ("id", "available", "held", "keys") else "left",
                         overflow="fold")
    for r in rows:
        table.add_row(str(r["id"]), r["email"], r["plan"], utc(r["created_ms"], "%Y-%m-%d"),
                      format_credits(r["available_ucr"]), format_credits(r["held_ucr"]), str(r["active_keys"]))
    out.print(table)


@users_app.command("show")
def users_show(email: str, as_json: bool = JSON) -> None:
    """One user: plan and subscription, credits, caps, keys and last request."""
    store = open_store()
    user = store.user(email)
    data = store.read(lambda conn: admin.overview(conn, store.ledger, user))
    if as_json:
        _emit(data)
        return
    table = Table(title=f"{user.email} (id {user.id})", show_header=False)
    table.add_column(overflow="fold")
    table.add_column(overflow="fold")
    sub = data["subscription"]
    table.add_row("plan", data["plan"] + (f" (Stripe subscription {sub['status']}"
                                          + (f", {sub['pending_plan']} from the next period" if sub.get("pending_plan") else "")
                                          + ")" if sub else " (not billed by Stripe)"))
    table.add_row("created", utc(data["created_ms"]))
    table.add_row("available", format_credits(data["available_ucr"]) + " credits")
    table.add_row("held", format_credits(data["held_ucr"]) + " credits")
    if data["debt_ucr"]:
        table.add_row("debt", format_credits(data["debt_ucr"]) + " credits")
    table.add_row("period ends", utc(data["period_end_ms"]) + " (next allowance)")
    for cap in data["caps"]:
        table.add_row(f"{cap['cap']} cap", _cap_text(cap))
    keys = data["keys"]
    table.add_row("API keys", f"{keys['active']} active, {keys['revoked']} revoked; last used {utc(keys['last_used_ms'])}")
    last = data["last_request"]
    table.add_row("requests", f"{data['requests']}" + (f"; last {utc(last['at_ms'])} ({last['model']})" if last else ""))
    out.print(table)


def _cap_text(cap: dict[str, Any]) -> str:
    if cap["limit_ucr"] is None:
        return f"none ({format_credits(cap['spent_ucr'])} credits spent or held)"
    return (f"{format_credits(cap['limit_ucr'])} credits; {format_credits(cap['spent_ucr'])} spent or held, "
            f"{format_credits(cap['left_ucr'])} left")


# -- keys -------------------------------------------------------------------------------------
@keys_app.command("create")
def keys_create(email: str, name: Optional[str] = typer.Option(None, help="A label for the key.")) -> None:
    """Create an API key; prints only the key (it is not shown again)."""
    store = open_store()
    user = store.user(email)
    key = store.write(lambda conn: keys_mod.create_key(conn, user.id, name))
    sys.stdout.write(key + "\n")


@keys_app.command("list")
def keys_list(email: str, as_json: bool = JSON) -> None:
    """A user's keys: id, prefix, name, created, last used (to the minute), revoked."""
    store = open_store()
    user = store.user(email)
    keys = store.read(lambda conn: keys_mod.list_keys(conn, user.id))
    if as_json:
        _emit([k.as_json() for k in keys])
        return
    if not keys:
        out.print(f"{user.email} has no API keys (create one with `switchboard keys create {user.email}`)")
        return
    table = Table(title=f"API keys of {user.email}")
    for col in ("id", "prefix", "name", "created (UTC)", "last used (UTC)", "status"):
        table.add_column(col, overflow="fold", justify="right" if col == "id" else "left")
    for k in keys:
        status = "active" if k.revoked_ms is None else f"revoked {utc(k.revoked_ms)}"
        table.add_row(str(k.id), k.prefix + "…", k.name or "", utc(k.created_ms), utc(k.last_used_ms), status)
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(key: str = typer.Argument(..., help="The key's id or its prefix as `keys list` shows it (or the whole key).")) -> None:
    """Revoke a key: every server process refuses it (401) within about a second."""
    store = open_store()
    found = store.read(lambda conn: keys_mod.find_keys(conn, key.rstrip("…")))
    if not found:
        error_line(f"no API key {key!r}: give an id or a prefix from `switchboard keys list EMAIL`")
    if len(found) > 1:
        error_line(f"{len(found)} keys start with {key!r} (ids {', '.join(str(k.id) for k in found)}): give the id")
    [info] = found
    email = store.read(lambda conn: admin.find_by_id(conn, info.user_id))
    owner = email.email if email else f"user {info.user_id}"
    if info.revoked_ms is not None:
        out.print(f"key {info.id} ({info.prefix}…) of {owner} was already revoked at {utc(info.revoked_ms)}")
        return
    store.write(lambda conn: keys_mod.revoke_key(conn, info.id))
    out.print(f"revoked key {info.id} ({info.prefix}…{' ' + repr(info.name) if info.name else ''}) of {owner}; "
              "every running server refuses it within 2 s")


# -- credits ----------------------------------------------------------------------------------
@credits_app.command("grant")
def credits_grant(
    email: str,
    credits: str = typer.Argument(..., help="Credits to add, e.g. 500 or 12.5."),
    reason: str = typer.Option(..., help="Why (kept in the ledger)."),
    expires_days: Optional[int] = typer.Option(None, min=1, help="Expire after this many days (default: never)."),
) -> None:
    """Grant credits to a user."""
    store = open_store()
    amount = parse_credits(credits)
    user = store.user(email)
    expires = None
    if expires_days:
        expires = now_ms() + expires_days * DAY_MS
    store.write(lambda conn: store.ledger.grant(conn, user.id, amount, kind="manual", reason=reason, expires_ms=expires))
    b = store.read(lambda conn: store.ledger.balance(conn, user.id))
    out.print(f"granted {format_credits(amount)} credits to {user.email}; available now {format_credits(b.available_ucr)}")


@credits_app.command("debit")
def credits_debit(
    email: str,
    credits: str = typer.Argument(..., help="Credits to take back, e.g. 500 or 12.5."),
    reason: str = typer.Option(..., help="Why (kept in the ledger, shown on the user's statement)."),
) -> None:
    """Take unspent credits back (e.g. a mistaken grant), newest grants first.

    Through the ledger: each part goes back to the account that funded its grant (promotions,
    or sales for paid-for credit: no money is refunded). Never more than is available: credit
    already spent or held for a running request is not taken, and no debt is made."""
    store = open_store()
    amount = parse_credits(credits)
    user = store.user(email)
    result = store.write(lambda conn: store.ledger.debit(conn, user.id, amount, reason=reason))
    if not result.ok:
        error_line(f"{user.email} has {format_credits(result.available_ucr)} credits available, less than "
                   f"{format_credits(amount)}: debit at most that (spent or held credit cannot be taken back)")
    out.print(f"debited {format_credits(amount)} credits from {user.email}; available now "
              f"{format_credits(result.available_ucr)}")


@credits_app.command("topup")
def credits_topup(
    email: str,
    pack: str = typer.Argument(..., help="A pack name from `switchboard plans`, e.g. 2000."),
    reason: Optional[str] = typer.Option(None, help="Why (kept in the ledger; default: operator top-up)."),
) -> None:
    """Grant a top-up pack as if bought (funded by sales, expires like a bought pack)."""
    from switchboard.billing.payments import grant_pack

    store = open_store()
    user = store.user(email)
    try:
        store.write(lambda conn: grant_pack(conn, store.ledger, store.settings, user.id, pack,
                                            reason=reason or f"pack {pack} (operator top-up)"))
    except SwitchboardError as exc:
        fail(exc)
    b = store.read(lambda conn: store.ledger.balance(conn, user.id))
    out.print(f"granted pack {pack} to {user.email}; available now {format_credits(b.available_ucr)}")


# -- caps -------------------------------------------------------------------------------------
@caps_app.command("set")
def caps_set(
    email: str,
    daily: Optional[str] = typer.Option(None, help="Credits per UTC day, or 'none' to remove the cap."),
    monthly: Optional[str] = typer.Option(None, help="Credits per allowance period, or 'none'."),
) -> None:
    """Set (or remove) a user's daily and monthly spending caps; unset options stay as they are."""
    store = open_store()
    user = store.user(email)
    from switchboard.store.schema import wallets

    def parse(value: Optional[str], old: Optional[int]) -> Optional[int]:
        if value is None:
            return old
        return None if value.lower() == "none" else parse_credits(value)

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


@caps_app.command("show")
def caps_show(email: str, as_json: bool = JSON) -> None:
    """A user's caps, and what counts against each now (charged in its window plus held)."""
    store = open_store()
    user = store.user(email)
    caps = store.read(lambda conn: admin.caps(conn, user.id))
    if as_json:
        _emit({"email": user.email, "caps": caps})
        return
    table = Table(title=f"spending caps of {user.email}")
    for col in ("cap", "window from (UTC)", "limit", "spent or held", "left"):
        table.add_column(col, justify="left" if col in ("cap", "window from (UTC)") else "right", overflow="fold")
    for cap in caps:
        table.add_row(cap["cap"], utc(cap["window_start_ms"]), _credits(cap["limit_ucr"]),
                      format_credits(cap["spent_ucr"]), _credits(cap["left_ucr"]))
    out.print(table)
    out.print("a request that would pass a cap is shortened to fit when it sets no max_tokens, else refused (402)")
