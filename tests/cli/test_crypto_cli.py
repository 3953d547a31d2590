"""`switchboard crypto status | rotate-master | retire-previous`, as docs/security.md describes them."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from switchboard.cli.main import app
from switchboard.core.config import load_settings
from switchboard.crypto import Binding, KeyRing, keyring_for
from switchboard.crypto.master import MasterKeys, read_key_file
from switchboard.store.db import make_engine

SECRET = b"kept for a replay"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("SWITCHBOARD_MASTER_KEY", raising=False)
    monkeypatch.delenv("SWITCHBOARD_MASTER_KEY_PREVIOUS", raising=False)
    monkeypatch.setenv("SWITCHBOARD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SWITCHBOARD_LOCAL_MODEL__ENABLED", "false")
    return tmp_path / "data"


def run(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.stdout


def encrypt_for_two_users() -> tuple[KeyRing, dict[int, bytes]]:
    run("db", "upgrade")
    run("users", "create", "a@example.com")
    run("users", "create", "b@example.com")
    settings = load_settings()
    ring = keyring_for(settings, make_engine(settings.resolved_database_url))
    return ring, {uid: ring.encrypt(Binding(uid, "t", 1, "f"), SECRET) for uid in (1, 2)}


def test_rotate_and_retire_with_the_key_file(env: Path) -> None:
    ring, blobs = encrypt_for_two_users()
    old = ring.master.current.id
    assert json.loads(run("crypto", "status", "--json"))["data_keys"] == {old: 2}
    assert "re-wrapped 2 data key(s)" in run("crypto", "rotate-master")
    status = json.loads(run("crypto", "status", "--json"))
    new = status["current"]
    assert new != old and status["previous"] == [old] and status["data_keys"] == {new: 2}
    assert "retired 1 previous master key(s)" in run("crypto", "retire-previous")
    current, previous = read_key_file(env / "master.key")
    assert previous == [] and oct((env / "master.key").stat().st_mode & 0o777) == "0o600"
    fresh = KeyRing(ring.engine, MasterKeys(current))  # the new key alone reads the old data
    assert all(fresh.decrypt(Binding(uid, "t", 1, "f"), blob) == SECRET for uid, blob in blobs.items())
    ring.engine.dispose()


def test_rotate_with_keys_from_the_environment(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = os.urandom(32), os.urandom(32)
    monkeypatch.setenv("SWITCHBOARD_MASTER_KEY", base64.b64encode(old).decode())
    ring, blobs = encrypt_for_two_users()
    assert not (env / "master.key").exists()  # the environment's key: no key file
    monkeypatch.setenv("SWITCHBOARD_MASTER_KEY", base64.b64encode(new).decode())
    # Without the old key listed, the data keys cannot be re-wrapped: a clear error.
    run("crypto", "retire-previous", code=1)
    monkeypatch.setenv("SWITCHBOARD_MASTER_KEY_PREVIOUS", base64.b64encode(old).decode())
    assert "re-wrapped 2 data key(s)" in run("crypto", "rotate-master")
    assert "remove SWITCHBOARD_MASTER_KEY_PREVIOUS" in run("crypto", "retire-previous")
    fresh = KeyRing(ring.engine, MasterKeys(new))
    assert all(fresh.decrypt(Binding(uid, "t", 1, "f"), blob) == SECRET for uid, blob in blobs.items())
    monkeypatch.setenv("SWITCHBOARD_MASTER_KEY", "too-short")
    run("crypto", "status", code=2)
    ring.engine.dispose()
