"""The operator's first hour (issue 13): the CLI run from anywhere finds the one database (or says
how to create it, in one line), the everyday commands (users, keys, credits debit, caps, plan
changes), output that fits 80 columns, and `route` showing this server's decision."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from alembic import command

from switchboard.store.db import make_engine
from switchboard.store.migrate import alembic_config, head_revision
from tests.cli.test_cli import cli  # noqa: F401 - the fixture


def switchboard(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`switchboard ARGS` as an operator runs it: in `cwd`, with only PATH and HOME set (plus `env`)."""
    base = {"PATH": os.environ["PATH"], "HOME": str(cwd / "home"), "LANG": "C.UTF-8"}
    return subprocess.run([sys.executable, "-m", "switchboard.cli.main", *args], cwd=cwd, env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=120)


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_one_database_wherever_the_cli_runs(tmp_path: Path) -> None:
    somewhere, elsewhere = tmp_path / "somewhere", tmp_path / "elsewhere"
    somewhere.mkdir()
    elsewhere.mkdir()
    for cwd in (somewhere, elsewhere):  # both share one HOME, as one operator's shells do
        (cwd / "home").symlink_to(tmp_path / "home", target_is_directory=True)
    (tmp_path / "home").mkdir()
    database = tmp_path / "home" / ".local" / "share" / "switchboard" / "switchboard.db"

    # Before any database: one line naming the path and the command, exit 1, nothing created.
    for args in (("users", "list"), ("balance", "a@example.com"), ("chat", "hi"), ("keys", "list", "a@example.com")):
        missing = switchboard(somewhere, *args)
        assert missing.returncode == 1, missing.stderr
        assert missing.stderr.count("\n") == 1 and "Traceback" not in missing.stderr
        assert str(database) in missing.stderr and "switchboard db upgrade" in missing.stderr
    assert files_under(tmp_path / "home") == [] and files_under(somewhere) == ["home"]

    # `route` needs no database at all.
    routed = switchboard(somewhere, "route", "hello", "--json")
    assert routed.returncode == 0, routed.stderr
    assert json.loads(routed.stdout)["model"] == "gemma-3-270m"
    assert files_under(tmp_path / "home") == []

    created = switchboard(somewhere, "db", "upgrade")
    assert created.returncode == 0 and f"created the database at {database}" in created.stderr
    again = switchboard(elsewhere, "db", "upgrade")
    assert "database is up to date" in again.stderr and str(database) in again.stderr
    assert switchboard(somewhere, "users", "create", "ada@example.com").returncode == 0
    listed = switchboard(elsewhere, "users", "list", "--json")  # another directory, the same database
    assert [u["email"] for u in json.loads(listed.stdout)] == ["ada@example.com"]
    assert not (somewhere / "data").exists() and not (elsewhere / "data").exists()

    # XDG_DATA_HOME and SWITCHBOARD_DATA_DIR move it.
    xdg = switchboard(elsewhere, "users", "list", env={"XDG_DATA_HOME": str(tmp_path / "xdg")})
    assert xdg.returncode == 1 and str(tmp_path / "xdg" / "switchboard" / "switchboard.db") in xdg.stderr
    explicit = switchboard(elsewhere, "users", "list", env={"SWITCHBOARD_DATA_DIR": str(tmp_path / "d")})
    assert explicit.returncode == 1 and str(tmp_path / "d" / "switchboard.db") in explicit.stderr


def test_a_database_without_the_newest_schema_is_refused_in_one_line(tmp_path: Path) -> None:
    env = {"SWITCHBOARD_DATA_DIR": str(tmp_path / "d")}
    (tmp_path / "d").mkdir()
    db = tmp_path / "d" / "switchboard.db"
    db.touch()  # an empty file: an empty SQLite database
    empty = switchboard(tmp_path, "users", "list", env=env)
    assert empty.returncode == 1 and "has no Switchboard schema" in empty.stderr and "switchboard db upgrade" in empty.stderr
    engine = make_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        config = alembic_config()
        config.attributes["connection"] = conn
        command.upgrade(config, "0008")
        conn.commit()
    engine.dispose()
    old = switchboard(tmp_path, "users", "list", env=env)
    assert old.returncode == 1 and old.stderr.count("\n") == 1
    assert f"has schema 0008, this Switchboard needs {head_revision()}" in old.stderr
    migrated = switchboard(tmp_path, "db", "upgrade", env=env)
    assert f"migrated the database at {db} from schema 0008 to {head_revision()}" in migrated.stderr
    assert switchboard(tmp_path, "users", "list", env=env).returncode == 0


