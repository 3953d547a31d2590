"""Double-entry ledger: every entry belongs to a transaction and an account.

Existing single-sided entries become wallet entries, each its own transaction, and get the
counter entry they imply: grants from promotions, charges to revenue (the part beyond the
user's credit from receivables, recognised as debt), expiries to breakage.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("txn_id", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("account", sa.String(length=32), nullable=True))
    conn = op.get_bind()
    conn.execute(sa.text("UPDATE ledger_entries SET txn_id = 'legacy-' || CAST(id AS VARCHAR(20)), account = "
                         "CASE WHEN kind = 'charge' AND grant_id IS NULL THEN 'receivables' ELSE 'wallet' END"))
    conn.execute(sa.text(
        "INSERT INTO ledger_entries (txn_id, account, user_id, kind, amount_ucr, grant_id, hold_id, request_id, created_ms, memo) "
        "SELECT txn_id, CASE kind WHEN 'grant' THEN 'promotions' WHEN 'charge' THEN 'revenue' ELSE 'breakage' END, "
        "user_id, kind, -amount_ucr, grant_id, hold_id, request_id, created_ms, 'counter entry (migration 0002)' "
        "FROM ledger_entries WHERE txn_id LIKE 'legacy-%'"
    ))
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.alter_column("txn_id", existing_type=sa.String(length=40), nullable=False)
        batch_op.alter_column("account", existing_type=sa.String(length=32), nullable=False)
        batch_op.create_index(batch_op.f("ix_ledger_entries_txn_id"), ["txn_id"], unique=False)
        batch_op.create_index("ix_ledger_entries_user_account_created", ["user_id", "account", "created_ms"], unique=False)


def downgrade() -> None:
    conn = op.get_bind()
    conn.execute(sa.text("DELETE FROM ledger_entries WHERE account NOT IN ('wallet', 'receivables')"))
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.drop_index("ix_ledger_entries_user_account_created")
        batch_op.drop_index(batch_op.f("ix_ledger_entries_txn_id"))
        batch_op.drop_column("account")
        batch_op.drop_column("txn_id")
