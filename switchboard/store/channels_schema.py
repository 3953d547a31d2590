"""Tables of the chat channels (migration 0011): who is who on each platform, one-time link
codes, the durable inbox of platform messages and the outbox of what is sent back.

Kept beside `store.schema` like `store.assistant_schema`, on the same MetaData. What a user
said or is told (`text_ct`) is stored only as ciphertext under the user's data key
(switchboard.crypto), as conversations are; platform ids, times and states stay in the clear,
because deduplication, leases and retries need them.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, ForeignKey, Index, Integer, LargeBinary, String, Table, Text, UniqueConstraint

from switchboard.store.schema import Id, metadata

# A platform user (Telegram user id, WhatsApp business-scoped user id or phone number) and the
# account it is linked to (NULL: not linked yet; the row then only remembers when this sender
# was last told how to link, and failed link attempts). `chat_id` is where a private message to
# them goes. `last_inbound_ms` opens WhatsApp's 24-hour customer service window.
channel_identities = Table(
    "channel_identities",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("channel", String(16), nullable=False),
    Column("external_user_id", String(100), nullable=False),
    Column("alt_user_id", String(100)),  # WhatsApp: the phone number beside a business-scoped id
    Column("user_id", ForeignKey("users.id")),
    Column("chat_id", String(100), nullable=False),
    Column("linked_ms", BigInteger),
    Column("last_inbound_ms", BigInteger),
    Column("help_sent_ms", BigInteger),
    Column("link_failures", Integer, nullable=False, server_default="0"),
    Column("link_failures_since_ms", BigInteger),
    Column("created_ms", BigInteger, nullable=False),
    UniqueConstraint("channel", "external_user_id", name="uq_channel_identities_external"),
    Index("ix_channel_identities_user", "user_id"),
    Index("ix_channel_identities_alt", "channel", "alt_user_id"),
    Index("ix_channel_identities_chat", "channel", "chat_id"),
)

# One-time codes from `switchboard channels link-code EMAIL`: only their SHA-256 is kept; a
# code is used by one guarded UPDATE (used_ms IS NULL and not expired), so it works once.
channel_link_codes = Table(
    "channel_link_codes",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("code_hash", String(64), nullable=False, unique=True),
    Column("user_id", ForeignKey("users.id"), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("expires_ms", BigInteger, nullable=False),
    Column("used_ms", BigInteger),
    Column("used_by", String(130)),  # channel:external user id
)

# Every platform message that is to be answered, recorded before the webhook answers 200. The
# unique (channel, bot, external id) is the deduplication: a retried update inserts nothing.
# A message is answered by whichever process claims it (status running, `claimed_by` a
# processes.id, `claim_until_ms` renewed while its turn runs); a claim whose process died or
# whose lease lapsed is taken over. `mark_message_id` is the conversation's newest message
# before the turn, so that a takeover finds a reply already stored instead of asking again.
channel_inbox = Table(
    "channel_inbox",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("channel", String(16), nullable=False),
    Column("bot_id", String(64), nullable=False),
    Column("external_id", String(200), nullable=False),  # Telegram update_id, WhatsApp wamid
    Column("user_id", ForeignKey("users.id")),  # NULL: a sender without an account (answered at once)
    Column("chat_id", String(100), nullable=False),
    Column("chat_key", String(200), nullable=False),  # channel:bot:chat, the unit of ordering
    Column("kind", String(16), nullable=False),  # text | voice | audio | image | video | file | sticker | ...
    Column("text_ct", LargeBinary),
    Column("reply_to", String(200)),  # the platform's id of the message (to reply to it, to mark it read)
    Column("thread_id", String(64)),
    Column("is_group", Boolean, nullable=False, server_default="0"),
    Column("status", String(10), nullable=False),  # pending | running | answered | failed; done: handled at once
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("claimed_by", BigInteger),
    Column("claim_until_ms", BigInteger),
    Column("conversation_id", String(40)),
    Column("mark_message_id", BigInteger),
    Column("received_ms", BigInteger, nullable=False),
    Column("answered_ms", BigInteger),
    UniqueConstraint("channel", "bot_id", "external_id", name="uq_channel_inbox_external"),
    Index("ix_channel_inbox_open", "status", "id"),
)

# What is sent: each part of a reply (split at the platform's limit), a reminder, a notice.
# A part is claimed (status sending) before its call to the platform, so a process that dies
# mid-send leaves a row that is sent again marked `uncertain` (the text then says it may be a
# repeat). Parts of one chat go out in order: only a chat's oldest open part is sent.
channel_outbox = Table(
    "channel_outbox",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("channel", String(16), nullable=False),
    Column("bot_id", String(64), nullable=False),
    Column("chat_id", String(100), nullable=False),
    Column("chat_key", String(200), nullable=False),
    Column("user_id", ForeignKey("users.id")),
    Column("inbox_id", BigInteger),
    Column("message_uid", String(40)),  # the conversation message this part carries
    Column("part", Integer, nullable=False, server_default="0"),
    Column("parts", Integer, nullable=False, server_default="1"),
    Column("kind", String(10), nullable=False),  # reply | reminder | notice
    Column("text_ct", LargeBinary),  # under the user's data key
    Column("notice", Text),  # a notice to someone with no account (how to link): not user content
    Column("reply_to", String(200)),
    Column("thread_id", String(64)),
    Column("status", String(10), nullable=False),  # pending | sending | delivered | failed
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("uncertain", Boolean, nullable=False, server_default="0"),
    Column("next_attempt_ms", BigInteger, nullable=False),
    Column("claimed_by", BigInteger),
    Column("claim_until_ms", BigInteger),
    Column("platform_message_id", String(200)),
    Column("last_error", Text),
    Column("created_ms", BigInteger, nullable=False),
    Column("delivered_ms", BigInteger),
    UniqueConstraint("message_uid", "part", name="uq_channel_outbox_message_part"),
    Index("ix_channel_outbox_open", "status", "id"),
)

# One row per channel: what `switchboard channels status` shows beside the counts (the bot's
# name, the last error and when) and the reminder messages already looked at.
channel_state = Table(
    "channel_state",
    metadata,
    Column("channel", String(16), primary_key=True),
    Column("detail", String(200)),
    Column("last_error", Text),
    Column("last_error_ms", BigInteger),
    Column("reminder_mark", BigInteger),  # messages.id up to which reminders were enqueued
    Column("updated_ms", BigInteger, nullable=False),
)

# A platform connection that must be held by one server process at a time (Discord's Gateway
# websocket, one per bot): the holder (a processes.id) keeps it while `lease_until_ms` is
# renewed; a lapsed lease or a holder no longer alive in the registry is taken over. The
# session (`session_id`, `resume_url`, the last `seq` recorded) lets the next holder RESUME it,
# so that the events sent while no one was connected are replayed instead of lost (migration 0013).
channel_connections = Table(
    "channel_connections",
    metadata,
    Column("channel", String(16), primary_key=True),
    Column("bot_id", String(64), primary_key=True),
    Column("holder", BigInteger),
    Column("lease_until_ms", BigInteger),
    Column("session_id", String(200)),
    Column("resume_url", String(500)),
    Column("seq", BigInteger),
    Column("connected_ms", BigInteger),
    Column("updated_ms", BigInteger, nullable=False),
)

# Discord's slash commands are answered through the interaction's webhook (a deferred response
# first, then the reply within 15 minutes): its token, until the reply is out. `original_done`:
# the deferred "thinking" message was replaced by the first part (later parts are follow-ups).
discord_interactions = Table(
    "discord_interactions",
    metadata,
    Column("id", String(32), primary_key=True),  # the interaction's id
    Column("token", Text, nullable=False),
    Column("ephemeral", Boolean, nullable=False, server_default="0"),
    Column("original_done", Boolean, nullable=False, server_default="0"),
    Column("created_ms", BigInteger, nullable=False),
    Index("ix_discord_interactions_created", "created_ms"),
)
