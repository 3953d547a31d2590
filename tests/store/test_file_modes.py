"""The SQLite database holds every user's ledger and usage: only its owner may read it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sqlalchemy import text

from switchboard.store.db import make_engine
from switchboard.store.migrate import upgrade


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_database_and_its_directory_are_private(tmp_path: Path) -> None:
    old = os.umask(0o022)  # a usual umask: files 0644, directories 0755 unless chosen otherwise
    try:
        db = tmp_path / "fresh" / "switchboard.db"
        engine = make_engine(f"sqlite:///{db}")
        upgrade(engine)
        with engine.connect() as conn:  # WAL mode: the -wal and -shm files exist while connected
            conn.execute(text("SELECT 1"))
            files = {p.name: _mode(p) for p in db.parent.iterdir()}
        engine.dispose()
    finally:
        os.umask(old)
    assert _mode(db.parent) == 0o700
    assert files == {"switchboard.db": 0o600, "switchboard.db-wal": 0o600, "switchboard.db-shm": 0o600}
