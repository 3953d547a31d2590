"""Discord: the Gateway connection held by one process (a lease, and the session to resume)
and slash commands' interaction tokens (store.channels_schema).

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "channel_connections",
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("bot_id", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.BigInteger(), nullable=True),
        sa.Column("lease_until_ms", sa.BigInteger(), nullable=True),
        sa.Column("session_id", sa.String(length=200), nullable=True),
        sa.Column("resume_url", sa.String(length=500), nullable=True),
        sa.Column("seq", sa.BigInteger(), nullable=True),
        sa.Column("connected_ms", sa.BigInteger(), nullable=True),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("channel", "bot_id", name=op.f("pk_channel_connections")),
    )
    op.create_table(
        "discord_interactions",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("token", sa.Text(), nullable=False),
        sa.Column("ephemeral", sa.Boolean(), server_default="0", nullable=False),
        sa.Column("original_done", sa.Boolean(), server_default="0", nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_discord_interactions")),
    )
    op.create_index("ix_discord_interactions_created", "discord_interactions", ["created_ms"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_discord_interactions_created", table_name="discord_interactions")
    op.drop_table("discord_interactions")
    op.drop_table("channel_connections")
