"""The lease that keeps a platform connection (Discord's Gateway) with one server process at a
time, on SQLite and PostgreSQL: taken when free, refused while held, taken over when the
holder's lease lapsed or the registry no longer has the holder alive, and the session left for
the next holder to resume."""

from __future__ import annotations

from sqlalchemy import Engine

from switchboard.channels import connections
from switchboard.channels.connections import Session
from switchboard.store import processes
from switchboard.store.db import reading
from switchboard.store.runner import TransactionRunner

LEASE_MS = 10_000


def test_one_holder_at_a_time_and_takeovers(engine: Engine) -> None:
    run = TransactionRunner(engine).run_sync
    one, two = (run(lambda c, pid=pid: processes.register(c, "host", pid, None)) for pid in (101, 102))

    def take(me: int, now: int) -> Session | None:
        return run(lambda c: connections.take(c, "discord", "app", me, now, LEASE_MS))

    assert take(one, 1_000) == Session()  # free, and no session yet
    assert take(two, 2_000) is None  # held
    session = Session("sess-1", "wss://resume.example", 41)
    assert run(lambda c: connections.renew(c, "discord", "app", one, 5_000, LEASE_MS, session))
    assert take(two, 14_000) is None  # renewed at 5 s: held until 15 s
    assert take(two, 15_001) == session  # lapsed: taken over, with the session to resume
    assert not run(lambda c: connections.renew(c, "discord", "app", one, 15_500, LEASE_MS, Session()))  # not one's now
    assert take(one, 16_000) is None
    run(lambda c: processes.mark_dead(c, [two]))  # the registry found the holder dead
    assert take(one, 16_500) == session  # at once, its lease notwithstanding
    assert run(lambda c: connections.release(c, "discord", "app", one, 17_000, Session("sess-1", "wss://r", 50)))
    with reading(engine) as conn:
        held = connections.holder(conn, "discord")
    assert held is not None and held.process_id is None and held.session == Session("sess-1", "wss://r", 50)
    three = run(lambda c: processes.register(c, "host", 103, None))
    assert take(three, 17_001) == Session("sess-1", "wss://r", 50)  # released: taken at once, resumed
    assert take(three, 17_002) is not None  # its own: taking again renews
