"""Payments: subscriptions, webhook events (idempotency) and the grants each payment bought.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "subscriptions",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("user_id", Id, nullable=False),
        sa.Column("plan", sa.String(length=32), nullable=False),
        sa.Column("pending_plan", sa.String(length=32), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("stripe_customer_id", sa.String(length=100), nullable=True),
        sa.Column("stripe_subscription_id", sa.String(length=100), nullable=True),
        sa.Column("current_period_start_ms", sa.BigInteger(), nullable=True),
        sa.Column("current_period_end_ms", sa.BigInteger(), nullable=True),
        sa.Column("cancel_at_period_end", sa.Boolean(), nullable=False),
        sa.Column("last_event_ms", sa.BigInteger(), nullable=True),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_subscriptions_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscriptions")),
        sa.UniqueConstraint("user_id", name=op.f("uq_subscriptions_user_id")),
        sa.UniqueConstraint("stripe_subscription_id", name=op.f("uq_subscriptions_stripe_subscription_id")),
    )
    op.create_index(op.f("ix_subscriptions_stripe_customer_id"), "subscriptions", ["stripe_customer_id"], unique=False)
    op.create_table(
        "payment_events",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=100), nullable=False),
        sa.Column("type", sa.String(length=100), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("received_ms", sa.BigInteger(), nullable=False),
        sa.Column("processed_ms", sa.BigInteger(), nullable=True),
        sa.Column("user_id", Id, nullable=True),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("payload", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_payment_events_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_events")),
        sa.UniqueConstraint("event_id", name=op.f("uq_payment_events_event_id")),
    )
    op.create_index("ix_payment_events_pending", "payment_events", ["processed_ms"], unique=False)
    op.create_table(
        "payment_grants",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("payment_ref", sa.String(length=200), nullable=False),
        sa.Column("grant_id", Id, nullable=False),
        sa.Column("user_id", Id, nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["grant_id"], ["grants.id"], name=op.f("fk_payment_grants_grant_id_grants")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_payment_grants_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_grants")),
    )
    op.create_index(op.f("ix_payment_grants_payment_ref"), "payment_grants", ["payment_ref"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_payment_grants_payment_ref"), table_name="payment_grants")
    op.drop_table("payment_grants")
    op.drop_index("ix_payment_events_pending", table_name="payment_events")
    op.drop_table("payment_events")
    op.drop_index(op.f("ix_subscriptions_stripe_customer_id"), table_name="subscriptions")
    op.drop_table("subscriptions")
