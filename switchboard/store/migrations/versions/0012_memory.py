"""Long-term memory: memories, per-user memory state, extraction marks (store.memory_schema).

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "memories",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("uid", sa.String(length=40), nullable=False),
        sa.Column("user_id", Id, nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("text_ct", sa.LargeBinary(), nullable=False),
        sa.Column("embedding_ct", sa.LargeBinary(), nullable=False),
        sa.Column("meta_ct", sa.LargeBinary(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("superseded_ms", sa.BigInteger(), nullable=True),
        sa.Column("superseded_by", sa.BigInteger(), nullable=True),
        sa.Column("rev", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_memories_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_memories")),
        sa.UniqueConstraint("uid", name=op.f("uq_memories_uid")),
    )
    op.create_index("ix_memories_user_rev", "memories", ["user_id", "rev"], unique=False)
    op.create_index("ix_memories_user_id", "memories", ["user_id", "id"], unique=False)
    op.create_table(
        "memory_users",
        sa.Column("user_id", Id, nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default="1", nullable=False),
        sa.Column("version", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("reset_version", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_memory_users_user_id_users")),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_memory_users")),
    )
    op.create_table(
        "memory_extraction_marks",
        sa.Column("conversation_id", sa.String(length=40), nullable=False),
        sa.Column("user_id", Id, nullable=False),
        sa.Column("upto_message_id", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["conversation_id"], ["conversations.id"], ondelete="CASCADE",
                                name=op.f("fk_memory_extraction_marks_conversation_id_conversations")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_memory_extraction_marks_user_id_users")),
        sa.PrimaryKeyConstraint("conversation_id", name=op.f("pk_memory_extraction_marks")),
    )


def downgrade() -> None:
    op.drop_table("memory_extraction_marks")
    op.drop_table("memory_users")
    op.drop_index("ix_memories_user_id", table_name="memories")
    op.drop_index("ix_memories_user_rev", table_name="memories")
    op.drop_table("memories")
