"""API keys: when each was last used (recorded at most once a minute per key, off the request
path), and an index on `revoked_ms`, by which every server process finds the keys revoked since
its last look (every second) and stops accepting them.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A nullable column without a default: on PostgreSQL adding it rewrites nothing.
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_used_ms", sa.BigInteger(), nullable=True))
        batch_op.create_index("ix_api_keys_revoked", ["revoked_ms"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_index("ix_api_keys_revoked")
        batch_op.drop_column("last_used_ms")
