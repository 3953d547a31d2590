"""`switchboard users delete EMAIL` against a running server: the user's keys stop working, their
conversations, reminders and stored responses are gone, their data key is destroyed so that no
copy of their ciphertexts can be read again (and on SQLite no trace is left in the files), and
their ledger stays; `crypto status` and `crypto rotate-master-key` with destroyed keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, insert, select, update
from typer.testing import CliRunner

from switchboard.assistant.conversations import Conversations
from switchboard.cli.erasure import erase_user, pseudonym
from switchboard.cli.main import app
from switchboard.crypto import Binding, KeyRing, keyring_for
from switchboard.crypto.keyring import DESTROYED, KeyDestroyed
from switchboard.crypto.master import load_key_file
from switchboard.store.assistant_schema import conversations, messages, reminders
from switchboard.store.billing_schema import subscriptions
from switchboard.store.channels_schema import channel_identities, channel_link_codes
from switchboard.store.memory_schema import memories
from switchboard.store.schema import data_keys, idempotency_keys, ledger_entries, usage_records, users
from tests.api.conftest import Gateway, add_user, fake_upstream, wait_for  # noqa: F401 (a fixture)
from tests.assistant.conftest import assistant_gateway, auth, new_conversation, say  # noqa: F401 (a fixture)
from tests.fakes.openai_upstream import Behaviour

SENTINEL = "Okapi-vermilion-sentinel-5521"
ALICE = "alice@example.com"


def cli(*args: str, input: str | None = None, code: int = 0) -> str:
    result = CliRunner().invoke(app, list(args), input=input, catch_exceptions=False)
    assert result.exit_code == code, result.output + (result.stderr if result.stderr_bytes else "")
    return result.stdout + (result.stderr if result.stderr_bytes else "")


@pytest.fixture
def cli_env(assistant_gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> Gateway:
    """The CLI pointed at the running server's database and master key."""
    gw = assistant_gateway
    monkeypatch.setenv("SWITCHBOARD_DATABASE_URL", gw.settings.resolved_database_url)
    monkeypatch.setenv("SWITCHBOARD_DATA_DIR", str(gw.settings.data_dir))
    monkeypatch.setenv("SWITCHBOARD_LOCAL_MODEL__ENABLED", "false")
    monkeypatch.delenv("SWITCHBOARD_MASTER_KEY", raising=False)
    monkeypatch.delenv("SWITCHBOARD_CONFIG", raising=False)
    return gw


def count(engine: Engine, table: Any, user_id: int) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(table.c.user_id == user_id)).scalar_one())


def _files(database_url: str) -> bytes:
    path = Path(database_url.removeprefix("sqlite:///"))
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal"), Path(f"{path}-journal")) if p.exists())


def _chat_account_and_files(gw: Gateway, outside: Path) -> Path:
    """A linked Telegram account with a link code, and sandbox files (one a link to a file
    outside the workspace, which must survive)."""
    with gw.engine.begin() as conn:
        conn.execute(insert(channel_identities).values(channel="telegram", external_user_id="4242", user_id=gw.user_id,
                                                       chat_id="4242", linked_ms=1, created_ms=1))
        conn.execute(insert(channel_link_codes).values(code_hash="0" * 64, user_id=gw.user_id, created_ms=1,
                                                       expires_ms=2))
    workspace = gw.settings.data_dir / "sandbox" / "workspaces" / f"u{gw.user_id}"
    (workspace / "notes").mkdir(parents=True)
    (workspace / "notes" / "locker.txt").write_text(SENTINEL)
    (workspace / "escape").symlink_to(outside)
    return workspace