def test_demo_setup_prints_the_port_the_server_will_listen_on(tmp_path: Path) -> None:
    env = {"SWITCHBOARD_DATA_DIR": str(tmp_path / "d"), "SWITCHBOARD_PORT": "8123"}
    switchboard(tmp_path, "db", "upgrade", env=env)
    shown = switchboard(tmp_path, "demo-setup", env=env)
    assert "curl http://127.0.0.1:8123/v1/chat/completions" in shown.stdout
    assert re.search(r"source \S*bin/activate", shown.stdout)  # how to get `switchboard` on the PATH
    assert f"export SWITCHBOARD_DATA_DIR={tmp_path / 'd'}" in shown.stdout
    env["SWITCHBOARD_DATA_DIR"] = str(tmp_path / "e")
    switchboard(tmp_path, "db", "upgrade", env=env)
    assert "curl http://127.0.0.1:9001/" in switchboard(tmp_path, "demo-setup", "--port", "9001", env=env).stdout


def test_models_fit_80_columns(tmp_path: Path) -> None:
    shown = switchboard(tmp_path, "models", env={"COLUMNS": "80"})
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in shown.stdout  # nothing cut off
    rows = json.loads(switchboard(tmp_path, "models", "--json").stdout)
    for r in rows:  # every figure of every model is there in full
        line = next(line for line in lines if f" {r['name']} " in line + " ")
        assert f"{r['context_window']:,}" in line
        assert f"{r['input_usd_per_mtok']}/{r['output_usd_per_mtok']}" in line
        assert f"{r['input_credits_per_1k']}/{r['output_credits_per_1k']}" in line
    wide = switchboard(tmp_path, "models", env={"COLUMNS": "160"}).stdout
    assert "cached $" in wide and "…" not in wide


def fails(run, *args: str, code: int = 1):  # type: ignore[no-untyped-def]
    """`run` (tests.cli.test_cli's `cli` fixture) expecting exit `code`."""
    result = run(*args, ok=False)
    assert result.exit_code == code, result.output
    return result


def test_users_list_and_show(cli) -> None:  # type: ignore[no-untyped-def]
    run, fake = cli
    assert "no users" in run("users", "list").stdout
    run("users", "create", "ada@example.com", "--plan", "plus")
    run("users", "create", "bob@example.com")
    run("keys", "create", "ada@example.com", "--name", "laptop")
    users = json.loads(run("users", "list", "--json").stdout)
    assert [(u["email"], u["plan"], u["available_credits"], u["active_keys"]) for u in users] == [
        ("ada@example.com", "plus", 6000.0, 1), ("bob@example.com", "free", 100.0, 0)]
    assert [u["email"] for u in json.loads(run("users", "list", "--plan", "free", "--json").stdout)] == ["bob@example.com"]
    table = run("users", "list").stdout
    assert "ada@example.com" in table and "6000" in table
    fake.configure(text="ok", chunks=1, prompt_tokens=10, completion_tokens=5)  # 4 credits
    run("chat", "hello", "--model", "fake-small", "--user", "ada@example.com")
    shown = json.loads(run("users", "show", "ada@example.com", "--json").stdout)
    assert shown["plan"] == "plus" and shown["available_ucr"] == 5996_000_000 and shown["requests"] == 1
    assert shown["last_request"]["model"] == "fake-small" and shown["keys"]["active"] == 1
    text = run("users", "show", "ada@example.com").stdout
    assert "5996 credits" in text and "not billed by Stripe" in text and "1 active" in text
    assert fails(run, "users", "show", "nobody@example.com", code=1).stderr.startswith("error: no user")


