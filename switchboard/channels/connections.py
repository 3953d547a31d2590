"""A platform connection held by one server process at a time (Discord's Gateway: one
websocket per bot, however many server processes there are).

A row per (channel, bot) in `channel_connections`: the holder (this process's registry id) takes
it with one guarded UPDATE, only when it is free, lapsed (`lease_until_ms` passed), or held by a
process the registry no longer has alive (one found dead by the heartbeat, or stopped: see
store.processes), so a holder killed without a word is replaced within a heartbeat or two on
its own host and within the lease elsewhere. The holder renews the lease every third of it and
gives up the connection the moment a renewal finds it taken. The row also carries the session
(`session_id`, `resume_url`, `seq`) so that the next holder resumes it rather than starting
afresh: the events sent meanwhile are then replayed, not lost.
Functions take a Connection and run in the caller's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, or_, select, update

from switchboard.store.channels_schema import channel_connections
from switchboard.store.conflict import insert_or_ignore
from switchboard.store.schema import processes


@dataclass(slots=True)
class Session:
    """What resumes a connection's session (all None: none to resume)."""

    session_id: str | None = None
    resume_url: str | None = None
    seq: int | None = None

    def clear(self) -> None:
        self.session_id, self.resume_url, self.seq = None, None, None


@dataclass(frozen=True, slots=True)
class Holder:
    process_id: int | None
    lease_until_ms: int | None
    connected_ms: int | None
    session: Session


def _key(channel: str, bot_id: str):  # type: ignore[no-untyped-def]
    return (channel_connections.c.channel == channel) & (channel_connections.c.bot_id == bot_id)


def take(conn: Connection, channel: str, bot_id: str, me: int, now: int, lease_ms: int) -> Session | None:
    """The connection for process `me` (free, lapsed, or its holder dead): the session to resume;
    None while another process holds it."""
    insert_or_ignore(conn, channel_connections, {"channel": channel, "bot_id": bot_id, "updated_ms": now},
                     ["channel", "bot_id"])
    alive = select(processes.c.id).where(processes.c.stopped_ms.is_(None))
    table = channel_connections.c
    taken = conn.execute(update(channel_connections)
                         .where(_key(channel, bot_id), or_(table.holder.is_(None), table.holder == me,
                                                           table.lease_until_ms < now, ~table.holder.in_(alive)))
                         .values(holder=me, lease_until_ms=now + lease_ms, connected_ms=now, updated_ms=now)).rowcount
    if taken != 1:
        return None
    row = conn.execute(select(channel_connections).where(_key(channel, bot_id))).one()
    return Session(row.session_id, row.resume_url, None if row.seq is None else int(row.seq))


def renew(conn: Connection, channel: str, bot_id: str, me: int, now: int, lease_ms: int, session: Session) -> bool:
    """Extend the lease and record the session; False when the connection is no longer ours."""
    return conn.execute(update(channel_connections).where(_key(channel, bot_id), channel_connections.c.holder == me)
                        .values(lease_until_ms=now + lease_ms, updated_ms=now, session_id=session.session_id,
                                resume_url=session.resume_url, seq=session.seq)).rowcount == 1


def release(conn: Connection, channel: str, bot_id: str, me: int, now: int, session: Session) -> bool:
    """Give the connection up (a clean stop), leaving its session for the next holder to resume."""
    return conn.execute(update(channel_connections).where(_key(channel, bot_id), channel_connections.c.holder == me)
                        .values(holder=None, lease_until_ms=None, updated_ms=now, session_id=session.session_id,
                                resume_url=session.resume_url, seq=session.seq)).rowcount == 1


def holder(conn: Connection, channel: str, bot_id: str | None = None) -> Holder | None:
    """Who holds the channel's connection (its first bot's, without `bot_id`), for status."""
    query = select(channel_connections).where(channel_connections.c.channel == channel)
    if bot_id is not None:
        query = query.where(channel_connections.c.bot_id == bot_id)
    row = conn.execute(query.order_by(channel_connections.c.bot_id).limit(1)).first()
    if row is None:
        return None
    return Holder(None if row.holder is None else int(row.holder),
                  None if row.lease_until_ms is None else int(row.lease_until_ms),
                  None if row.connected_ms is None else int(row.connected_ms),
                  Session(row.session_id, row.resume_url, None if row.seq is None else int(row.seq)))
