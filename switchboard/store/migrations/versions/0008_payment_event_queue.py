"""Stripe events not applied yet become a queue: a status (processed, pending, parked), attempts
and the time of the next one (backoff), and what each waits for (`payment_event_waits`).

Existing rows: applied ones are `processed`; those still waiting are `pending` and due now;
those recorded as failed (`outcome` starting with "failed") are `parked`, not applied.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("payment_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("status", sa.String(length=16), nullable=False, server_default="processed"))
        batch_op.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("next_attempt_ms", sa.BigInteger(), nullable=True))
        batch_op.drop_index("ix_payment_events_pending")
        batch_op.create_index("ix_payment_events_due", ["status", "next_attempt_ms"], unique=False)
    op.execute("UPDATE payment_events SET status = 'parked', processed_ms = NULL, attempts = 1 "
               "WHERE processed_ms IS NOT NULL AND outcome LIKE 'failed%'")
    op.execute("UPDATE payment_events SET status = 'pending', next_attempt_ms = received_ms, attempts = 1 "
               "WHERE processed_ms IS NULL AND status = 'processed'")
    op.create_table(
        "payment_event_waits",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("event_row_id", Id, nullable=False),
        sa.Column("ref", sa.String(length=100), nullable=False),
        sa.ForeignKeyConstraint(["event_row_id"], ["payment_events.id"],
                                name=op.f("fk_payment_event_waits_event_row_id_payment_events")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_event_waits")),
    )
    op.create_index(op.f("ix_payment_event_waits_event_row_id"), "payment_event_waits", ["event_row_id"], unique=False)
    op.create_index(op.f("ix_payment_event_waits_ref"), "payment_event_waits", ["ref"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_payment_event_waits_ref"), table_name="payment_event_waits")
    op.drop_index(op.f("ix_payment_event_waits_event_row_id"), table_name="payment_event_waits")
    op.drop_table("payment_event_waits")
    # Parked events become what 0003's code called failed (recorded, not applied, not retried).
    op.execute("UPDATE payment_events SET processed_ms = received_ms, outcome = CASE WHEN outcome LIKE 'failed%' "
               "THEN outcome ELSE 'failed: ' || COALESCE(outcome, '') END WHERE status = 'parked'")
    with op.batch_alter_table("payment_events", schema=None) as batch_op:
        batch_op.drop_index("ix_payment_events_due")
        batch_op.create_index("ix_payment_events_pending", ["processed_ms"], unique=False)
        batch_op.drop_column("next_attempt_ms")
        batch_op.drop_column("attempts")
        batch_op.drop_column("status")
