"""Holds belong to a server process: the `processes` table (heartbeats), and on each hold its
process and the progress of its stream as last recorded, so that the holds of a process that
died are resolved within seconds, charged for what was delivered.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

_HOLD_COLUMNS = (
    ("process_id", sa.BigInteger()),
    ("progress_prompt_tokens", sa.Integer()),
    ("progress_completion_tokens", sa.Integer()),
    ("progress_ucr", sa.BigInteger()),
    ("progress_ms", sa.BigInteger()),
)


def upgrade() -> None:
    op.create_table(
        "processes",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("pid_start", sa.String(length=100), nullable=True),
        sa.Column("started_ms", sa.BigInteger(), nullable=False),
        sa.Column("heartbeat_ms", sa.BigInteger(), nullable=False),
        sa.Column("stopped_ms", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_processes")),
    )
    # Nullable columns without defaults: on PostgreSQL adding them rewrites nothing.
    with op.batch_alter_table("holds", schema=None) as batch_op:
        for name, type_ in _HOLD_COLUMNS:
            batch_op.add_column(sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("holds", schema=None) as batch_op:
        for name, _ in reversed(_HOLD_COLUMNS):
            batch_op.drop_column(name)
    op.drop_table("processes")
