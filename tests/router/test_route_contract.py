"""`switchboard route --batch --json`: the offline evaluation contract, run as an operator runs it.

A separate process with no database, no configuration file and no vendor key: one JSON line out per
line in, in order, each valid line with a numeric `difficulty` in [0, 1] that depends on the prompt
alone, whatever models are eligible (this server's, the whole catalog, a `--models` pair, any plan
or threshold).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from switchboard.core.config import VENDOR_KEY_ENV, RoutingConfig

REPO_ROOT = Path(__file__).resolve().parents[2]

PROMPTS = [
    "hi",
    "Remind me to call the dentist at 9",
    "Janet has 3 boxes with 12 apples each. She gives 7 apples to each of 4 friends and sells the rest "
    "at $0.50 each. How much money does she make?",
    "Write a 300-word essay on tides. Do not use any commas and end with the phrase 'Any questions?'",
    "Complete the following Python function:\n```python\ndef median(xs: list[float]) -> float:\n"
    '    """Return the median of xs."""\n```',
    "Prove that there are infinitely many primes p such that p + 2 is also prime, or explain why this is open.",
    "ünïcödé ✓ 日本語のテキスト",
    "",
]


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    for names in VENDOR_KEY_ENV.values():
        for name in names:
            env.pop(name, None)
    env["SWITCHBOARD_DATA_DIR"] = str(tmp_path / "data")  # must stay untouched: no database
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


def route(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from switchboard.cli.main import app; sys.argv[0] = 'switchboard'; app()"
    return subprocess.run([sys.executable, "-c", code, "route", *args], env=_env(tmp_path), cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str | None]]:
    """A batch with prompts, a blank line, malformed JSON, a line without `prompt` and a
    non-string prompt, in that order: (path, the prompt of each line or None)."""
    path = tmp_path_factory.mktemp("batch") / "prompts.jsonl"
    lines: list[str] = [json.dumps({"prompt": p, "id": i}) for i, p in enumerate(PROMPTS)]
    expected: list[str | None] = list(PROMPTS)
    for bad in ("", "{not json", json.dumps({"text": "no prompt field"}), json.dumps({"prompt": 42})):
        lines.insert(3, bad)
        expected.insert(3, None)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, expected


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


def _rows(result: subprocess.CompletedProcess[str]) -> list[dict]:
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_one_line_out_per_line_in_in_order_with_a_difficulty(home: Path, batch: tuple[Path, list]) -> None:
    path, expected = batch
    rows = _rows(route(home, "--batch", str(path), "--json", "--catalog"))
    assert len(rows) == len(expected)
    for row, prompt in zip(rows, expected):
        if prompt is None:
            assert set(row) == {"error"} and row["error"].startswith("line ")
            continue
        assert {"model", "task", "difficulty"} <= set(row)
        assert isinstance(row["difficulty"], float) and 0.0 <= row["difficulty"] <= 1.0
        assert isinstance(row["model"], str) and row["model"]
    # In order: each line's difficulty is the one `route PROMPT --json` gives that prompt alone.
    for i, prompt in enumerate(expected):
        if prompt in (PROMPTS[0], PROMPTS[2], PROMPTS[5]):
            alone = json.loads(route(home, prompt, "--json", "--catalog").stdout)
            assert (alone["task"], alone["difficulty"]) == (rows[i]["task"], rows[i]["difficulty"])
    assert not (home / "data").exists(), "route must not create a database"


def test_difficulty_does_not_depend_on_which_models_are_eligible(home: Path, batch: tuple[Path, list]) -> None:
    path, expected = batch
    runs = {
        "server": route(home, "--batch", str(path), "--json"),
        "catalog": route(home, "--batch", str(path), "--json", "--catalog"),
        "free": route(home, "--batch", str(path), "--json", "--catalog", "--plan", "free"),
        "pair": route(home, "--batch", str(path), "--json", "--models", "weak,strong"),
        "pair-0.9": route(home, "--batch", str(path), "--json", "--models", "weak,strong", "--threshold", "0.9"),
        "three-0": route(home, "--batch", str(path), "--json", "--models", "a,b,c", "--threshold", "0"),
    }
    tables = {name: _rows(result) for name, result in runs.items()}
    reference = [r.get("difficulty") for r in tables["catalog"]]
    for name, rows in tables.items():
        assert len(rows) == len(expected), name
        assert [r.get("difficulty") for r in rows] == reference, name
        for row, prompt in zip(rows, expected):
            if prompt is not None:
                assert isinstance(row["difficulty"], float) and 0.0 <= row["difficulty"] <= 1.0, name
    assert {r["model"] for r in tables["three-0"] if "model" in r} <= {"b", "c"}  # threshold 0: all escalate
    mid = RoutingConfig().difficulty_mid  # --threshold's default
    assert all(r["model"] == ("strong" if r["difficulty"] >= mid else "weak") for r in tables["pair"] if "model" in r)
    threshold = tables["pair-0.9"]
    assert all(r["model"] == ("strong" if r["difficulty"] >= 0.9 else "weak") for r in threshold if "model" in r)
    assert not (home / "data").exists()
