"""Tables for subscriptions and payments (migrations 0003 and 0008), on the shared `schema.metadata`.

Kept beside `store.schema` (not in it) so the payment work stays in its own files; the tables
are registered on the same MetaData, so Alembic and `metadata.create_all` see them once this
module is imported (`store.schema` users that need them import it).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, ForeignKey, Index, Integer, String, Table, Text

from switchboard.store.schema import Id, metadata

# One row per user who has (or had) a paid subscription. `plan` is the plan being paid for;
# users.plan is the plan in force (they differ while a downgrade waits for the next period).
subscriptions = Table(
    "subscriptions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("user_id", ForeignKey("users.id"), nullable=False, unique=True),
    Column("plan", String(32), nullable=False),
    Column("pending_plan", String(32)),  # a downgrade, applied at the next period
    Column("status", String(16), nullable=False),  # active | past_due | canceled | incomplete
    Column("stripe_customer_id", String(100), index=True),
    Column("stripe_subscription_id", String(100), unique=True),
    Column("current_period_start_ms", BigInteger),
    Column("current_period_end_ms", BigInteger),
    Column("cancel_at_period_end", Boolean, nullable=False, default=False),
    Column("last_event_ms", BigInteger),  # `created` of the newest subscription event applied (ordering)
    Column("updated_ms", BigInteger, nullable=False),
)

# Every verified webhook event, once: the idempotency record, and the queue of events not
# applied yet (billing.event_queue). `status`: processed | pending (waiting for something a
# later event or action brings: retried at `next_attempt_ms`, with backoff, and at once when
# an event mentioning what it waits for is applied) | parked (cannot be applied as it is:
# malformed, or retried too often; the operator sees it in `switchboard payments pending`).
payment_events = Table(
    "payment_events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("event_id", String(100), nullable=False, unique=True),
    Column("type", String(100), nullable=False),
    Column("created_ms", BigInteger, nullable=False),  # Stripe's `created`
    Column("received_ms", BigInteger, nullable=False),
    Column("processed_ms", BigInteger),
    Column("user_id", ForeignKey("users.id")),
    Column("outcome", Text),  # what handling did, or why it could not, for operators
    Column("payload", Text),  # kept until applied, to be handled later
    Column("status", String(16), nullable=False, server_default="processed"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_ms", BigInteger),  # pending only
    Index("ix_payment_events_due", "status", "next_attempt_ms"),
)

# What a pending or parked event waits for: the Stripe ids (payment intent, charge, invoice,
# subscription, customer) whose arrival may make it applicable.
payment_event_waits = Table(
    "payment_event_waits",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("event_row_id", ForeignKey("payment_events.id"), nullable=False, index=True),
    Column("ref", String(100), nullable=False, index=True),
)

# Which grants a payment bought (payment intent, invoice, charge or checkout session id), so a
# refund finds what to reverse.
payment_grants = Table(
    "payment_grants",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("payment_ref", String(200), nullable=False, index=True),
    Column("grant_id", ForeignKey("grants.id"), nullable=False),
    Column("user_id", ForeignKey("users.id"), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
)
