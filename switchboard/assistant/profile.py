"""Who the assistant is talking with: the user's plan, name and time zone."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, select, update

from switchboard.assistant.when import WhenError, zone
from switchboard.core.errors import InvalidRequest, NotFound
from switchboard.store.schema import users


@dataclass(frozen=True, slots=True)
class Profile:
    user_id: int
    email: str
    plan: str
    name: str | None
    time_zone: str

    @property
    def display_name(self) -> str:
        return self.name or self.email.partition("@")[0]


# Built once: every turn reads it (see assistant.conversations).
_PROFILE = select(users.c.id, users.c.email, users.c.plan, users.c.name, users.c.time_zone).where(
    users.c.id == bindparam("user_id"))


def load_profile(conn: Connection, user_id: int) -> Profile:
    row = conn.execute(_PROFILE, {"user_id": user_id}).first()
    if row is None:
        raise NotFound(f"no user {user_id}")
    return Profile(int(row.id), row.email, row.plan, row.name, row.time_zone or "UTC")


def checked_zone(name: str) -> str:
    """`name` if it is an IANA time zone; InvalidRequest otherwise."""
    try:
        zone(name)
    except WhenError as exc:
        raise InvalidRequest(str(exc), param="time_zone") from None
    return name


def set_time_zone(conn: Connection, user_id: int, time_zone: str) -> None:
    conn.execute(update(users).where(users.c.id == user_id).values(time_zone=checked_zone(time_zone)))


def set_name(conn: Connection, user_id: int, name: str | None) -> None:
    if name is not None and (len(name) > 100 or not name.strip()):
        raise InvalidRequest("a name is 1 to 100 characters", param="name")
    conn.execute(update(users).where(users.c.id == user_id).values(name=name.strip() if name else None))
