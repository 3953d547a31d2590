"""The difficulty estimate's training data: router-mix (seven sources) and routellm-mmlu, read in place.

Every row is a prompt with a weaker and a stronger model's outcome in [0, 1] (binary sources give
0/1; graded ones, such as arena_bench's judge ratings or cruxeval's pass@1 over ten samples, their
score), the source it comes from (a file of router-mix, or ``mmlu`` for routellm-mmlu) and a group
inside the source (MMLU subject, router-mix category). Columns are read by position: the header
names are model names, which differ between files.

The data is never copied into the repository: the trainer reads ``../shared/data`` (or ``--data``).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MMLU_SOURCE = "mmlu"
# high_school_mathematics: the strong model is "correct" on 7 of 270 questions (2.6%, far below the
# 25% of guessing among four options), so its strong-model labels measure nothing. Never trained on;
# still scored when its source is held out.
TRAIN_EXCLUDED_GROUPS = ((MMLU_SOURCE, "high_school_mathematics"),)


@dataclass
class Dataset:
    prompts: list[str]
    sources: np.ndarray  # str: router-mix file stem, or "mmlu"
    groups: np.ndarray  # str: MMLU subject or router-mix category ("" when the source has none)
    weak: np.ndarray  # float in [0, 1]: the weak model's outcome
    strong: np.ndarray  # float in [0, 1]: the strong model's outcome

    def __len__(self) -> int:
        return len(self.prompts)

    def take(self, mask: np.ndarray) -> Dataset:
        idx = np.flatnonzero(mask)
        return Dataset([self.prompts[i] for i in idx], self.sources[idx], self.groups[idx], self.weak[idx],
                       self.strong[idx])

    def trainable(self) -> np.ndarray:
        """Rows whose labels may be trained on (TRAIN_EXCLUDED_GROUPS are left out)."""
        keep = np.ones(len(self), dtype=bool)
        for source, group in TRAIN_EXCLUDED_GROUPS:
            keep &= ~((self.sources == source) & (self.groups == group))
        return keep

    def label(self) -> np.ndarray:
        """The target: the probability that the weak model fails and the strong one succeeds,
        reading graded outcomes as success probabilities: (1 - weak) * strong."""
        return (1.0 - self.weak) * self.strong


def outcome(value: str) -> float:
    """A cell of an outcome column: True/False, or a graded score in [0, 1]."""
    v = value.strip().lower()
    if v in ("true", "yes"):
        return 1.0
    if v in ("false", "no", ""):
        return 0.0
    x = float(v)
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"outcome outside [0, 1]: {value!r}")
    return x


def load_contaminated(mmlu_dir: Path) -> set[str]:
    """Prompts that routellm-mmlu says to exclude from any evaluation (and so from training)."""
    path = mmlu_dir / "contaminated_prompts.jsonl"
    out: set[str] = set()
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rec = json.loads(line)
                for key in ("eval_prompt", "train_prompt", "prompt"):
                    if isinstance(rec.get(key), str):
                        out.add(rec[key].strip())
    return out


def _read_csv(path: Path, source: str, group: str | None, skip: set[str], into: dict[str, list]) -> tuple[int, int]:
    rows = excluded = 0
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        next(reader, None)  # header: model names, not stable; read by position
        for row in reader:
            if len(row) < 3:
                continue
            rows += 1
            if row[0].strip() in skip:
                excluded += 1
                continue
            into["prompts"].append(row[0])
            into["sources"].append(source)
            into["groups"].append(group if group is not None else (row[3] if len(row) > 3 else ""))
            into["weak"].append(outcome(row[1]))
            into["strong"].append(outcome(row[2]))
    return rows, excluded


def load(data_dir: Path) -> tuple[Dataset, dict]:
    """Both data sets under ``data_dir`` (``router-mix/*.csv`` and ``routellm-mmlu/mmlu_*.csv``),
    less routellm-mmlu's contaminated prompts; with per-source counts for the report."""
    mix, mmlu = data_dir / "router-mix", data_dir / "routellm-mmlu"
    mix_files, mmlu_files = sorted(mix.glob("*.csv")), sorted(mmlu.glob("mmlu_*.csv"))
    if not mix_files or not mmlu_files:
        raise SystemExit(f"expected {mix}/*.csv and {mmlu}/mmlu_*.csv (use --data DIR)")
    cols: dict[str, list] = {k: [] for k in ("prompts", "sources", "groups", "weak", "strong")}
    contaminated = load_contaminated(mmlu)
    stats: dict = {"sources": {}}
    total = excluded = 0
    for path in mmlu_files:
        n, x = _read_csv(path, MMLU_SOURCE, path.stem.removeprefix("mmlu_"), contaminated, cols)
        total, excluded = total + n, excluded + x
    stats["mmlu_contaminated_excluded"] = excluded
    for path in mix_files:
        _read_csv(path, path.stem, None, set(), cols)
    ds = Dataset(cols["prompts"], np.array(cols["sources"]), np.array(cols["groups"]),
                 np.array(cols["weak"], dtype=np.float64), np.array(cols["strong"], dtype=np.float64))
    for source in sorted(set(cols["sources"])):
        m = ds.sources == source
        stats["sources"][source] = {
            "rows": int(m.sum()), "weak": round(float(ds.weak[m].mean()), 4),
            "strong": round(float(ds.strong[m].mean()), 4), "label_mean": round(float(ds.label()[m].mean()), 4),
        }
    stats["rows"] = len(ds)
    stats["rows_trainable"] = int(ds.trainable().sum())
    return ds, stats
