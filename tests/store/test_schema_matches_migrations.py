"""The tables the code declares (store.*_schema) are exactly what the migrations build."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine

import switchboard.store.assistant_schema  # noqa: F401  (its tables join the metadata)
import switchboard.store.billing_schema  # noqa: F401
import switchboard.store.channels_schema  # noqa: F401
import switchboard.store.memory_schema  # noqa: F401
from switchboard.store.schema import metadata


def test_the_migrated_database_matches_the_declared_schema(engine: Engine) -> None:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_server_default": False})
        differences = compare_metadata(context, metadata)
    assert differences == []
