"""What the inbox and the outbox share: rows worked on by one process at a time, in order per chat.

A row is `pending` until a process claims it with one guarded UPDATE (status `busy`, the
process's registry id in `claimed_by`, a lease in `claim_until_ms` renewed while it works).
A claim is taken over when its lease lapsed or its process is no longer alive in the
`processes` registry (a process found dead, or stopped: store.processes), so work left by a
killed server is picked up at once by its successor or by any other server. Within one chat
only the oldest open row may be worked on: a chat's messages are answered, and its replies
delivered, in order.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Connection, Table, and_, or_, select, update

from switchboard.store.schema import processes

SCAN = 500  # open rows looked at per pass


def _alive():  # type: ignore[no-untyped-def]
    return select(processes.c.id).where(processes.c.stopped_ms.is_(None))


def _abandoned(table: Table, busy: str, now: int) -> ColumnElement[bool]:
    return and_(table.c.status == busy,
                or_(table.c.claim_until_ms < now, table.c.claimed_by.is_(None), ~table.c.claimed_by.in_(_alive())))


def heads(conn: Connection, table: Table, busy: str, now: int) -> list[Any]:
    """The oldest open row of each chat that may be claimed now: pending (and due, where the
    table has `next_attempt_ms`) or abandoned by its claimer. A chat whose oldest open row is
    being worked on, or waits for its next attempt, has none."""
    rows = conn.execute(select(table).where(table.c.status.in_(("pending", busy))).order_by(table.c.id).limit(SCAN)).all()
    alive = {int(r.id) for r in conn.execute(_alive())}
    found, seen = [], set()
    for row in rows:
        if row.chat_key in seen:
            continue
        seen.add(row.chat_key)
        if row.status == "pending":
            if "next_attempt_ms" in row._mapping and int(row.next_attempt_ms) > now:
                continue
        elif row.claim_until_ms is not None and int(row.claim_until_ms) >= now and row.claimed_by in alive:
            continue
        found.append(row)
    return found


def claim(conn: Connection, table: Table, busy: str, row_id: int, me: int, now: int, lease_ms: int) -> bool:
    """Claim the row for process `me`, if it is still pending or abandoned (one UPDATE)."""
    claimed = conn.execute(update(table)
                           .where(table.c.id == row_id, or_(table.c.status == "pending", _abandoned(table, busy, now)))
                           .values(status=busy, claimed_by=me, claim_until_ms=now + lease_ms,
                                   attempts=table.c.attempts + 1)).rowcount
    return claimed == 1


def renew(conn: Connection, table: Table, busy: str, row_id: int, me: int, until: int) -> bool:
    """Extend this process's claim; False when it is no longer ours."""
    return conn.execute(update(table).where(table.c.id == row_id, table.c.status == busy, table.c.claimed_by == me)
                        .values(claim_until_ms=until)).rowcount == 1


def settle(conn: Connection, table: Table, busy: str, row_id: int, me: int, **values: Any) -> bool:
    """End this process's claim with `values` (a new status...); False when it is not ours."""
    return conn.execute(update(table).where(table.c.id == row_id, table.c.status == busy, table.c.claimed_by == me)
                        .values(claimed_by=None, claim_until_ms=None, **values)).rowcount == 1
