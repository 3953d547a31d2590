"""Sandbox managers on every backend this machine can run, for real.

`sandbox` is parametrized over the isolating backends (bubblewrap, docker). A backend that
cannot run here is skipped with its reason in the skip message, loudly, never silently
replaced by a weaker one: on this kind of machine bubblewrap runs and no Docker daemon answers.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from switchboard.core.config import Settings
from switchboard.sandbox.base import SandboxUnavailable
from switchboard.sandbox.manager import SandboxManager

# Small limits keep the contract tests quick; they are what the tests check against.
TEST_LIMITS = {"time_s": 10.0, "cpus": 1.0, "memory_mb": 256, "address_space_mb": 4096, "processes": 48,
               "file_size_mb": 8, "output_kb": 64, "workspace_mb": 32, "workspace_files": 500, "tmp_mb": 16}
_unavailable: dict[str, str] = {}


def sandbox_settings(tmp_path: Path, backend: str, **extra: Any) -> Settings:
    return Settings(
        data_dir=tmp_path / "data", local_model={"enabled": False},
        sandbox={"backend": backend, "limits": {"plus": TEST_LIMITS, "pro": TEST_LIMITS}, **extra},
    )


def started(settings: Settings) -> SandboxManager:
    manager = SandboxManager.from_settings(settings)
    assert manager is not None
    return manager.start()


@pytest.fixture(params=["bubblewrap", "docker"])
def sandbox(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SandboxManager]:
    """A started manager on each isolating backend; skipped loudly where one cannot run."""
    backend = request.param
    if backend in _unavailable:
        pytest.skip(f"{backend} sandbox backend NOT available here ({_unavailable[backend]}): its contract tests SKIPPED")
    try:
        manager = started(sandbox_settings(tmp_path, backend))
    except SandboxUnavailable as exc:
        _unavailable[backend] = str(exc)
        warnings.warn(f"{backend} sandbox backend NOT available ({exc}): its contract tests are SKIPPED")
        pytest.skip(f"{backend} sandbox backend NOT available here ({exc}): its contract tests SKIPPED")
    yield manager
    manager.close()


@pytest.fixture
def bubblewrap(tmp_path: Path) -> Iterator[SandboxManager]:
    """The bubblewrap backend alone (the default here and in CI)."""
    try:
        manager = started(sandbox_settings(tmp_path, "bubblewrap"))
    except SandboxUnavailable as exc:
        pytest.skip(f"bubblewrap sandbox backend NOT available here ({exc}): SKIPPED")
    yield manager
    manager.close()


def processes_of(uid: int) -> list[int]:
    """Host pids running as `uid` (what a run must not leave behind)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    found.append(int(entry))
            except FileNotFoundError:
                pass
    return found


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    for backend, reason in sorted(_unavailable.items()):
        terminalreporter.write_sep("!", f"{backend} sandbox backend was not available ({reason}): its tests were SKIPPED",
                                   yellow=True)
