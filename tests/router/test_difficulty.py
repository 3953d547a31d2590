"""The difficulty estimate: shipped weights, score contract and speed, stable features, and the trainer.

The trainer is exercised end to end on small synthetic data laid out like ../shared/data, so these
tests need neither the real data nor more than a few seconds of fitting.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from switchboard.router import difficulty as D
from switchboard.router import difficulty_features as F
from switchboard.router.difficulty import DEFAULT_WEIGHTS, DifficultyModel, features

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "scripts"))
T = importlib.import_module("train_difficulty")
data = importlib.import_module("difficulty_data")
fitting = importlib.import_module("difficulty_fit")
metrics = importlib.import_module("difficulty_metrics")

SAMPLES = [
    "hi",
    "Remind me to buy milk",
    "Janet has 3 boxes with 12 apples each. She gives 7 apples to each of 4 friends. How many are left?",
    "Write a 300+ word essay on tides. Do not use any commas and highlight at least 3 sections in markdown.",
    "Complete the following Python function:\n```python\ndef f(xs: list[int]) -> int:\n    '''Sum.'''\n```",
    "What is the capital of France?\nA. Paris\nB. London\nC. Rome\nD. Madrid\nAnswer:",
    "Let f(x) = x^3 - 6x^2 + 11x - 6. Compute \\int_1^3 f(x) dx and prove that f has three real roots.",
]


@pytest.fixture(scope="module")
def model() -> DifficultyModel:
    return DifficultyModel.load()


def test_shipped_weights_say_what_they_are(model: DifficultyModel) -> None:
    assert DEFAULT_WEIGHTS.exists() and DEFAULT_WEIGHTS.stat().st_size < 20_000_000
    meta = model.metadata
    assert meta["feature_version"] == F.FEATURE_VERSION and meta["label"] == T.LABEL
    assert "fails" in meta["score_meaning"] and meta["trained"]
    sources = meta["data"]["sources"]
    assert {"mmlu", "arena_bench", "ifeval", "humaneval_plus", "mbpp_plus", "cruxeval", "mmlu_pro",
            "theoremqa"} <= set(sources) and meta["data"]["rows"] > 20_000
    held_out = meta["held_out"]
    assert set(held_out) == set(sources)  # every source measured held out
    assert model.slope > 0 and model.hashed_weights.shape == (F.HASH_DIM,)
    assert np.isfinite(model.hashed_weights).all()


def test_score_is_a_deterministic_probability(model: DifficultyModel) -> None:
    prompts = SAMPLES + ["", " ", "\n\n", "ünïcödé ✓ 日本語のテキスト", "x" * 100_000, "word " * 20_000,
                         "A. B. C. D.\nA. \nB.\n", "\x00\x01\x02", "$$\\frac{a}{b}$$ " * 300, "1 2 3 " * 5000]
    for p in prompts:
        s = model.score(p)
        assert isinstance(s, float) and 0.0 <= s <= 1.0, p[:40]
        assert model.score(p) == s
    again = DifficultyModel.load()
    assert [again.score(p) for p in prompts] == [model.score(p) for p in prompts]


def test_score_is_fast(model: DifficultyModel) -> None:
    prompts = [SAMPLES[i % len(SAMPLES)] * (1 + i % 3) for i in range(300)]
    for p in prompts[:30]:  # warm up
        model.score(p)
    t0 = time.perf_counter()
    for p in prompts:
        model.score(p)
    mean_ms = (time.perf_counter() - t0) / len(prompts) * 1e3
    assert mean_ms < 1.0, f"{mean_ms:.3f} ms per score"


def test_a_longer_multi_step_problem_scores_higher_than_small_talk(model: DifficultyModel) -> None:
    hard = ("A store sells pencils at $0.35 each and notebooks at $2.40 each. Maria buys 3 notebooks and twice as "
            "many pencils as notebooks, pays with a $20 bill, then spends 40% of her change on stickers that cost "
            "$0.15 each. How many stickers does she buy, and how much money does she have left?")
    assert model.score(hard) > model.score("hi") and model.score(hard) > model.score("Remind me to buy milk")


def test_long_prompts_only_read_head_and_tail() -> None:
    head, tail = "Question about contracts. ", "\nWhich is right?\nA. yes\nB. no\nAnswer:"
    ia, da = features(head + "alpha " * 5000 + tail)
    ib, db = features(head + "omega " * 5000 + tail)
    assert len(ia) < 2000 and da[F.DENSE_NAMES.index("truncated")] == 1.0
    assert np.array_equal(da, db, equal_nan=True)  # same length, options and cues: same dense features


def test_features_are_stable_across_processes() -> None:
    prompt = SAMPLES[6]
    idx, dense = features(prompt)
    code = ("import json, sys; from switchboard.router.difficulty import features; "
            "i, d = features(sys.argv[1]); print(json.dumps([i.tolist(), d.tolist()]))")
    for seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code, prompt], env=env, capture_output=True, text=True,
                             check=True, cwd=REPO_ROOT)
        other_idx, other_dense = json.loads(out.stdout)
        assert other_idx == idx.tolist()
        assert np.allclose(other_dense, dense, equal_nan=True)
    assert idx.dtype == np.int64 and (np.diff(idx) > 0).all() and idx.min() >= 0 and idx.max() < F.HASH_DIM
    assert dense.shape == (F.N_DENSE,)


def test_structure_features_see_numbers_constraints_code_and_steps() -> None:
    def feat(prompt: str, name: str) -> float:
        return float(features(prompt)[1][F.DENSE_NAMES.index(name)])

    problem = SAMPLES[2]
    assert feat(problem, "log_numbers") > feat("hi", "log_numbers") and feat(problem, "how_many_much") == 1.0
    assert feat(SAMPLES[3], "constraints") > 0 and feat(SAMPLES[3], "requested_length") > 0
    assert feat(SAMPLES[4], "code_fences") > 0 and feat(SAMPLES[4], "task_coding") == 1.0
    assert feat("First do A, then B, and finally C.", "step_words") > 0
    assert feat(SAMPLES[5], "n_options") == 4.0 and np.isnan(feat("hi", "log_option_bytes_mean"))


def test_quantity_counts_the_numbers_of_maths_and_word_problems_only() -> None:
    """Numbers count where they are quantities to combine: maths and word problems (the class need
    not say maths); not in code, format rules, options or small talk."""
    story = SAMPLES[2]  # Janet: 3, 12, 7, 4 and "How many"
    assert F.quantity(story) == pytest.approx(np.log1p(4))
    assert F.quantity(SAMPLES[6]) is not None  # maths by its class, with one number or more
    assert F.quantity("Prove that there are infinitely many primes.") is None  # none: the content term
    longer = ("A baker makes 24 rolls an hour for 6 hours, sells 85 of them at $1.25 and gives 12 away. "
              "How much money does she make, and how many rolls are left?")
    assert F.quantity(longer) > F.quantity(story)
    for other in ("hi", "Remind me to buy milk at 5", SAMPLES[3], SAMPLES[4], SAMPLES[5],
                  "Is 1 bigger than 2?", "```python\nx = [1, 2, 3]\nprint(len(x))  # how many?\n```"):
        assert F.quantity(other) is None, other


def test_a_word_problem_counts_whatever_it_asks_and_quantities_in_words() -> None:
    """A word problem is one whether it asks "how many" or "what is the total cost" (the gate once
    took only the first, so half of plain word problems were ranked by another rule); "twice" and
    "half" are quantities too; the lines of multiple-choice options are candidate answers, not
    quantities of the problem."""
    cost = ("A bakery sells muffins for $2.50 each and cookies for $1.25 each. Maria buys 4 muffins and "
            "6 cookies. What is the total cost?")
    assert F.quantity(cost) == pytest.approx(np.log1p(4))
    roses = "Jenna has twice as many roses as tulips. If she has 18 tulips, what is the total number of flowers?"
    assert F.quantity(roses) == pytest.approx(np.log1p(2))
    assert F.quantity("Compute 22 / 2 + 9.\nA. 10\nB. 11\nC. 20\nD. 2\nAnswer:") == pytest.approx(np.log1p(3))


def test_numbers_of_format_rules_are_not_quantities() -> None:
    """A word count or a paragraph count sizes the answer, not the problem: it neither adds to a
    word problem's count nor makes a writing request with a "how many" look like a word problem;
    a quantity that merely sits near such words (6 letters to partition, 3 times as many) still counts."""
    story = SAMPLES[2]
    assert F.quantity(story + " Answer in at most 3 sentences and 2 bullet points.") == F.quantity(story)
    assert F.quantity("How many feet tall was the tallest tower in 2000? Use the word tower at least 8 times "
                      "and write exactly 3 paragraphs.") is None
    assert F.quantity("In how many ways can a set of 6 distinct letters be split into 3 groups?") == pytest.approx(
        np.log1p(2))
    assert F.quantity("Ann has 4 cats and 3 times as many fish. How many pets does she have?") == pytest.approx(
        np.log1p(2))


def test_the_quantity_term_replaces_the_regression_for_quantitative_prompts(model: DifficultyModel) -> None:
    """Where quantity() applies, the served logit is length_weight * log bytes + weight * (quantity -
    centre) / spread (the content regression does not apply); elsewhere it is the regression alone.
    Both are saved and loaded with the weights."""
    weights = np.load(DEFAULT_WEIGHTS)
    plain = dataclasses.replace(model, quantity=(0.0, 0.0, 1.0))
    with_q = dataclasses.replace(model, quantity=(0.8, 1.5, 0.5), length_weight=0.7)
    story = SAMPLES[2]  # four numbers, a "how many" question
    assert with_q.logit(story) == pytest.approx(
        0.7 * np.log1p(len(story.encode())) + 0.8 * (np.log1p(4) - 1.5) / 0.5)
    assert with_q.logit(story) != plain.logit(story)
    for other in ("hi", SAMPLES[3], SAMPLES[4]):
        assert with_q.logit(other) == plain.logit(other)
    assert tuple(weights["quantity"]) == model.quantity and float(weights["length_weight"]) == model.length_weight
    assert model.quantity[0] > 0 and model.length_weight > 0


# ------------------------------------------------------------------------------- the trainer


def _write_data(root: Path, seed: int = 1) -> None:
    """Synthetic data in ../shared/data's layout: three router-mix sources and three MMLU subjects.
    In every source, prompts mentioning hard words (and longer ones) are won by the strong model."""
    rng = np.random.default_rng(seed)
    hard_words, easy_words = ["integral", "eigenvalue", "theorem", "recursion"], ["capital", "colour", "fruit", "city"]
    (root / "router-mix").mkdir(parents=True)
    (root / "routellm-mmlu").mkdir(parents=True)

    def rows(n: int, template: str, graded: bool) -> list[list[str]]:
        out = []
        for i in range(n):
            hard = bool(rng.random() < 0.4)
            word = rng.choice(hard_words if hard else easy_words)
            pad = " and then explain each step carefully" * (3 if hard else 0)
            weak = float(not hard) if rng.random() > 0.1 else float(hard)
            strong = 1.0 if rng.random() > 0.05 else 0.0
            if graded:
                weak, strong = round(0.2 + 0.6 * weak, 3), round(0.3 + 0.7 * strong, 3)
            out.append([template.format(i=i, word=word) + pad, str(weak if graded else bool(weak)),
                        str(strong if graded else bool(strong))])
        return out

    for name, template, graded in (("chat", "Tell me about the {word} number {i}", True),
                                   ("code", "Write a function about {word} {i}", False),
                                   ("maths", "Solve the {word} problem {i} with 3 and 4", False)):
        with (root / "router-mix" / f"{name}.csv").open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["prompt", "weak/model", "strong/model", "category"])
            w.writerows(r + [name] for r in rows(120, template, graded))
    for subject in ("alpha", "beta", "high_school_mathematics"):
        with (root / "routellm-mmlu" / f"mmlu_{subject}.csv").open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["prompt", "weak", "strong"])
            w.writerows(rows(100, "Which {word} question " + subject + " {i}?\nA. a\nB. b\nC. c\nD. d\nAnswer:", False))
    (root / "routellm-mmlu" / "contaminated_prompts.jsonl").write_text(
        json.dumps({"eval_prompt": "Which capital question alpha 0?\nA. a\nB. b\nC. c\nD. d\nAnswer:"}) + "\n")


def test_data_reads_both_sets_by_position_with_graded_outcomes(tmp_path: Path) -> None:
    _write_data(tmp_path)
    ds, stats = data.load(tmp_path)
    assert set(stats["sources"]) == {"chat", "code", "maths", "mmlu"}
    chat = ds.sources == "chat"
    assert ((ds.weak[chat] > 0) & (ds.weak[chat] < 1)).all()  # graded scores kept as they are
    assert set(np.unique(ds.weak[ds.sources == "code"])) <= {0.0, 1.0}
    assert np.allclose(ds.label(), (1 - ds.weak) * ds.strong)
    hs = ds.groups == "high_school_mathematics"
    assert hs.sum() == 100 and not ds.trainable()[hs].any() and ds.trainable()[~hs].all()
    assert stats["mmlu_contaminated_excluded"] <= 1 and (ds.sources == "mmlu").sum() >= 299
    with pytest.raises(ValueError):
        data.outcome("1.5")


def test_trainer_end_to_end_on_synthetic_data(tmp_path: Path) -> None:
    _write_data(tmp_path / "data")
    # As an operator runs it (one command), in a process of its own (its BLAS set to one thread).
    done = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "train_difficulty.py"), "--data",
                           str(tmp_path / "data"), "--out", str(tmp_path / "w.npz"), "--report",
                           str(tmp_path / "r.json"), "--max-iter", "40"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "| held-out source |" in done.stdout  # the table docs/routing.md shows
    report = json.loads((tmp_path / "r.json").read_text())
    assert set(report["sources"]) == {"chat", "code", "maths", "mmlu"}
    for source, r in report["sources"].items():
        assert r["random"] == {"apgr": 0.5, "cpt50": 0.5, "cpt80": 0.8}
        assert 0 <= r["router"]["apgr"] <= 1 and 0 <= r["length"]["apgr"] <= 1
        assert r["calibration"]["bins"] and 0 <= r["calibration"]["ece"] <= 1
    # The signal is in the words and the length in every source: held out, the router finds it.
    assert min(r["router"]["apgr"] for r in report["sources"].values()) > 0.6
    assert report["blend"] in T.BLENDS
    shares = report["tiers"]["all"]
    assert abs(sum(shares.values()) - 1) < 1e-3

    # What the trainer writes is what the runtime serves: the same calibrated number per prompt.
    served = DifficultyModel.load(tmp_path / "w.npz")
    assert served.metadata["blend"] == report["blend"] and served.slope > 0
    ds, _ = data.load(tmp_path / "data")
    easy = [served.score(p) for p, s in zip(ds.prompts, ds.label()) if s == 0]
    hard = [served.score(p) for p, s in zip(ds.prompts, ds.label()) if s == 1]
    assert np.mean(hard) > np.mean(easy)
    X = fitting.featurize(ds.prompts[:50])
    p = fitting.Params(served.hashed_weights.astype(np.float64), served.dense_weights, served.bin_edges,
                       served.bin_weights, served.dense_fill, served.dense_lo, served.dense_hi, served.intercept)
    weight, centre, spread = served.quantity
    assert weight == report["quantity"]["weight"] in T.QUANTITY_WEIGHTS and spread > 0
    q = np.array([np.nan if (v := F.quantity(x)) is None else v for x in ds.prompts[:50]])
    assert (~np.isnan(q)).any() and np.isnan(q).any()  # both kinds of prompt are checked
    length = np.clip(np.log1p([len(x.encode()) for x in ds.prompts[:50]]), served.dense_lo[D._LENGTH],
                     served.dense_hi[D._LENGTH])
    logit = np.where(np.isnan(q), p.logits(X), served.length_weight * length + weight * (q - centre) / spread)
    expected = D.calibrate(logit, served.slope, served.offset)
    assert np.allclose([served.score(x) for x in ds.prompts[:50]], expected, atol=1e-6)



def test_folded_weights_are_the_trainers_served_logit(tmp_path: Path) -> None:
    """What ships for prompts without quantities is one set of weights; its logit is the trainer's
    z(length) + blend x (content logit - mean) / spread, with length clipped to the range given."""
    _write_data(tmp_path)
    ds, _ = data.load(tmp_path)
    X = fitting.featurize(ds.prompts)
    fit = fitting.fit(X, ds.label(), ds.sources, dataclasses.replace(T.CONFIG, max_iter=30))
    content = fit.logits(X)
    length = T.length_signal(ds.prompts)
    len_sd, mean, sd = float(length.std()), float(content.mean()), float(content.std())
    folded = T.blended_params(fit, 0.3, len_sd, mean, sd, (float(length.min()), float(length.max())))
    assert np.allclose(folded.logits(X), length / len_sd + 0.3 * (content - mean) / sd, atol=1e-9)


def test_routing_metrics_reference_points() -> None:
    weak = np.array([1, 1, 0, 0, 1, 0, 1, 0], dtype=float)
    strong = np.array([1, 1, 1, 1, 0, 1, 1, 0], dtype=float)
    m = metrics.routing_metrics(np.zeros(8), weak, strong)  # constant scores = random routing
    assert m["apgr"] == pytest.approx(0.5) and m["cpt50"] == pytest.approx(0.5) and m["cpt80"] == pytest.approx(0.8)
    assert m["curve"][0]["accuracy"] == pytest.approx(weak.mean())
    assert m["curve"][-1]["accuracy"] == pytest.approx(strong.mean())
    gain = strong - weak
    assert metrics.apgr(gain, weak, strong) > 0.7 and metrics.apgr(-gain, weak, strong) < 0.3
    graded_weak, graded_strong = weak * 0.5 + 0.2, strong * 0.5 + 0.4  # graded outcomes: means, same curve shape
    assert metrics.apgr(np.zeros(8), graded_weak, graded_strong) == pytest.approx(0.5)
    assert metrics.auc(np.arange(4.0), np.array([0, 0, 1, 1], dtype=bool)) == 1.0
    lo, hi = metrics.apgr_interval(gain, gain, weak, strong, rounds=50)
    assert lo == hi == 0.0


def test_platt_scaling_recovers_a_calibration_and_reports_it() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, 20_000)
    p_true = 1 / (1 + np.exp(-(0.5 * z - 1.0)))
    y = (rng.random(z.size) < p_true).astype(float)
    slope, offset = metrics.platt(z, y)
    assert slope == pytest.approx(0.5, abs=0.03) and offset == pytest.approx(-1.0, abs=0.05)
    good = metrics.calibration_report(D.calibrate(z, slope, offset), y)
    bad = metrics.calibration_report(D.calibrate(z, 1.0, 0.0), y)
    assert good["ece"] < 0.02 < bad["ece"] and len(good["bins"]) == 10
    assert good["mean_predicted"] == pytest.approx(good["mean_observed"], abs=0.01)


def test_source_weights_give_every_source_the_same_say() -> None:
    sources = np.array(["a"] * 90 + ["b"] * 10)
    w = fitting.source_weights(sources, 1.0)
    assert w[sources == "a"].sum() == pytest.approx(w[sources == "b"].sum()) and w.mean() == pytest.approx(1.0)
    assert np.allclose(fitting.source_weights(sources, 0.0), 1.0)


def test_weights_of_another_feature_window_are_refused(tmp_path: Path) -> None:
    """The window decides every feature, so weights trained on another one must not load quietly."""
    weights = dict(np.load(DEFAULT_WEIGHTS))
    meta = json.loads(str(weights["metadata"]))
    meta["head_bytes"] = F.HEAD_BYTES * 2
    weights["metadata"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "w.npz", **weights)
    with pytest.raises(ValueError, match="window"):
        DifficultyModel.load(tmp_path / "w.npz")


def test_the_length_only_shortcut_gives_the_full_computation(model: DifficultyModel) -> None:
    """With every weight but length's at zero, score() reads the prompt's length alone; the number
    is the one the full feature computation gives."""
    weights = np.load(DEFAULT_WEIGHTS)
    keep = D._LENGTH
    dense = np.zeros(F.N_DENSE)
    dense[keep] = 0.7
    bins = np.zeros_like(model.bin_weights)
    bins[keep] = np.linspace(-0.2, 0.3, bins.shape[1])
    edges = model.bin_edges.copy()
    edges[keep] = np.linspace(3, 8, edges.shape[1])
    args = (np.zeros(F.HASH_DIM, np.float32), dense, edges, bins, model.dense_fill, model.dense_lo, model.dense_hi,
            -1.5, 0.9, -0.3)
    short, full = DifficultyModel(*args), DifficultyModel(*args)
    full._length_only = False
    assert short._length_only and weights is not None
    for p in SAMPLES + ["", "é" * 3000, "x" * 200_000]:
        assert short.score(p) == pytest.approx(full.score(p), abs=1e-12)


# Kinds of work, in the order a cheap model falls behind a strong one on a mixed chat workload
# (docs/routing.md, "The two named held-out measurements"): written for this test, not taken from
# any benchmark.
_HARD_KINDS = {
    "maths": ["A rectangle has a perimeter of 36 cm and its length is twice its width. What is its area?",
              "If f(x) = 3x^2 - 5x + 2, what is f(4)?",
              "A shop sold 45 shirts on Monday and 20% more on Tuesday. How many shirts did it sell over both days?"],
    "reasoning": ["A man has four daughters and each daughter has one brother. How many children does he have?",
                  "If all bloops are razzies and some razzies are lazzies, must some bloops be lazzies?",
                  "Anna is taller than Ben, and Ben is taller than Carl. Is Carl taller than Anna? Explain."],
    "code": ["Write a Python function that returns the longest palindromic substring of a string.",
             "Implement a LRU cache in Java with O(1) get and put.",
             "Write a SQL query that finds the second highest salary in an employees table."],
}
_EASY_KINDS = {
    "small talk": ["hi there, how are you today?", "remind me to call mom at 6pm", "thanks, that was helpful!"],
    "knowledge": ["Why is the sky blue?", "What is the difference between mitosis and meiosis?",
                  "Explain how vaccines train the immune system."],
    "humanities": ["What were the main causes of the French Revolution?",
                   "How does inflation affect people who save money?",
                   "Compare the leadership styles of Lincoln and Churchill."],
}


def test_maths_reasoning_and_code_rate_harder_than_small_talk_and_knowledge(model: DifficultyModel) -> None:
    """On a mixed workload the order between kinds of work decides what routing saves: a cheap
    model falls behind on maths, reasoning and code, hardly on small talk and knowledge questions.
    The previous estimate rated short maths questions the easiest of all (its count of numbers was
    centred on multiple-choice questions' ten), which this guards against."""
    mean = lambda kinds: {k: float(np.mean([model.score(p) for p in ps])) for k, ps in kinds.items()}  # noqa: E731
    hard, easy = mean(_HARD_KINDS), mean(_EASY_KINDS)
    assert min(hard.values()) > max(easy.values()), (hard, easy)
