"""Tables of long-term memory (migrations 0012, 0014): each user's memories, their memory state and
the encrypted snapshot of their index.

Kept beside `store.schema` like `store.assistant_schema`, on the same MetaData. What a memory
says, its embedding (an embedding can be turned back into much of its text) and its metadata
(sources, speaker, conversation) are stored only as ciphertext (`*_ct`, switchboard.crypto:
AES-256-GCM under the user's data key, bound to user, table, row uid and field). Ids, kinds,
status and times stay in the clear: the index's version check and the list's order need them.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, ForeignKey, Index, LargeBinary, String, Table

from switchboard.store.schema import Id, metadata

# One memory: a message (episodic: what was said, by whom, when) or a fact (durable: extracted
# by a model, told with the `remember` tool or POST /v1/memories). A fact contradicted by a
# newer one is kept, `superseded` (valid from `created_ms` until `superseded_ms`, replaced by
# `superseded_by`). `rev` is the user's memory version at the row's last write: an index built
# at version V reads the rows with rev > V to catch up (memory.index).
memories = Table(
    "memories",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("uid", String(40), nullable=False, unique=True),  # "mem_" + random: the public id
    Column("user_id", ForeignKey("users.id"), nullable=False),
    Column("kind", String(10), nullable=False),  # message | fact
    Column("status", String(12), nullable=False),  # active | superseded
    Column("text_ct", LargeBinary, nullable=False),
    Column("embedding_ct", LargeBinary, nullable=False),  # float16 vector
    Column("meta_ct", LargeBinary, nullable=False),  # JSON: role, name, source_ids, sources, thread, origin
    Column("created_ms", BigInteger, nullable=False),  # when it was said or learned (valid from)
    Column("superseded_ms", BigInteger),  # valid until
    Column("superseded_by", BigInteger),  # the id of the memory that replaced it
    Column("rev", BigInteger, nullable=False),
    Index("ix_memories_user_rev", "user_id", "rev"),
    Index("ix_memories_user_id", "user_id", "id"),
)

# Per user: memory on or off, and the version every write bumps (in the writing transaction):
# a process whose cached index is older reads what changed. A deletion sets `reset_version`: an
# index built before it is rebuilt from scratch.
memory_users = Table(
    "memory_users",
    metadata,
    Column("user_id", ForeignKey("users.id"), primary_key=True),
    Column("enabled", Boolean, nullable=False, server_default="1"),
    Column("version", BigInteger, nullable=False, server_default="0"),
    Column("reset_version", BigInteger, nullable=False, server_default="0"),
    Column("updated_ms", BigInteger, nullable=False),
)

# Per conversation: the newest message whose facts were extracted (memory.extraction), so that a
# restart delays extraction, never loses it.
memory_extraction_marks = Table(
    "memory_extraction_marks",
    metadata,
    Column("conversation_id", ForeignKey("conversations.id", ondelete="CASCADE"), primary_key=True),
    Column("user_id", ForeignKey("users.id"), nullable=False),
    Column("upto_message_id", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
)

# Per user: the newest snapshot of their built index (memory.snapshot), ONE value sealed with
# their data key and bound to (user, "memory_snapshots", version), so that a cold index is one
# read and one decryption instead of a decryption per memory. `version` is the memory version it
# reflects; a search applies what was written after it. Every deletion (anything that sets
# `reset_version`) deletes the row in its own transaction: forgotten text never outlives its
# memory inside a snapshot.
memory_snapshots = Table(
    "memory_snapshots",
    metadata,
    Column("user_id", ForeignKey("users.id"), primary_key=True),
    Column("version", BigInteger, nullable=False),
    Column("snapshot_ct", LargeBinary, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
)
