"""Tables of the assistant (migration 0010): conversations, their messages, reminders.

Kept beside `store.schema` like `store.billing_schema`, on the same MetaData. Every piece of
what a user said or was told (titles, message content, tool arguments and results, reminder
texts, summaries) is stored only as ciphertext (`*_ct`, switchboard.crypto: AES-256-GCM under
the user's data key, bound to user, table, row and field); ids, times, roles and credits stay
in the clear, because the books and the scheduler need them.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, ForeignKey, Index, Integer, LargeBinary, String, Table, Text

from switchboard.store.schema import Id, metadata

# One conversation: a thread of messages on one channel. `external_chat_id` is the channel's
# own chat (a Telegram chat id...), where it has one. `busy_*` is the lease that serialises its
# turns across server processes (assistant.lease). `summary_ct` summarises the messages up to
# `summary_upto` (a message id) once the history no longer fits the model's window.
conversations = Table(
    "conversations",
    metadata,
    Column("id", String(40), primary_key=True),  # "conv_" + random: not guessable, not counted
    Column("user_id", ForeignKey("users.id"), nullable=False),
    Column("channel", String(16), nullable=False),  # api | web | cli | telegram | whatsapp | discord
    Column("external_chat_id", String(100)),
    Column("title_ct", LargeBinary),
    Column("model", String(200)),  # pinned with /model; NULL: auto
    Column("summary_ct", LargeBinary),
    Column("summary_upto", BigInteger),
    Column("busy_until_ms", BigInteger),
    Column("busy_by", String(64)),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    Index("ix_conversations_user_created", "user_id", "created_ms"),
    Index("ix_conversations_user_updated", "user_id", "updated_ms"),
    Index("ix_conversations_user_chat", "user_id", "channel", "external_chat_id"),
)

# Messages, oldest first by `id`. `uid` is the public id ("msg_..."), also what each ciphertext
# is bound to. `kind`: text | command | reminder | tool | summary | error. `request_ids` (JSON)
# names the model and tool calls (usage records) that produced the message, `credits_ucr` what
# they were charged.
messages = Table(
    "messages",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("uid", String(40), nullable=False, unique=True),
    Column("conversation_id", ForeignKey("conversations.id", ondelete="CASCADE"), nullable=False),
    Column("user_id", ForeignKey("users.id"), nullable=False),
    Column("role", String(10), nullable=False),  # user | assistant | tool | system
    Column("kind", String(10), nullable=False),
    Column("content_ct", LargeBinary),
    Column("tool_calls_ct", LargeBinary),  # JSON list of {id, name, arguments}
    Column("tool_call_id", String(100)),
    Column("name", String(100)),  # the tool's name, on a tool result
    Column("model", String(200)),
    Column("request_ids", Text),
    Column("credits_ucr", BigInteger, nullable=False, server_default="0"),
    Column("created_ms", BigInteger, nullable=False),
    Index("ix_messages_conversation_id", "conversation_id", "id"),
)

# Reminders: scheduled jobs that put a message into a conversation at their time. A run is
# claimed by moving `next_run_ms` (or the status) with a guarded UPDATE in the transaction that
# writes the message, so it happens exactly once however many processes look at it.
reminders = Table(
    "reminders",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("user_id", ForeignKey("users.id"), nullable=False),
    Column("conversation_id", ForeignKey("conversations.id", ondelete="CASCADE"), nullable=False),
    Column("text_ct", LargeBinary, nullable=False),
    Column("recurrence", String(100)),  # cron rule in `time_zone`; NULL: once
    Column("time_zone", String(64), nullable=False),
    Column("next_run_ms", BigInteger, nullable=False),
    Column("status", String(10), nullable=False),  # active | done | cancelled
    Column("runs", Integer, nullable=False, server_default="0"),
    Column("last_run_ms", BigInteger),
    Column("created_ms", BigInteger, nullable=False),
    Index("ix_reminders_due", "status", "next_run_ms"),
    Index("ix_reminders_user", "user_id", "status"),
)
