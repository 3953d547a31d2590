"""The database schema (SQLAlchemy Core). Alembic migrations in store/migrations create it.

Times are integer epoch milliseconds (`*_ms`): cheap to compare and identical on SQLite and
PostgreSQL. Money is integer micro-credits (`*_ucr`).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# BigInteger primary keys autoincrement on PostgreSQL; on SQLite only INTEGER does.
Id = BigInteger().with_variant(Integer(), "sqlite")

users = Table(
    "users",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("email", String(320), nullable=False, unique=True),
    Column("plan", String(32), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    # How the assistant addresses the user and reads their times (migration 0010).
    Column("name", String(100)),
    Column("time_zone", String(64), nullable=False, server_default="UTC"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("user_id", ForeignKey("users.id"), nullable=False, index=True),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),  # shown in listings; never enough to use the key
    Column("name", String(100)),
    Column("created_ms", BigInteger, nullable=False),
    Column("revoked_ms", BigInteger),
    # Recorded at most once a minute per key, off the request path (accounts.keys.KeyCache).
    Column("last_used_ms", BigInteger),
    # Each server process asks every second for the keys revoked since it last looked (0009).
    Index("ix_api_keys_revoked", "revoked_ms"),
)

# One wallet per user. Cached figures, each derivable from its source of truth:
#   balance_ucr = SUM(ledger_entries.amount_ucr)  = SUM(live grants.remaining_ucr) - debt_ucr
#   held_ucr    = SUM(holds.amount_ucr WHERE status = 'active')
wallets = Table(
    "wallets",
    metadata,
    Column("user_id", ForeignKey("users.id"), primary_key=True),
    Column("balance_ucr", BigInteger, nullable=False, default=0),
    Column("held_ucr", BigInteger, nullable=False, default=0),
    Column("debt_ucr", BigInteger, nullable=False, default=0),
    Column("next_expiry_ms", BigInteger),  # earliest expiry among grants with credit left
    Column("period_start_ms", BigInteger, nullable=False),  # current allowance period
    Column("period_end_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    # Limits and alerts (billing/limits.py): optional caps, the period's allowance (the base of
    # the 20/5/0% low-balance alerts) and the highest alert level already raised this period.
    Column("daily_cap_ucr", BigInteger),
    Column("monthly_cap_ucr", BigInteger),
    Column("period_allowance_ucr", BigInteger, nullable=False, server_default="0"),
    Column("alert_level", Integer, nullable=False, server_default="0"),
)

grants = Table(
    "grants",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("user_id", ForeignKey("users.id"), nullable=False),
    Column("kind", String(16), nullable=False),  # allowance | topup | manual
    Column("amount_ucr", BigInteger, nullable=False),
    Column("remaining_ucr", BigInteger, nullable=False),
    Column("expires_ms", BigInteger),  # NULL: never expires
    Column("created_ms", BigInteger, nullable=False),
    Column("reason", Text),
    Column("source_ref", String(200), unique=True),  # idempotency key: one grant per source
    Index("ix_grants_user_burn", "user_id", "remaining_ucr"),
)

holds = Table(
    "holds",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("user_id", ForeignKey("users.id"), nullable=False),
    Column("request_id", String(100), nullable=False),
    Column("amount_ucr", BigInteger, nullable=False),
    Column("status", String(10), nullable=False),  # active | settled | voided
    Column("model", String(200), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("expires_ms", BigInteger, nullable=False),
    Column("resolved_ms", BigInteger),
    Column("charged_ucr", BigInteger),
    # The server process serving the request (processes.id; no foreign key: a process's row is
    # deleted once its holds are resolved). A hold whose process died is resolved from what its
    # stream had delivered, as last recorded (progress_*, every few seconds; inference.heartbeat).
    Column("process_id", BigInteger),
    Column("progress_prompt_tokens", Integer),
    Column("progress_completion_tokens", Integer),
    Column("progress_ucr", BigInteger),  # what a cancellation then would have charged
    Column("progress_ms", BigInteger),
    UniqueConstraint("user_id", "request_id", name="uq_holds_user_request"),
    Index("ix_holds_status_expires", "status", "expires_ms"),
)

# Server processes that hold credits for requests in flight (inference.heartbeat). Each writes
# its heartbeat every few seconds; one whose heartbeat lapsed, or that another process of the
# same host can show is gone, is dead, and its holds are resolved. Times of heartbeats are the
# database's clock, so that processes on hosts whose clocks disagree still agree on a lapse.
processes = Table(
    "processes",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("pid_start", String(100)),  # the OS's mark of this process's start (tells a reused pid apart)
    Column("started_ms", BigInteger, nullable=False),
    Column("heartbeat_ms", BigInteger, nullable=False),
    Column("stopped_ms", BigInteger),  # stopped cleanly, or found dead
)

# Double entry: the entries of one transaction (txn_id) sum to zero. `account` is the user's
# "wallet" or "receivables", or a system account (sales, promotions, revenue, breakage, refunds);
# `user_id` is the user the transaction concerns, on every entry.
ledger_entries = Table(
    "ledger_entries",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("txn_id", String(40), nullable=False, index=True),
    Column("account", String(32), nullable=False),
    # No index of its own: ix_ledger_entries_user_account_created leads with it (migration 0005).
    Column("user_id", ForeignKey("users.id"), nullable=False),
    Column("kind", String(16), nullable=False),  # grant | charge | expiry | refund
    Column("amount_ucr", BigInteger, nullable=False),  # signed
    Column("grant_id", ForeignKey("grants.id")),
    Column("hold_id", ForeignKey("holds.id")),
    Column("request_id", String(100)),
    Column("created_ms", BigInteger, nullable=False),
    Column("memo", Text),
    Index("ix_ledger_entries_user_account_created", "user_id", "account", "created_ms"),
)

usage_records = Table(
    "usage_records",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("user_id", ForeignKey("users.id"), nullable=False),
    Column("request_id", String(100), nullable=False),
    Column("api_key_id", BigInteger),
    Column("endpoint", String(50), nullable=False),
    Column("model", String(200), nullable=False),
    Column("provider", String(100), nullable=False),
    Column("stream", Boolean, nullable=False),
    Column("outcome", String(20), nullable=False),  # ok | cancelled | error | interrupted | expired
    Column("error", Text),
    Column("prompt_tokens", Integer, nullable=False),
    Column("cached_prompt_tokens", Integer, nullable=False),
    Column("cache_write_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("reasoning_tokens", Integer, nullable=False),
    Column("ttft_ms", Float),
    Column("decode_tokens_per_s", Float),
    Column("latency_ms", Float, nullable=False),
    Column("cost_usd", String(40), nullable=False),  # exact Decimal, as text
    Column("charged_ucr", BigInteger, nullable=False),
    Column("route", Text),  # JSON: why this model
    Column("created_ms", BigInteger, nullable=False),
    UniqueConstraint("user_id", "request_id", name="uq_usage_user_request"),
    Index("ix_usage_user_id_desc", "user_id", "id"),
)


# Outbox of user notifications (low-balance alerts): written in the ledger's transaction,
# delivered once by a dispatcher that claims each row before calling the notifier.
notifications = Table(
    "notifications",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("user_id", ForeignKey("users.id"), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("threshold_pct", Integer, nullable=False),
    Column("period_start_ms", BigInteger, nullable=False),
    Column("payload", Text, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("delivered_ms", BigInteger),
    Column("attempts", Integer, nullable=False, server_default="0"),
    UniqueConstraint("user_id", "kind", "threshold_pct", "period_start_ms", name="uq_notifications_once"),
    Index("ix_notifications_pending", "delivered_ms", "id"),
)


# Envelope encryption (switchboard.crypto): each user's data key, wrapped (AES-256-GCM) by the
# master key named by `master_key_id`. Rotating the master key re-wraps these rows only.
data_keys = Table(
    "data_keys",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("user_id", ForeignKey("users.id"), nullable=False, unique=True),
    Column("wrapped_key", LargeBinary, nullable=False),  # nonce + AES-GCM(master, data key)
    Column("master_key_id", String(32), nullable=False, index=True),
    Column("created_ms", BigInteger, nullable=False),
    Column("rewrapped_ms", BigInteger),
)

# Idempotency-Key records (api.idempotency), per user: the first request's fingerprint, its
# state, and for a completed non-streaming request its response, encrypted under the user's
# data key. Replayed until `expires_ms` (24 h after completion), then purged.
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("user_id", ForeignKey("users.id"), nullable=False),
    Column("idem_key", String(100), nullable=False),
    Column("endpoint", String(50), nullable=False),
    Column("fingerprint", String(64), nullable=False),  # SHA-256 of the canonical request body
    Column("stream", Boolean, nullable=False),
    Column("status", String(10), nullable=False),  # running | done | failed
    Column("attempt", Integer, nullable=False),  # 1, then +1 for each run after a failure
    Column("request_id", String(100), nullable=False),  # the ledger's request id of the attempt
    Column("response", LargeBinary),  # encrypted (status, headers, body) of a done non-stream
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    Column("expires_ms", BigInteger, nullable=False),
    UniqueConstraint("user_id", "idem_key", name="uq_idempotency_keys_user_key"),
    Index("ix_idempotency_keys_expires", "expires_ms"),
)
