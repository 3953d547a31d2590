"""The chat channels: identities, link codes, the inbox and the outbox (store.channels_schema).

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "channel_identities",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("external_user_id", sa.String(length=100), nullable=False),
        sa.Column("alt_user_id", sa.String(length=100), nullable=True),
        sa.Column("user_id", Id, nullable=True),
        sa.Column("chat_id", sa.String(length=100), nullable=False),
        sa.Column("linked_ms", sa.BigInteger(), nullable=True),
        sa.Column("last_inbound_ms", sa.BigInteger(), nullable=True),
        sa.Column("help_sent_ms", sa.BigInteger(), nullable=True),
        sa.Column("link_failures", sa.Integer(), server_default="0", nullable=False),
        sa.Column("link_failures_since_ms", sa.BigInteger(), nullable=True),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_channel_identities_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_channel_identities")),
        sa.UniqueConstraint("channel", "external_user_id", name="uq_channel_identities_external"),
    )
    op.create_index("ix_channel_identities_user", "channel_identities", ["user_id"], unique=False)
    op.create_index("ix_channel_identities_alt", "channel_identities", ["channel", "alt_user_id"], unique=False)
    op.create_index("ix_channel_identities_chat", "channel_identities", ["channel", "chat_id"], unique=False)
    op.create_table(
        "channel_link_codes",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", Id, nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("expires_ms", sa.BigInteger(), nullable=False),
        sa.Column("used_ms", sa.BigInteger(), nullable=True),
        sa.Column("used_by", sa.String(length=130), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_channel_link_codes_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_channel_link_codes")),
        sa.UniqueConstraint("code_hash", name=op.f("uq_channel_link_codes_code_hash")),
    )
    op.create_table(
        "channel_inbox",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("bot_id", sa.String(length=64), nullable=False),
        sa.Column("external_id", sa.String(length=200), nullable=False),
        sa.Column("user_id", Id, nullable=True),
        sa.Column("chat_id", sa.String(length=100), nullable=False),
        sa.Column("chat_key", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("text_ct", sa.LargeBinary(), nullable=True),
        sa.Column("reply_to", sa.String(length=200), nullable=True),
        sa.Column("thread_id", sa.String(length=64), nullable=True),
        sa.Column("is_group", sa.Boolean(), server_default="0", nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("claimed_by", sa.BigInteger(), nullable=True),
        sa.Column("claim_until_ms", sa.BigInteger(), nullable=True),
        sa.Column("conversation_id", sa.String(length=40), nullable=True),
        sa.Column("mark_message_id", sa.BigInteger(), nullable=True),
        sa.Column("received_ms", sa.BigInteger(), nullable=False),
        sa.Column("answered_ms", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_channel_inbox_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_channel_inbox")),
        sa.UniqueConstraint("channel", "bot_id", "external_id", name="uq_channel_inbox_external"),
    )
    op.create_index("ix_channel_inbox_open", "channel_inbox", ["status", "id"], unique=False)
    op.create_table(
        "channel_outbox",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("bot_id", sa.String(length=64), nullable=False),
        sa.Column("chat_id", sa.String(length=100), nullable=False),
        sa.Column("chat_key", sa.String(length=200), nullable=False),
        sa.Column("user_id", Id, nullable=True),
        sa.Column("inbox_id", sa.BigInteger(), nullable=True),
        sa.Column("message_uid", sa.String(length=40), nullable=True),
        sa.Column("part", sa.Integer(), server_default="0", nullable=False),
        sa.Column("parts", sa.Integer(), server_default="1", nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("text_ct", sa.LargeBinary(), nullable=True),
        sa.Column("notice", sa.Text(), nullable=True),
        sa.Column("reply_to", sa.String(length=200), nullable=True),
        sa.Column("thread_id", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("uncertain", sa.Boolean(), server_default="0", nullable=False),
        sa.Column("next_attempt_ms", sa.BigInteger(), nullable=False),
        sa.Column("claimed_by", sa.BigInteger(), nullable=True),
        sa.Column("claim_until_ms", sa.BigInteger(), nullable=True),
        sa.Column("platform_message_id", sa.String(length=200), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("delivered_ms", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_channel_outbox_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_channel_outbox")),
        sa.UniqueConstraint("message_uid", "part", name="uq_channel_outbox_message_part"),
    )
    op.create_index("ix_channel_outbox_open", "channel_outbox", ["status", "id"], unique=False)
    op.create_table(
        "channel_state",
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.String(length=200), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_error_ms", sa.BigInteger(), nullable=True),
        sa.Column("reminder_mark", sa.BigInteger(), nullable=True),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("channel", name=op.f("pk_channel_state")),
    )


def downgrade() -> None:
    op.drop_table("channel_state")
    op.drop_index("ix_channel_outbox_open", table_name="channel_outbox")
    op.drop_table("channel_outbox")
    op.drop_index("ix_channel_inbox_open", table_name="channel_inbox")
    op.drop_table("channel_inbox")
    op.drop_table("channel_link_codes")
    op.drop_index("ix_channel_identities_chat", table_name="channel_identities")
    op.drop_index("ix_channel_identities_alt", table_name="channel_identities")
    op.drop_index("ix_channel_identities_user", table_name="channel_identities")
    op.drop_table("channel_identities")
