"""Shared fixtures: real databases (SQLite files; PostgreSQL when reachable), settings."""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text

from switchboard.store.db import driver_url, make_engine
from switchboard.store.migrate import upgrade

POSTGRES_URL = os.environ.get("SWITCHBOARD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
_pg_state: dict[str, bool] = {}


def postgres_available() -> bool:
    if "ok" not in _pg_state:
        try:
            engine = create_engine(driver_url(POSTGRES_URL), connect_args={"connect_timeout": 3})
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            engine.dispose()
            _pg_state["ok"] = True
        except Exception as exc:  # noqa: BLE001
            _pg_state["ok"] = False
            warnings.warn(f"PostgreSQL at {POSTGRES_URL} is NOT reachable ({exc!r}): PostgreSQL tests SKIPPED")
    return _pg_state["ok"]


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    if not postgres_available():
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL} (set SWITCHBOARD_TEST_POSTGRES_URL)")
    name = "sb_test_" + uuid.uuid4().hex[:12]
    admin = create_engine(driver_url(POSTGRES_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    base, _, _ = POSTGRES_URL.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'switchboard.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using this runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'switchboard.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    eng = make_engine(database_url)
    upgrade(eng)
    yield eng
    eng.dispose()


# Tests that assert how fast something happens (a restart within 10 s, a first token, an
# acknowledgement within a second) or run several server processes: `make test` runs them on
# their own after the rest, which runs in parallel (pytest-xdist), so that no other test's load
# makes their clocks lie.
SERIAL_MODULES = frozenset({
    "tests/api/test_crash_recovery.py", "tests/api/test_multiprocess.py", "tests/api/test_first_hour.py",
    "tests/api/test_local_model_api.py", "tests/providers/test_local_model.py",
    "tests/assistant/test_assistant_processes.py", "tests/channels/test_channel_processes.py",
    "tests/channels/test_discord_processes.py", "tests/channels/test_discord_interactions.py",
    "tests/channels/test_telegram.py", "tests/channels/test_whatsapp.py", "tests/sandbox/test_sandbox_contract.py",
    "tests/router/test_difficulty.py", "tests/cli/test_assistant_cli.py",
})


def pytest_collection_modifyitems(config, items):  # type: ignore[no-untyped-def]
    root = Path(str(config.rootpath))
    for item in items:
        if Path(str(item.fspath)).relative_to(root).as_posix() in SERIAL_MODULES:
            item.add_marker(pytest.mark.serial)


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # type: ignore[no-untyped-def]
    if _pg_state.get("ok") is False:
        terminalreporter.write_sep("!", f"PostgreSQL at {POSTGRES_URL} was not reachable: PostgreSQL tests were SKIPPED", red=True)
