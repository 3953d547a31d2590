"""Spending caps, low-balance alert state and the notifications outbox.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("wallets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("daily_cap_ucr", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("monthly_cap_ucr", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("period_allowance_ucr", sa.BigInteger(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("alert_level", sa.Integer(), nullable=False, server_default="0"))
    # Existing wallets: this period's allowance is the allowance grant of the period.
    op.execute(
        "UPDATE wallets SET period_allowance_ucr = COALESCE((SELECT MAX(g.amount_ucr) FROM grants g "
        "WHERE g.user_id = wallets.user_id AND g.kind = 'allowance' AND g.created_ms >= wallets.period_start_ms), 0)"
    )
    op.create_table(
        "notifications",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("user_id", Id, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("threshold_pct", sa.Integer(), nullable=False),
        sa.Column("period_start_ms", sa.BigInteger(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("delivered_ms", sa.BigInteger(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_notifications_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notifications")),
        sa.UniqueConstraint("user_id", "kind", "threshold_pct", "period_start_ms", name="uq_notifications_once"),
    )
    op.create_index("ix_notifications_pending", "notifications", ["delivered_ms", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_notifications_pending", table_name="notifications")
    op.drop_table("notifications")
    with op.batch_alter_table("wallets", schema=None) as batch_op:
        batch_op.drop_column("alert_level")
        batch_op.drop_column("period_allowance_ucr")
        batch_op.drop_column("monthly_cap_ucr")
        batch_op.drop_column("daily_cap_ucr")
