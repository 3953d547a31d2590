"""Long-term memory: each user's encrypted index snapshot (store.memory_schema.memory_snapshots).

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "memory_snapshots",
        sa.Column("user_id", Id, nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("snapshot_ct", sa.LargeBinary(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_memory_snapshots_user_id_users")),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_memory_snapshots")),
    )


def downgrade() -> None:
    op.drop_table("memory_snapshots")
