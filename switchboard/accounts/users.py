"""Users: one per e-mail address, each with a plan and a wallet opened on creation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, insert, select
from sqlalchemy.exc import IntegrityError

from switchboard.billing.ledger import Ledger, now_ms
from switchboard.core.errors import InvalidRequest, NotFound
from switchboard.store.schema import users

DEMO_EMAIL = "demo@switchboard.local"  # the user `make run` creates (`switchboard demo-setup`)


@dataclass(frozen=True, slots=True)
class User:
    id: int
    email: str
    plan: str
    created_ms: int


def normalise_email(email: str) -> str:
    email = email.strip().lower()
    local, _, domain = email.partition("@")
    if not local or "." not in domain or " " in email:
        raise InvalidRequest(f"not an e-mail address: {email!r}", param="email")
    return email


def create_user(conn: Connection, ledger: Ledger, email: str, plan: str) -> User:
    """Create the user and open the wallet with the plan's first allowance, in one transaction."""
    if plan not in ledger.allowance_ucr_by_plan:
        raise InvalidRequest(f"unknown plan {plan!r}; known: {', '.join(sorted(ledger.allowance_ucr_by_plan))}")
    email = normalise_email(email)
    at = now_ms()
    try:
        with conn.begin_nested():
            user_id = conn.execute(insert(users).values(email=email, plan=plan, created_ms=at)).inserted_primary_key[0]
    except IntegrityError:
        raise InvalidRequest(f"a user with e-mail {email} already exists", param="email") from None
    ledger.open_wallet(conn, int(user_id), plan, at)
    return User(int(user_id), email, plan, at)


def user_of_row(row: Any) -> User:
    return User(row.id, row.email, row.plan, row.created_ms)


def find_user(conn: Connection, email: str) -> User:
    row = conn.execute(select(users).where(users.c.email == normalise_email(email))).first()
    if row is None:
        raise NotFound(f"no user with e-mail {email.strip().lower()}")
    return user_of_row(row)


def any_user(conn: Connection) -> bool:
    return conn.execute(select(users.c.id).limit(1)).first() is not None
