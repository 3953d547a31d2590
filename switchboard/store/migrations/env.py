"""Alembic environment: runs against the connection handed in by `switchboard.store.migrate`."""

from __future__ import annotations

from alembic import context

import switchboard.store.assistant_schema  # noqa: F401  (its tables join the same metadata)
import switchboard.store.billing_schema  # noqa: F401  (its tables join the same metadata)
import switchboard.store.channels_schema  # noqa: F401  (its tables join the same metadata)
import switchboard.store.memory_schema  # noqa: F401  (its tables join the same metadata)
from switchboard.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # `alembic` CLI use, e.g. autogenerate: URL from the config
    from switchboard.store.db import make_engine

    engine = make_engine(context.config.get_main_option("sqlalchemy.url"))
    connection = engine.connect()

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
