"""`switchboard sandbox exec|status` as an operator runs them (a real process, no server), and
the start-up rule: a configured backend that cannot run is an error, never a fallback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from switchboard.sandbox.base import SandboxUnavailable
from tests.sandbox.conftest import sandbox_settings, started
from tests.support.servers import ROOT

LIMITS = {"memory_mb": 128, "time_s": 20}


@pytest.fixture
def operator(tmp_path: Path) -> dict[str, str]:
    """An environment with a database holding a Plus and a Free user."""
    env = {**os.environ, "SWITCHBOARD_DATA_DIR": str(tmp_path / "data"), "SWITCHBOARD_LOCAL_MODEL__ENABLED": "false",
           "SWITCHBOARD_SANDBOX__LIMITS": json.dumps({"plus": LIMITS}), "SWITCHBOARD_SANDBOX__BACKEND": "bubblewrap"}
    env.pop("SWITCHBOARD_CONFIG", None)
    for args in (["db", "upgrade"], ["users", "create", "plus@example.com", "--plan", "plus"],
                 ["users", "create", "free@example.com"]):
        subprocess.run([sys.executable, "-m", "switchboard.cli.main", *args], env=env, check=True, capture_output=True)
    try:
        started(sandbox_settings(tmp_path / "probe", "bubblewrap"))
    except SandboxUnavailable as exc:
        pytest.skip(f"bubblewrap sandbox backend NOT available here ({exc}): SKIPPED")
    return env


def sandbox(env: dict[str, str], *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "switchboard.cli.main", "sandbox", *args], env=env, input=stdin,
                          capture_output=True, cwd=ROOT, timeout=120)


def test_exec_prints_the_output_unchanged_and_exits_with_the_status(operator: dict[str, str]) -> None:
    binary = "import sys; sys.stdout.buffer.write(bytes(range(256))); sys.stderr.write('warn\\n'); sys.exit(3)"
    done = sandbox(operator, "exec", "plus@example.com", "--", "python3", "-c", binary)
    assert done.returncode == 3
    assert done.stdout == bytes(range(256)) and done.stderr == b"warn\n"
    cwd = sandbox(operator, "exec", "plus@example.com", "--", "sh", "-c", "pwd; cat; id -u", stdin=b"piped in\n")
    assert cwd.returncode == 0 and cwd.stdout.decode().split("\n")[:2] == ["/workspace", "piped in"]
    assert int(cwd.stdout.split()[-1]) != 0


def test_exec_exit_codes_for_the_time_and_memory_limits(operator: dict[str, str]) -> None:
    slow = sandbox(operator, "exec", "plus@example.com", "--timeout", "1", "--", "sleep", "30")
    assert slow.returncode == 124 and slow.stdout == b"" and slow.stderr == b""
    hungry = sandbox(operator, "exec", "plus@example.com", "--", "python3", "-c",
                     "b = bytearray(512 * 1024 * 1024); b[::4096] = b'x' * (len(b) // 4096)")
    assert hungry.returncode == 137 or b"MemoryError" in hungry.stderr


def test_exec_json(operator: dict[str, str]) -> None:
    done = sandbox(operator, "exec", "plus@example.com", "--json", "--timeout", "5", "--", "sh", "-c", "echo hi; echo oops >&2")
    report = json.loads(done.stdout)
    assert set(report) == {"exit_code", "stdout", "stderr", "timed_out", "cpu_s", "wall_s"}
    assert report["exit_code"] == 0 and report["stdout"] == "hi\n" and report["stderr"] == "oops\n"
    assert report["timed_out"] is False and report["wall_s"] > 0
    timed = json.loads(sandbox(operator, "exec", "plus@example.com", "--json", "--timeout", "1", "--",
                               "python3", "-c", "while 1: pass").stdout)
    assert timed["timed_out"] is True and timed["exit_code"] == 124 and 0 < timed["cpu_s"] <= 1.05


def test_a_plan_without_a_sandbox_gets_one_line_and_exit_1(operator: dict[str, str]) -> None:
    done = sandbox(operator, "exec", "free@example.com", "--", "true")
    assert done.returncode == 1
    assert (done.stdout + done.stderr).decode().strip().splitlines() == [
        "free@example.com is on the free plan, which has no sandbox"]
    assert sandbox(operator, "status", "free@example.com").returncode == 1


def test_status_lists_sandboxes_usage_and_limits(operator: dict[str, str]) -> None:
    sandbox(operator, "exec", "plus@example.com", "--", "sh", "-c", "head -c 200000 /dev/zero > data.bin")
    report = json.loads(sandbox(operator, "status", "--json").stdout)
    assert report["backend"]["status"] == "ready" and report["backend"]["backend"] == "bubblewrap"
    [row] = report["sandboxes"]
    assert row["email"] == "plus@example.com" and row["runs"] == 1 and row["workspace_files"] == 1
    assert row["workspace_bytes"] >= 200_000 and row["limits"]["memory_mb"] == 128
    text = sandbox(operator, "status", "plus@example.com").stdout.decode()
    assert "plus@example.com" in text and "bubblewrap" in text


def test_an_unavailable_backend_fails_the_start_never_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SandboxUnavailable, match="make setup"):
        started(sandbox_settings(tmp_path, "bubblewrap", bwrap="/nonexistent/bwrap"))
    monkeypatch.delenv("SWITCHBOARD_ENV", raising=False)
    with pytest.raises(SandboxUnavailable, match="SWITCHBOARD_ENV=development"):
        started(sandbox_settings(tmp_path, "subprocess"))
    if os.geteuid() == 0:
        monkeypatch.setenv("SWITCHBOARD_ENV", "development")
        with pytest.raises(SandboxUnavailable, match="not run as root"):
            started(sandbox_settings(tmp_path, "subprocess"))
        monkeypatch.delenv("SWITCHBOARD_ENV")
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(SandboxUnavailable, match="no Docker daemon answers"):
        started(sandbox_settings(tmp_path, "docker"))
    env = {**os.environ, "SWITCHBOARD_DATA_DIR": str(tmp_path / "data"), "SWITCHBOARD_LOCAL_MODEL__ENABLED": "false",
           "SWITCHBOARD_SANDBOX__BACKEND": "subprocess"}
    subprocess.run([sys.executable, "-m", "switchboard.cli.main", "db", "upgrade"], env=env, check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "switchboard.cli.main", "users", "create", "p@example.com", "--plan", "pro"],
                   env=env, check=True, capture_output=True)
    refused = sandbox(env, "exec", "p@example.com", "--", "true")
    assert refused.returncode == 1 and b"SWITCHBOARD_ENV=development" in refused.stderr


DEV_RUN = """
import json, sys
from switchboard.core.config import Settings
from switchboard.sandbox.manager import SandboxManager
manager = SandboxManager.from_settings(Settings(data_dir=sys.argv[1], local_model={"enabled": False},
                                                sandbox={"backend": "subprocess"})).start()
result = manager.run(5, "plus", ["sh", "-c", "pwd; echo $SECRET; sleep 5"], time_s=1)
print(json.dumps({"out": result.stdout.decode(), "timed_out": result.timed_out, "notes": result.notes}))
"""


def test_the_development_backend_runs_only_when_asked_and_never_as_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run the check as another user")
    with tempfile.TemporaryDirectory() as scratch:  # in /tmp: pytest's own directory is root's alone
        data = Path(scratch)
        os.chown(data, 65534, 65534)
        env = {"PATH": os.environ["PATH"], "SWITCHBOARD_ENV": "development", "SECRET": "s3cret", "HOME": str(data)}
        done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                               DEV_RUN, str(data)], env=env, capture_output=True, cwd=ROOT, timeout=60)
        assert done.returncode == 0, done.stderr.decode()
    report = json.loads(done.stdout)
    assert report["out"].split("\n")[:2] == [str(data / "sandbox" / "workspaces" / "u5"), ""]  # no SECRET
    assert report["timed_out"] and report["notes"] == ["development backend: no isolation"]
