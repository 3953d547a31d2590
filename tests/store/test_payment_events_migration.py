"""Migration 0008 turns the recorded Stripe events into the queue's states, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic import command
from sqlalchemy import Engine, text

from switchboard.billing import event_queue
from switchboard.store.db import make_engine, reading
from switchboard.store.migrate import alembic_config, upgrade


def test_0008_keeps_applied_events_and_queues_the_rest(database_url: str) -> None:
    engine: Engine = make_engine(database_url)
    with engine.connect() as conn:
        config = alembic_config()
        config.attributes["connection"] = conn
        command.upgrade(config, "0007")
        conn.commit()
    with engine.begin() as conn:
        for event_id, processed, outcome, payload in (
            ("evt_done", 5, "pack 600 granted", None),
            ("evt_waiting", None, "pending: no grant bought by this payment yet", '{"id": "evt_waiting"}'),
            ("evt_failed", 5, "failed: KeyError('period')", '{"id": "evt_failed"}'),
        ):
            conn.execute(text("INSERT INTO payment_events (event_id, type, created_ms, received_ms, processed_ms, outcome, "
                              "payload) VALUES (:id, 'charge.refunded', 1, 2, :processed, :outcome, :payload)"),
                         {"id": event_id, "processed": processed, "outcome": outcome, "payload": payload})
    upgrade(engine)
    with reading(engine) as conn:
        rows = {q.event_id: (q.status, q.next_attempt_ms) for q in event_queue.not_applied(conn)}
        assert rows == {"evt_failed": ("parked", None), "evt_waiting": ("pending", 2)}
        assert [tuple(r) for r in conn.execute(text("SELECT status, processed_ms FROM payment_events "
                                                    "WHERE event_id = 'evt_done'"))] == [("processed", 5)]
        assert event_queue.due(conn, at=2, limit=10) == [(2, {"id": "evt_waiting"})]  # the second row
    with engine.connect() as conn:  # and back, and forth again
        config.attributes["connection"] = conn
        command.downgrade(config, "0007")
        command.upgrade(config, "head")
        conn.commit()
    with reading(engine) as conn:
        assert {q.event_id: q.status for q in event_queue.not_applied(conn)} == {"evt_failed": "parked", "evt_waiting": "pending"}
    engine.dispose()