def test_deleting_a_user_destroys_their_content_and_keeps_their_books(cli_env: Gateway, tmp_path: Path) -> None:
    gw, uid = cli_env, cli_env.user_id
    gw.fake.behaviour = Behaviour(text="I'll keep that in mind.")
    conv = new_conversation(gw, title="private")["id"]
    assert say(gw, conv, f"My locker code is {SENTINEL}").status_code == 200
    assert say(gw, conv, "/remind in 1 hour check the locker").status_code == 200
    keyed = httpx.post(gw.api + "/chat/completions", headers={**auth(gw.key), "Idempotency-Key": "k-1"},
                       json={"model": "fake-small", "messages": [{"role": "user", "content": SENTINEL}]})
    assert keyed.status_code == 200
    remembered = httpx.post(gw.api + "/memories", headers=auth(gw.key), json={"text": f"Locker: {SENTINEL}"})
    assert remembered.status_code in (200, 201), remembered.text
    outside = tmp_path / "not-theirs.txt"
    outside.write_text("stays")
    workspace = _chat_account_and_files(gw, outside)
    with gw.engine.connect() as conn:
        wrapped = bytes(conn.execute(select(data_keys.c.wrapped_key).where(data_keys.c.user_id == uid)).scalar_one())
        sealed = [(r.uid, bytes(r.content_ct)) for r in conn.execute(
            select(messages.c.uid, messages.c.content_ct).where(messages.c.user_id == uid)).all()]
    books = count(gw.engine, ledger_entries, uid), count(gw.engine, usage_records, uid)
    assert books[1] == 2 and count(gw.engine, idempotency_keys, uid) == 1 and count(gw.engine, memories, uid) >= 1

    # Asked to confirm, the operator says no: nothing happens.
    said = cli("users", "delete", ALICE, input="n\n", code=1)
    assert "4 messages" in said and "1 reminders" in said and "1 active API keys" in said
    assert "1 channel identities" in said
    assert httpx.get(f"{gw.api}/conversations/{conv}", headers=auth(gw.key)).status_code == 200

    done = cli("users", "delete", ALICE, "--yes")
    assert "deleted alice@example.com: " in done and "1 conversations, 1 stored responses" in done
    assert "1 channel identities" in done and "1 API key(s) revoked; data key destroyed" in done
    assert f"kept {books[0]} ledger entries and 2 usage records, as user {uid} ({pseudonym(uid)})" in done
    # Every server process refuses the user's key within about a second.
    wait_for(lambda: httpx.get(gw.api + "/conversations", headers=auth(gw.key)).status_code == 401, timeout=10)

    gone = (conversations, messages, reminders, idempotency_keys, memories, channel_identities, channel_link_codes)
    assert [count(gw.engine, t, uid) for t in gone] == [0] * len(gone)
    assert not workspace.exists() and outside.read_text() == "stays"
    assert (count(gw.engine, ledger_entries, uid), count(gw.engine, usage_records, uid)) == books
    with gw.engine.connect() as conn:
        user = conn.execute(select(users.c.email, users.c.name).where(users.c.id == uid)).one()
        key = conn.execute(select(data_keys).where(data_keys.c.user_id == uid)).one()
    assert tuple(user) == (pseudonym(uid), None)
    assert key.master_key_id == DESTROYED and bytes(key.wrapped_key) == b""
    # A copy of the ciphertexts (a backup, say) can never be read again, with the master key or not.
    ring = keyring_for(gw.settings, gw.engine)
    for row_uid, blob in sealed:
        with pytest.raises(KeyDestroyed):
            ring.decrypt(Binding(uid, "messages", row_uid, "content"), blob)
    # Nothing of it lingers in the SQLite files: freed space was zeroed, the log truncated.
    files = _files(gw.settings.resolved_database_url)
    assert wrapped not in files and SENTINEL.encode() not in files
    assert not any(blob[-32:] in files for _, blob in sealed)

    # Deleting again says so; the address may sign up afresh, as a new user with a new key.
    assert "deleted already" in cli("users", "delete", pseudonym(uid), "--yes", code=1)
    cli("users", "create", ALICE)
    fresh = cli("keys", "create", ALICE).strip()
    assert httpx.post(gw.api + "/conversations", headers=auth(fresh)).status_code == 201
    status = json.loads(cli("crypto", "status", "--json"))
    assert status["destroyed_data_keys"] == 1 and sum(status["data_keys"].values()) == 1


def test_a_user_stripe_still_bills_is_not_deleted(cli_env: Gateway) -> None:
    gw = cli_env
    with gw.engine.begin() as conn:
        conn.execute(insert(subscriptions).values(
            user_id=gw.user_id, plan="plus", status="active", stripe_customer_id="cus_1",
            stripe_subscription_id="sub_1", cancel_at_period_end=False, updated_ms=1))
    said = cli("users", "delete", ALICE, "--yes", code=1)
    assert "sub_1" in said and f"switchboard subscription change {ALICE} free" in said
    assert httpx.get(gw.api + "/conversations", headers=auth(gw.key)).status_code == 200  # nothing done
    with gw.engine.begin() as conn:  # cancelled at the period's end: no more charges, may go
        conn.execute(update(subscriptions).values(cancel_at_period_end=True))
    cli("users", "delete", ALICE, "--yes")


def test_rotate_master_key_leaves_destroyed_keys_alone(cli_env: Gateway) -> None:
    gw = cli_env
    other, _ = add_user(gw.engine, gw.settings, "bob@example.com", "plus")
    ring = keyring_for(gw.settings, gw.engine)
    for uid in (gw.user_id, other):
        ring.data_key(uid)
    cli("users", "delete", ALICE, "--yes")
    assert "re-wrapped 1 data key(s)" in cli("crypto", "rotate-master-key")
    assert "re-wrapped 1 data key(s)" in cli("crypto", "rotate-master")  # the first name still works
    assert "1 data key(s) destroyed" in cli("crypto", "status")
    assert "retired 2 previous master key(s)" in cli("crypto", "retire-previous")


def test_erasing_one_user_leaves_the_others(engine: Engine, tmp_path: Path) -> None:
    """On SQLite and PostgreSQL: the function behind the command, in one transaction."""
    ring = KeyRing(engine, load_key_file(tmp_path / "keys" / "master.key"))
    store = Conversations(ring)
    with engine.begin() as conn:
        for uid in (1, 2):
            conn.execute(insert(users).values(id=uid, email=f"u{uid}@example.com", plan="free", created_ms=1))
    ids = {}
    for uid in (1, 2):
        ring.data_key(uid)
        with engine.begin() as conn:
            ids[uid] = store.create(conn, uid, channel="cli", title="mine").id
            store.add_message(conn, uid, ids[uid], role="user", content=SENTINEL)
    with engine.begin() as conn:
        erased = erase_user(conn, ring, 1)
    assert (erased.deleted["conversations"], erased.deleted["messages"], erased.data_key_destroyed) == (1, 1, True)
    with engine.connect() as conn:
        assert [m.content for m in store.messages(conn, 2, ids[2])] == [SENTINEL]
        assert store.latest(conn, 1, "cli") is None
    with pytest.raises(KeyDestroyed):
        ring.data_key(1)
