"""The exact CLI forms of issue 15 on the suite's own small sample (tests/memory/data: a
synthetic two-person history over three sessions, and questions with the turns that answer
them): import, single and batch search as JSON lines, list, forget."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from switchboard.cli.main import app
from switchboard.core.config import Settings
from switchboard.store.db import make_engine
from switchboard.store.migrate import upgrade
from tests.api.conftest import add_user

DATA = Path(__file__).with_name("data")
EMAIL = "maya@example.com"


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("SWITCHBOARD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("SWITCHBOARD_DATABASE_URL", raising=False)
    monkeypatch.delenv("SWITCHBOARD_CONFIG", raising=False)
    settings = Settings()
    settings.data_dir.mkdir(parents=True)
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    add_user(engine, settings, EMAIL, "free")
    add_user(engine, settings, "other@example.com", "free")
    engine.dispose()
    yield


def run(*args: str, code: int = 0) -> tuple[str, str]:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.stdout, result.stderr


def test_import_then_batch_search_finds_the_answering_turns(cli: None, tmp_path: Path) -> None:
    _, said = run("memory", "import", EMAIL, str(DATA / "history.jsonl"))
    assert "imported 24 memories" in said
    queries = [json.loads(line) for line in (DATA / "queries.jsonl").read_text().splitlines()]
    stdout, _ = run("memory", "search", EMAIL, "--batch", str(DATA / "queries.jsonl"), "--limit", "3", "--json")
    lines = [json.loads(line) for line in stdout.splitlines()]  # only JSON lines on standard output
    assert len(lines) == len(queries)
    found = 0
    for query, line in zip(queries, lines):
        results = line["results"]
        assert 0 < len(results) <= 3
        for result in results:
            assert set(result) == {"id", "text", "source_ids", "score", "created_at"}
            assert result["id"].startswith("mem_") and 1 <= len(result["source_ids"]) <= 3
        assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
        found += bool(set(query["evidence"]) & {s for r in results for s in r["source_ids"]})
    assert found >= len(queries) - 1  # the answering turn in the top 3 for (nearly) every question
    # Times without a zone are UTC and kept.
    first, _ = run("memory", "search", EMAIL, "What is the name of Maya's dog?", "--limit", "1", "--json")
    result = json.loads(first)["results"][0]
    assert "Biscuit" in result["text"] and result["created_at"].startswith("2025-03-08T14:00:00")
    # Another user has none of it.
    nothing, _ = run("memory", "search", "other@example.com", "Biscuit", "--json")
    assert json.loads(nothing) == {"results": []}


def test_list_and_forget(cli: None) -> None:
    run("memory", "import", EMAIL, str(DATA / "history.jsonl"))
    stdout, _ = run("memory", "list", EMAIL, "--json")
    listed = [json.loads(line) for line in stdout.splitlines()]
    assert len(listed) == 24 and listed[0]["source_ids"] == ["S3:24"]  # newest first, with sources
    target = next(m for m in listed if "Mrs. Okafor" in m["text"])
    run("memory", "forget", EMAIL, target["id"])
    stdout, _ = run("memory", "search", EMAIL, "Okafor", "--json")
    assert all("Okafor" not in r["text"] for r in json.loads(stdout)["results"])
    run("memory", "forget", EMAIL, target["id"], code=1)  # gone: not found
    out, _ = run("memory", "forget", EMAIL, "--all")
    assert "forgot 23 memories" in out
    stdout, _ = run("memory", "list", EMAIL, "--json")
    assert stdout == ""


def test_a_bad_line_is_refused_naming_it(cli: None, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"role": "user", "content": "fine"}\n{"role": "robot", "content": "no"}\n')
    result = CliRunner().invoke(app, ["memory", "import", EMAIL, str(bad)])
    assert result.exit_code == 1 and "line 2" in result.output


def test_importing_the_same_history_twice_keeps_each_message_once(cli: None) -> None:
    run("memory", "import", EMAIL, str(DATA / "history.jsonl"))
    _, said = run("memory", "import", EMAIL, str(DATA / "history.jsonl"))
    assert "imported 0 memories" in said and "24 lines already imported" in said
    stdout, _ = run("memory", "list", EMAIL, "--json")
    assert len(stdout.splitlines()) == 24


def test_the_tables_show_whole_ids_on_an_80_column_terminal(cli: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # `memory forget` takes the ids the tables show: on a narrow terminal the text wraps and the
    # ids stay whole (they were cut to "mem_ae1c9a7…" at 80 and even 120 columns).
    monkeypatch.setenv("COLUMNS", "80")
    run("memory", "import", EMAIL, str(DATA / "history.jsonl"))
    stdout, _ = run("memory", "list", EMAIL, "--json")
    ids = {json.loads(line)["id"] for line in stdout.splitlines()}
    table, _ = run("memory", "list", EMAIL)
    assert set(re.findall(r"mem_\w+", table)) == ids  # a cut id ("mem_ae1c9a7…") would not be one of them
    table, _ = run("memory", "search", EMAIL, "What is the name of Maya's dog?", "--limit", "3")
    shown = re.findall(r"mem_\w+", table)
    assert len(shown) == 3 and set(shown) <= ids
