"""The difficulty estimate: shipped weights, score contract and speed, stable features, and the trainer.

The trainer is exercised on tiny synthetic data only, so these tests need neither the MMLU data nor
more than a few seconds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from switchboard.router import difficulty as D
from switchboard.router.difficulty import DEFAULT_WEIGHTS, DifficultyModel, features

REPO_ROOT = Path(__file__).resolve().parents[2]


def _load_trainer():
    spec = importlib.util.spec_from_file_location("train_difficulty", REPO_ROOT / "scripts" / "train_difficulty.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("train_difficulty", module)
    spec.loader.exec_module(module)
    return module


T = _load_trainer()

EASY = [
    "hi",
    "Hello! How are you today?",
    "What is the capital of France?\nA. Paris\nB. London\nC. Rome\nD. Madrid\nAnswer:",
    "Which ocean is the largest?\nA. Atlantic\nB. Pacific\nC. Indian\nD. Arctic\nAnswer:",
    "Thanks, that's all.",
]
HARD = [
    # professional-law style: long fact pattern, near-identical options
    "A homeowner entered into a written contract with a contractor to renovate her kitchen for $40,000. "
    "The contract provided that the contractor would not be paid until the homeowner's architect certified "
    "that the work had been completed in accordance with the plans. After the contractor finished, the "
    "architect refused to issue the certificate, although the work was substantially complete, because the "
    "homeowner had asked him not to. The contractor sued the homeowner for breach of contract. In her "
    "defense, the homeowner argued that the condition precedent had not been satisfied and that the "
    "contractor's failure to install a specified brand of faucet was a material breach. The contractor "
    "argued that the condition should be excused and that the substitution was immaterial. Which of the "
    "following is the contractor's strongest argument for recovery?\n"
    "A. The homeowner's interference with the architect excused the condition, and the contractor "
    "substantially performed.\n"
    "B. The homeowner's interference with the architect excused the condition, and the contractor fully "
    "performed.\n"
    "C. The architect's certification was not a condition, and the contractor substantially performed.\n"
    "D. The architect's certification was not a condition, and the contractor fully performed.\nAnswer:",
    # college mathematics
    "Let f(x) = x^3 - 6x^2 + 11x - 6 and let g be the inverse of f restricted to [3, \\infty). "
    "Compute g'(6) and determine the value of \\int_1^3 f(x) dx.\nA. 1/2 and 0\nB. 1/2 and 2\n"
    "C. 1/11 and 0\nD. 1/26 and 0\nAnswer:",
    # formal logic
    "Identify the antecedent of the following conditional proposition: (A ⊃ B) ≡ (~B ⊃ ~A) holds whenever "
    "the conjunction (C · D) is false.\nA. (A ⊃ B)\nB. (~B ⊃ ~A)\nC. (C · D)\nD. ~(C · D)\nAnswer:",
    # paired judgements
    "For which of these two scenarios does the main character do something clearly morally wrong, according "
    "to ordinary moral standards? Scenario 1 | I took the last cookie although my sister had not eaten yet. "
    "Scenario 2 | I told my friend her haircut looked nice even though I did not like it.\n"
    "A. Wrong, Wrong\nB. Wrong, Not wrong\nC. Not wrong, Wrong\nD. Not wrong, Not wrong\nAnswer:",
]


@pytest.fixture(scope="module")
def model() -> DifficultyModel:
    return DifficultyModel.load()


def test_shipped_weights_load_with_metadata(model: DifficultyModel) -> None:
    assert DEFAULT_WEIGHTS.exists() and DEFAULT_WEIGHTS.stat().st_size < 20_000_000
    meta = model.metadata
    assert meta["feature_version"] == D.FEATURE_VERSION and meta["label"] in T.LABELS
    assert meta["label_definition"] and meta["score_meaning"] and meta["trained"]
    assert meta["data"]["rows_used"] > 10_000 and meta["data"]["contaminated_excluded"] >= 1
    held_out = meta["held_out"]
    assert held_out is not None and held_out["apgr"] > 0.55  # clearly better than random routing (0.5)
    assert model.hashed_weights.shape == (D.HASH_DIM,) and np.isfinite(model.hashed_weights).all()


def test_score_is_a_deterministic_number_in_unit_interval(model: DifficultyModel) -> None:
    prompts = EASY + HARD + ["", " ", "\n\n", "ünïcödé ✓ 日本語のテキスト", "x" * 100_000, "word " * 20_000,
                             "A. B. C. D.\nA. \nB.\n", "\x00\x01\x02", "$$\\frac{a}{b}$$ " * 300]
    for p in prompts:
        s = model.score(p)
        assert isinstance(s, float) and 0.0 <= s <= 1.0, p[:40]
        assert model.score(p) == s
    again = DifficultyModel.load()
    assert [again.score(p) for p in prompts] == [model.score(p) for p in prompts]


def test_score_is_fast(model: DifficultyModel) -> None:
    rng = np.random.default_rng(0)
    base = HARD + EASY
    prompts = [base[i % len(base)] * int(rng.integers(1, 4)) for i in range(200)]
    for p in prompts[:20]:  # warm up
        model.score(p)
    t0 = time.perf_counter()
    for p in prompts:
        model.score(p)
    mean_ms = (time.perf_counter() - t0) / len(prompts) * 1e3
    assert mean_ms < 1.0, f"{mean_ms:.3f} ms per score"


def test_harder_looking_prompts_score_higher_on_average(model: DifficultyModel) -> None:
    easy = np.mean([model.score(p) for p in EASY])
    hard = np.mean([model.score(p) for p in HARD])
    assert hard > easy
    assert model.score(HARD[0]) > model.score("hi")


def test_long_prompts_only_read_head_and_tail() -> None:
    middle_a = "alpha " * 5000
    middle_b = "omega " * 5000
    head, tail = "Question about contracts. ", "\nWhich is right?\nA. yes\nB. no\nAnswer:"
    ia, da = features(head + middle_a + tail)
    ib, db = features(head + middle_b + tail)
    assert len(ia) < 2000 and da[D.DENSE_NAMES.index("truncated")] == 1.0
    assert np.array_equal(da, db, equal_nan=True)  # same length, options and cues: same dense features


def test_features_are_stable_across_processes() -> None:
    prompt = HARD[1]
    idx, dense = features(prompt)
    code = (
        "import json, sys; from switchboard.router.difficulty import features; "
        "i, d = features(sys.argv[1]); print(json.dumps([i.tolist(), d.tolist()]))"
    )
    for seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code, prompt], env=env, capture_output=True, text=True,
                             check=True, cwd=REPO_ROOT)
        other_idx, other_dense = json.loads(out.stdout)
        assert other_idx == idx.tolist()
        assert np.allclose(other_dense, dense, equal_nan=True)
    assert idx.dtype == np.int64 and (np.diff(idx) > 0).all() and idx.min() >= 0 and idx.max() < D.HASH_DIM
    assert dense.shape == (D.N_DENSE,) and np.isfinite(dense).all()  # multiple choice: no missing features
    _, chat = features("hi there")
    assert np.isnan(chat[D.DENSE_NAMES.index("option_word_overlap")])  # not multiple choice: missing


# ------------------------------------------------------------------------------- the trainer


def _synthetic(n: int = 600, seed: int = 1) -> T.Dataset:
    """Prompts mentioning integrals/eigenvalues are won by the strong model; the rest are ties."""
    rng = np.random.default_rng(seed)
    hard_words = ["integral", "eigenvalue", "derivative", "theorem", "matrix"]
    easy_words = ["capital", "colour", "animal", "fruit", "city"]
    prompts, subjects, weak, strong = [], [], [], []
    for i in range(n):
        hard = bool(rng.random() < 0.4)
        word = rng.choice(hard_words if hard else easy_words)
        filler = " ".join(rng.choice(["the", "a", "of", "which", "is", "what", "about"], size=6))
        prompts.append(f"Question {i}: {filler} {word}?\nA. one\nB. two\nC. three\nD. four\nAnswer:")
        subjects.append(f"subject_{i % 6}")
        noise = rng.random() < 0.1
        weak.append(not hard if not noise else hard)
        strong.append(True)
    return T.Dataset(prompts, np.array(subjects), np.array(weak), np.array(strong))


def test_trainer_learns_an_obvious_signal(tmp_path: Path) -> None:
    ds = _synthetic()
    X = T.featurize(ds.prompts)
    for label in ("weak_wrong_strong_right", "strong_wins"):
        y = T.make_labels(ds, label)
        params = T.fit(X, y, max_iter=100)
        p = T._sigmoid(params.logits(X))
        assert T.auc(p, ~ds.weak & ds.strong) > 0.85
    oof, row_fold, folds = T.cross_validate(ds, X, "strong_wins", k=3, verbose=False, max_iter=100)
    assert sorted(set(folds.values())) == [0, 1, 2] and len(folds) == 6
    metrics = T.routing_metrics(oof, ds.weak, ds.strong)
    # Perfect ranking of this data gives APGR ~0.73 and CPT(80%) ~0.37; random routing 0.5 and 0.8.
    assert metrics["apgr"] > 0.65 and metrics["cpt80"] is not None and metrics["cpt80"] < 0.5

    # What the trainer writes is what the runtime serves.
    meta = {**T.feature_config(), "label": "strong_wins", "score_transform": "net_gain"}
    T.save_weights(tmp_path / "w.npz", params, meta)
    served = DifficultyModel.load(tmp_path / "w.npz")
    expected = D.transform_scores(T._sigmoid(params.logits(X)), "net_gain")
    got = np.array([served.score(q) for q in ds.prompts])
    assert np.allclose(got, expected, atol=1e-6)


def test_routing_metrics_reference_points() -> None:
    weak = np.array([1, 1, 0, 0, 1, 0, 1, 0], dtype=bool)
    strong = np.array([1, 1, 1, 1, 0, 1, 1, 0], dtype=bool)
    # Constant scores = random routing: PGR grows linearly, APGR 0.5, CPT(x) = x.
    m = T.routing_metrics(np.zeros(8), weak, strong)
    assert m["apgr"] == pytest.approx(0.5) and m["cpt50"] == pytest.approx(0.5) and m["cpt80"] == pytest.approx(0.8)
    assert m["curve"][0]["accuracy"] == pytest.approx(weak.mean())
    assert m["curve"][-1]["accuracy"] == pytest.approx(strong.mean())
    # Oracle order (strong-only first, weak-only last) beats random; its reverse is worse.
    gain = strong.astype(int) - weak.astype(int)
    assert T.routing_metrics(gain.astype(float), weak, strong)["apgr"] > 0.7
    assert T.routing_metrics(-gain.astype(float), weak, strong)["apgr"] < 0.3
    assert T.auc(np.arange(4.0), np.array([0, 0, 1, 1], dtype=bool)) == 1.0
    assert T.auc(np.ones(4), np.array([0, 0, 1, 1], dtype=bool)) == 0.5


def test_subject_folds_hold_every_subject_out_once() -> None:
    subjects = np.array([f"s{i % 13}" for i in range(500)])
    folds = T.subject_folds(subjects, k=5, seed=3)
    assert set(folds) == set(subjects) and set(folds.values()) == set(range(5))
    assert folds == T.subject_folds(subjects, k=5, seed=3)


def test_dataset_reads_columns_by_position_and_drops_contaminated(tmp_path: Path) -> None:
    (tmp_path / "mmlu_toy.csv").write_text(
        "prompt,some/weak-model,another/strong-model\n"
        '"Q1?\nA. x\nB. y\nAnswer:",True,False\n'
        '"Q2?\nA. x\nB. y\nAnswer:",False,True\n'
        '"Q3 leaked\nAnswer:",False,False\n',
        encoding="utf-8",
    )
    (tmp_path / "contaminated_prompts.jsonl").write_text(
        json.dumps({"train_prompt": "other", "eval_prompt": "Q3 leaked\nAnswer:", "train_idx": 0, "eval_idx": 2})
        + "\n", encoding="utf-8")
    ds, stats = T.load_dataset(tmp_path)
    assert stats["rows"] == 3 and stats["contaminated_excluded"] == 1 and len(ds) == 2
    assert ds.weak.tolist() == [True, False] and ds.strong.tolist() == [False, True]
    assert ds.subjects.tolist() == ["toy", "toy"]