def test_keys_list_and_revoke_by_id_or_prefix(cli) -> None:  # type: ignore[no-untyped-def]
    run, _ = cli
    run("users", "create", "ada@example.com")
    first = run("keys", "create", "ada@example.com", "--name", "laptop").stdout.strip()
    second = run("keys", "create", "ada@example.com").stdout.strip()
    keys = json.loads(run("keys", "list", "ada@example.com", "--json").stdout)
    assert [(k["id"], k["prefix"], k["name"], k["status"], k["last_used_ms"]) for k in keys] == [
        (1, first[:10], "laptop", "active", None), (2, second[:10], None, "active", None)]
    listing = run("keys", "list", "ada@example.com").stdout
    assert first[:10] in listing and first not in listing and "laptop" in listing  # never the key itself
    assert "revoked key 1" in run("keys", "revoke", first[:10]).stdout  # by the prefix shown
    assert "already revoked" in run("keys", "revoke", "1").stdout
    assert "revoked key 2" in run("keys", "revoke", "2").stdout  # by id
    assert [k["status"] for k in json.loads(run("keys", "list", "ada@example.com", "--json").stdout)] == ["revoked"] * 2
    assert "no API key" in fails(run, "keys", "revoke", "sb-zzzzzzz", code=1).stderr
    assert "no API key" in fails(run, "keys", "revoke", "99", code=1).stderr


def test_credits_debit_reverses_a_grant_through_the_ledger(cli) -> None:  # type: ignore[no-untyped-def]
    run, _ = cli
    run("users", "create", "ada@example.com")  # 100 credits, free allowance
    run("credits", "grant", "ada@example.com", "500", "--reason", "goodwill")
    run("credits", "topup", "ada@example.com", "600")  # paid-for credit (sales)
    out = run("credits", "debit", "ada@example.com", "500", "--reason", "granted by mistake").stdout
    assert "debited 500 credits" in out and "available now 700" in out  # the newest grant (the pack) went first
    accounts = json.loads(run("ledger", "verify", "--json").stdout)
    assert accounts["ok"] and accounts["accounts_ucr"]["sales"] == -100_000_000  # 500 of the 600 went back to sales
    refused = fails(run, "credits", "debit", "ada@example.com", "701", "--reason", "too much", code=1)
    assert "has 700 credits available" in refused.stderr
    run("credits", "debit", "ada@example.com", "700", "--reason", "everything")
    assert json.loads(run("balance", "ada@example.com", "--json").stdout)["available_credits"] == 0
    verified = json.loads(run("ledger", "verify", "--json").stdout)
    assert verified["ok"] and verified["accounts_ucr"]["wallet"] == 0
    statement = json.loads(run("ledger", "statement", "ada@example.com", "--json").stdout)
    assert statement["debits_credits"] == -1200 and statement["closing_credits"] == 0
    assert fails(run, "credits", "debit", "ada@example.com", "0", "--reason", "x", code=2)


def test_caps_show(cli) -> None:  # type: ignore[no-untyped-def]
    run, fake = cli
    run("users", "create", "ada@example.com", "--plan", "plus")
    run("caps", "set", "ada@example.com", "--daily", "10")
    fake.configure(text="ok", chunks=1, prompt_tokens=10, completion_tokens=5)  # 4 credits
    run("chat", "hello", "--model", "fake-small", "--user", "ada@example.com", "--max-tokens", "20")
    caps = {c["cap"]: c for c in json.loads(run("caps", "show", "ada@example.com", "--json").stdout)["caps"]}
    assert (caps["daily"]["limit_ucr"], caps["daily"]["spent_ucr"], caps["daily"]["left_ucr"]) == (10_000_000, 4_000_000, 6_000_000)
    assert (caps["monthly"]["limit_ucr"], caps["monthly"]["spent_ucr"]) == (None, 4_000_000)
    shown = run("caps", "show", "ada@example.com").stdout
    assert "daily" in shown and "6" in shown and "none" in shown


def test_an_operator_upgrade_grants_the_plan_credits_now(cli) -> None:  # type: ignore[no-untyped-def]
    run, _ = cli
    run("users", "create", "ada@example.com")  # free: 100
    out = run("subscription", "change", "ada@example.com", "plus").stdout
    assert "granted 5900 credits now" in out
    assert json.loads(run("balance", "ada@example.com", "--json").stdout)["available_credits"] == 6000  # as `users create --plan plus`
    down = run("subscription", "change", "ada@example.com", "free").stdout
    assert "the free allowance comes with the next period" in down
    assert json.loads(run("balance", "ada@example.com", "--json").stdout)["available_credits"] == 6000  # nothing taken back
    data = json.loads(run("subscription", "change", "ada@example.com", "plus", "--json").stdout)
    assert data["granted_ucr"] == 0  # once per period: this period's allowance is plus's already
    run("subscription", "change", "ada@example.com", "pro")
    assert json.loads(run("balance", "ada@example.com", "--json").stdout)["available_credits"] == 18000
    assert json.loads(run("ledger", "verify", "--json").stdout)["ok"]
