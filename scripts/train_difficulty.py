#!/usr/bin/env python3
"""Train and validate the router's difficulty estimate (switchboard/router/difficulty.py).

Data: the RouteLLM MMLU outcomes (57 CSVs, one per subject; columns by position: prompt, weak model
correct, strong model correct) plus ``contaminated_prompts.jsonl``, whose prompts are excluded from
training and from evaluation.

    .venv/bin/python scripts/train_difficulty.py --evaluate   # subject-grouped CV -> docs/routing-results.json
    .venv/bin/python scripts/train_difficulty.py              # train on all rows -> weights file

``--evaluate`` holds out whole subjects (every subject exactly once) and never scores a question the
fold trained on (prompts that occur in two subjects are dropped from that fold's training rows).
From the out-of-fold scores it computes the routing curve (accuracy vs share of strong-model calls
when "score >= threshold" goes to the strong model), APGR, CPT(50%), CPT(80%) and AUC, for each
candidate label, and names the label that routes best on the subjects with valid labels (ties within
0.01 go to DEFAULT_LABEL, the issue's definition). Training uses DEFAULT_LABEL unless --label says
otherwise, leaves TRAIN_EXCLUDED_SUBJECTS out, and copies the report's held-out metrics for its label
into the weights' metadata (so run --evaluate first).

    .venv/bin/python scripts/train_difficulty.py --benchmark  # score() latency, per call

Only numpy and the standard library are used: logistic regression with L2, fitted by full-batch
L-BFGS over index arrays (np.bincount) instead of a sparse-matrix library.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from switchboard.router import difficulty as D  # noqa: E402

DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "routellm-mmlu"
DEFAULT_REPORT = REPO_ROOT / "docs" / "routing-results.json"
SEED = 20240601
N_FOLDS = 8
L2_HASHED = 1e-4
L2_DENSE = 1e-2
MAX_ITER = 200
# Subjects whose labels are evidently broken are left out of *training* (still scored when held out):
# in high_school_mathematics the strong model is "correct" on 7 of 270 questions (2.6%, far below the 25%
# of guessing among four options), so its strong-model labels are not a measurement of the strong model.
TRAIN_EXCLUDED_SUBJECTS = ("high_school_mathematics",)

LABELS = {
    "weak_wrong_strong_right": "1 if the weak model is wrong and the strong model is right, else 0",
    "weak_wrong": "1 if the weak model is wrong (whatever the strong model does), else 0",
    "strong_wins": "soft 'strong model wins' target (1 + strong_correct - weak_correct) / 2: 1 if only the strong "
                   "model is right, 0 if only the weak model is right, 0.5 if both or neither",
}
SCORE_MEANING = {
    "weak_wrong_strong_right": "P(weak model fails and strong model succeeds)",
    "weak_wrong": "P(weak model fails)",
    "strong_wins": "net probability that the strong model is needed: max(0, P(weak fails and strong succeeds) - "
                   "P(weak succeeds and strong fails)) = max(0, 2p - 1), p = the regression's P(strong wins, ties "
                   "half); i.e. the expected gain in accuracy from escalating, floored at 0",
}
# How DifficultyModel.score turns the regression's probability p into the served difficulty.
TRANSFORM = {"weak_wrong_strong_right": "probability", "weak_wrong": "probability", "strong_wins": "net_gain"}
DEFAULT_LABEL = "weak_wrong_strong_right"  # the definition; best held-out APGR on valid labels


# ----------------------------------------------------------------------------------------- data


@dataclass
class Dataset:
    prompts: list[str]
    subjects: np.ndarray  # str
    weak: np.ndarray  # bool: weak model correct
    strong: np.ndarray  # bool: strong model correct

    def __len__(self) -> int:
        return len(self.prompts)

    def take(self, mask: np.ndarray) -> Dataset:
        idx = np.flatnonzero(mask)
        return Dataset([self.prompts[i] for i in idx], self.subjects[idx], self.weak[idx], self.strong[idx])


def _as_bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("true", "1", "1.0", "yes"):
        return True
    if v in ("false", "0", "0.0", "no", ""):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def load_contaminated(data_dir: Path) -> set[str]:
    path = data_dir / "contaminated_prompts.jsonl"
    out: set[str] = set()
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rec = json.loads(line)
                for key in ("eval_prompt", "train_prompt", "prompt"):
                    if isinstance(rec.get(key), str):
                        out.add(rec[key].strip())
    return out


def load_dataset(data_dir: Path) -> tuple[Dataset, dict]:
    """All rows except the contaminated ones; columns read by position."""
    files = sorted(data_dir.glob("*.csv"))
    if not files:
        raise SystemExit(f"no CSV files in {data_dir} (use --data DIR)")
    contaminated = load_contaminated(data_dir)
    prompts: list[str] = []
    subjects: list[str] = []
    weak: list[bool] = []
    strong: list[bool] = []
    total = excluded = 0
    for path in files:
        subject = path.stem.removeprefix("mmlu_")
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            next(reader, None)  # header: model names are not stable, read by position
            for row in reader:
                if len(row) < 3:
                    continue
                total += 1
                if row[0].strip() in contaminated:
                    excluded += 1
                    continue
                prompts.append(row[0])
                subjects.append(subject)
                weak.append(_as_bool(row[1]))
                strong.append(_as_bool(row[2]))
    ds = Dataset(prompts, np.array(subjects), np.array(weak, dtype=bool), np.array(strong, dtype=bool))
    stats = {"files": len(files), "rows": total, "contaminated_excluded": excluded, "rows_used": len(ds),
             "subjects": len(set(subjects))}
    return ds, stats


def make_labels(ds: Dataset, kind: str) -> np.ndarray:
    w = ds.weak.astype(np.float64)
    s = ds.strong.astype(np.float64)
    if kind == "weak_wrong_strong_right":
        return (1 - w) * s
    if kind == "weak_wrong":
        return 1 - w
    if kind == "strong_wins":
        return (1 + s - w) / 2
    raise ValueError(f"unknown label {kind!r}; one of {sorted(LABELS)}")


# ------------------------------------------------------------------------------------- features


@dataclass
class Matrix:
    """Rows of hashed features as index arrays (value 1/sqrt(k) per present bucket) + dense block."""

    rows: np.ndarray  # int64 (nnz,)
    cols: np.ndarray  # int64 (nnz,)
    vals: np.ndarray  # float64 (nnz,)
    dense: np.ndarray  # float64 (n, N_DENSE)

    @property
    def n(self) -> int:
        return self.dense.shape[0]

    def take(self, mask: np.ndarray) -> Matrix:
        idx = np.flatnonzero(mask)
        remap = np.full(self.n, -1, dtype=np.int64)
        remap[idx] = np.arange(idx.size)
        keep = remap[self.rows] >= 0
        return Matrix(remap[self.rows[keep]], self.cols[keep], self.vals[keep], self.dense[idx])


def featurize(prompts: list[str]) -> Matrix:
    rows, cols, vals = [], [], []
    dense = np.zeros((len(prompts), D.N_DENSE))
    for i, p in enumerate(prompts):
        idx, d = D.features(p)
        dense[i] = d
        if idx.size:
            rows.append(np.full(idx.size, i, dtype=np.int64))
            cols.append(idx)
            vals.append(np.full(idx.size, 1.0 / np.sqrt(idx.size)))
    if rows:
        return Matrix(np.concatenate(rows), np.concatenate(cols), np.concatenate(vals), dense)
    empty = np.zeros(0, dtype=np.int64)
    return Matrix(empty, empty, np.zeros(0), dense)


# ---------------------------------------------------------------------------------------- model


@dataclass
class Params:
    hashed: np.ndarray  # (HASH_DIM,)
    dense: np.ndarray  # (N_DENSE,) on the raw (unstandardised) features
    bin_edges: np.ndarray  # (N_DENSE, N_BIN_EDGES)
    bin_weights: np.ndarray  # (N_DENSE, N_BIN_EDGES + 1)
    fill: np.ndarray  # (N_DENSE,) training medians for missing features
    lo: np.ndarray  # (N_DENSE,) training minimum
    hi: np.ndarray  # (N_DENSE,) training maximum
    intercept: float

    def logits(self, X: Matrix) -> np.ndarray:
        z = np.bincount(X.rows, weights=X.vals * self.hashed[X.cols], minlength=X.n)
        dense = D.prepare_dense(X.dense, self.fill, self.lo, self.hi)
        bins = D.dense_bins(dense, self.bin_edges)
        z += self.bin_weights[np.arange(D.N_DENSE)[None, :], bins].sum(axis=1)
        return z + dense @ self.dense + self.intercept


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def bin_edges(dense: np.ndarray, n_edges: int = D.N_BIN_EDGES) -> np.ndarray:
    """Quantile edges per dense feature (+inf padded); mostly-zero features get a zero/non-zero edge first."""
    out = np.full((dense.shape[1], n_edges), np.inf)
    q = np.linspace(0, 1, n_edges + 2)[1:-1]
    for j in range(dense.shape[1]):
        x = dense[:, j]
        if np.unique(x).size <= 2:
            continue  # binary (or constant): the linear weight already says everything
        nz = x[x != 0]
        if (x == 0).mean() > 0.3:
            e = np.unique(np.r_[nz.min(), np.quantile(nz, q[1:])])
        else:
            e = np.unique(np.quantile(x, q))
        e = e[: n_edges]
        out[j, : e.size] = e
    return out


def _onehot_bins(dense: np.ndarray, edges: np.ndarray) -> np.ndarray:
    bins = D.dense_bins(dense, edges)
    k = edges.shape[1] + 1
    oh = np.zeros((dense.shape[0], dense.shape[1] * k))
    oh[np.arange(dense.shape[0])[:, None], np.arange(dense.shape[1])[None, :] * k + bins] = 1.0
    return oh


def fit(X: Matrix, y: np.ndarray, l2_hashed: float = L2_HASHED, l2_dense: float = L2_DENSE,
        max_iter: int = MAX_ITER, tol: float = 1e-6, verbose: bool = False) -> Params:
    """L2-regularised logistic regression (targets in [0, 1]) by L-BFGS; deterministic.

    Parameters: one weight per hash bucket, one per (standardised) dense feature, one per
    (dense feature, quantile bin) and an intercept; the dense standardisation is folded back into
    the returned weights so that serving needs no means or scales.
    """
    n, dim = X.n, D.HASH_DIM
    present = ~np.isnan(X.dense)
    # Missing -> the median (a typical prompt's value), so it lands in the majority's bin.
    fill = np.array([np.median(X.dense[present[:, j], j]) if present[:, j].any() else 0.0 for j in range(D.N_DENSE)])
    lo = np.array([X.dense[present[:, j], j].min() if present[:, j].any() else 0.0 for j in range(D.N_DENSE)])
    hi = np.array([X.dense[present[:, j], j].max() if present[:, j].any() else 0.0 for j in range(D.N_DENSE)])
    dense = D.prepare_dense(X.dense, fill, lo, hi)
    edges = bin_edges(dense)
    A = np.hstack([dense, _onehot_bins(dense, edges)])
    mu = A.mean(axis=0)
    sd = A.std(axis=0)
    sd[sd < 1e-9] = 1.0
    Z = (A - mu) / sd
    y = np.asarray(y, dtype=np.float64)
    nd = Z.shape[1]

    def loss_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, v, b = theta[:dim], theta[dim:dim + nd], theta[-1]
        z = np.bincount(X.rows, weights=X.vals * w[X.cols], minlength=n) + Z @ v + b
        loss = float(np.mean(np.logaddexp(0.0, z) - y * z))  # cross-entropy for soft targets, up to a constant
        loss += 0.5 * l2_hashed * float(w @ w) + 0.5 * l2_dense * float(v @ v)
        r = (_sigmoid(z) - y) / n
        g = np.empty_like(theta)
        g[:dim] = np.bincount(X.cols, weights=X.vals * r[X.rows], minlength=dim) + l2_hashed * w
        g[dim:dim + nd] = Z.T @ r + l2_dense * v
        g[-1] = r.sum()
        return loss, g

    theta = np.zeros(dim + nd + 1)
    p0 = float(np.clip(y.mean(), 1e-4, 1 - 1e-4))
    theta[-1] = np.log(p0 / (1 - p0))
    theta = _lbfgs(loss_grad, theta, max_iter=max_iter, tol=tol, verbose=verbose)
    w, v, b = theta[:dim], theta[dim:dim + nd], float(theta[-1])
    v_raw = v / sd
    intercept = b - float(v_raw @ mu)
    nf = D.N_DENSE
    return Params(w.copy(), v_raw[:nf], edges, v_raw[nf:].reshape(nf, D.N_BIN_EDGES + 1), fill, lo, hi, intercept)


def _lbfgs(fun, x: np.ndarray, max_iter: int, tol: float, m: int = 10, verbose: bool = False) -> np.ndarray:
    f, g = fun(x)
    s_hist: list[np.ndarray] = []
    y_hist: list[np.ndarray] = []
    for it in range(max_iter):
        # two-loop recursion
        q = g.copy()
        alphas = []
        for s, yv in zip(reversed(s_hist), reversed(y_hist)):
            rho = 1.0 / float(yv @ s)
            a = rho * float(s @ q)
            alphas.append((a, rho))
            q -= a * yv
        if s_hist:
            q *= float(s_hist[-1] @ y_hist[-1]) / float(y_hist[-1] @ y_hist[-1])
        for (a, rho), s, yv in zip(reversed(alphas), s_hist, y_hist):
            bta = rho * float(yv @ q)
            q += (a - bta) * s
        d = -q
        gd = float(g @ d)
        if gd >= 0:  # not a descent direction: restart
            s_hist.clear()
            y_hist.clear()
            d = -g
            gd = float(g @ d)
        step = 1.0 if s_hist else 1.0 / max(1.0, float(np.abs(g).max()))
        for _ in range(30):  # backtracking (Armijo)
            x_new = x + step * d
            f_new, g_new = fun(x_new)
            if f_new <= f + 1e-4 * step * gd:
                break
            step *= 0.5
        else:
            break
        s_vec, y_vec = x_new - x, g_new - g
        if float(s_vec @ y_vec) > 1e-12:
            s_hist.append(s_vec)
            y_hist.append(y_vec)
            if len(s_hist) > m:
                s_hist.pop(0)
                y_hist.pop(0)
        converged = abs(f - f_new) <= tol * max(1.0, abs(f))
        x, f, g = x_new, f_new, g_new
        if verbose and it % 20 == 0:
            print(f"    iter {it:3d} loss {f:.5f} |g| {np.abs(g).max():.2e}", flush=True)
        if converged or float(np.abs(g).max()) < 1e-7:
            break
    return x


# -------------------------------------------------------------------------------------- metrics


def routing_curve(scores: np.ndarray, weak: np.ndarray, strong: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact (share of strong calls, cumulative accuracy gain) vertices of threshold routing.

    Sending every prompt with score >= t to the strong model, for every t: vertices at each
    distinct score; between them (ties) the curve is linear, which is the expectation under
    random tie-breaking. Gain counts (strong_correct - weak_correct) of the routed prompts / N.
    """
    n = len(scores)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    s = np.asarray(scores, dtype=np.float64)[order]
    gain = strong[order].astype(np.float64) - weak[order].astype(np.float64)
    cum = np.cumsum(gain)
    ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # last index of each tie group
    share = np.r_[0.0, (ends + 1) / n]
    gained = np.r_[0.0, cum[ends] / n]
    return share, gained


def routing_metrics(scores: np.ndarray, weak: np.ndarray, strong: np.ndarray,
                    points: int = 21) -> dict:
    weak_acc = float(np.mean(weak))
    strong_acc = float(np.mean(strong))
    gap = strong_acc - weak_acc
    share, gained = routing_curve(scores, weak, strong)
    pgr = gained / gap if gap > 0 else np.zeros_like(gained)
    apgr = float(np.sum((pgr[1:] + pgr[:-1]) * np.diff(share)) / 2)
    grid = np.linspace(0, 1, points)
    acc = weak_acc + np.interp(grid, share, gained)
    return {
        "n": int(len(scores)),
        "weak_acc": weak_acc,
        "strong_acc": strong_acc,
        "oracle_acc": float(np.mean(weak | strong)),
        "apgr": apgr,
        "cpt50": cpt(share, pgr, 0.5),
        "cpt80": cpt(share, pgr, 0.8),
        "max_acc": float(weak_acc + gained.max()),
        "max_acc_share": float(share[int(np.argmax(gained))]),
        "curve": [
            {"strong_share": round(float(g), 4), "accuracy": round(float(a), 5),
             "random_accuracy": round(weak_acc + float(g) * gap, 5),
             "pgr": round(float((a - weak_acc) / gap), 5) if gap > 0 else None}
            for g, a in zip(grid, acc)
        ],
    }


def cpt(share: np.ndarray, pgr: np.ndarray, target: float) -> float | None:
    """Smallest share of strong calls at which the (piecewise-linear) PGR curve reaches target."""
    hit = np.flatnonzero(pgr >= target - 1e-12)
    if hit.size == 0:
        return None
    j = int(hit[0])
    if j == 0:
        return 0.0
    x0, x1, y0, y1 = share[j - 1], share[j], pgr[j - 1], pgr[j]
    return float(x0 + (target - y0) * (x1 - x0) / (y1 - y0)) if y1 != y0 else float(x1)


def auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """ROC AUC (Mann-Whitney, ties counted half) of scores for a binary label."""
    labels = np.asarray(labels, dtype=bool)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    s = np.asarray(scores)[order]
    ranks = np.empty(len(s))
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    for a, b in zip(starts, ends):
        ranks[a:b] = (a + b + 1) / 2.0  # average 1-based rank
    r = np.empty(len(s))
    r[order] = ranks
    return float((r[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# ------------------------------------------------------------------------------------------ CV


def subject_folds(subjects: np.ndarray, k: int = N_FOLDS, seed: int = SEED) -> dict[str, int]:
    """Each subject goes to exactly one fold; greedy by size so folds hold similar row counts."""
    names, counts = np.unique(subjects, return_counts=True)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(names))
    order = sorted(perm, key=lambda i: -counts[i])  # stable: ties keep the random order
    load = [0] * k
    fold: dict[str, int] = {}
    for i in order:
        f = min(range(k), key=lambda j: (load[j], j))
        fold[str(names[i])] = f
        load[f] += int(counts[i])
    return fold


def cross_validate(ds: Dataset, X: Matrix, label: str, k: int = N_FOLDS, seed: int = SEED,
                   verbose: bool = True, train_excluded: tuple[str, ...] = (),
                   **fit_kw) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Out-of-fold served scores (subjects held out); returns (scores, fold of each row, folds).

    Every row is scored by the model of the fold that holds its subject out; that model never saw
    the row's subject, nor any prompt text that also occurs in the held-out fold. Subjects in
    ``train_excluded`` are never trained on (but are scored).
    """
    folds = subject_folds(ds.subjects, k, seed)
    row_fold = np.array([folds[s] for s in ds.subjects])
    y = make_labels(ds, label)
    oof = np.full(len(ds), np.nan)
    norm = [p.strip() for p in ds.prompts]
    trainable = ~np.isin(ds.subjects, list(train_excluded))
    for f in range(k):
        test = row_fold == f
        test_prompts = {norm[i] for i in np.flatnonzero(test)}
        train = ~test & trainable & np.array([p not in test_prompts for p in norm])
        t0 = time.perf_counter()
        params = fit(X.take(train), y[train], **fit_kw)
        oof[test] = D.transform_scores(_sigmoid(params.logits(X.take(test))), TRANSFORM[label])
        if verbose:
            dropped = int((~test & trainable).sum() - train.sum())
            print(f"  [{label}] fold {f}: train {int(train.sum())} (dropped {dropped} shared prompts), "
                  f"test {int(test.sum())}, {time.perf_counter() - t0:.1f}s", flush=True)
    return oof, row_fold, folds


def evaluate(ds: Dataset, X: Matrix, labels: list[str], k: int, seed: int,
             train_excluded: tuple[str, ...] = (), **fit_kw) -> dict:
    results = {}
    target = ~ds.weak & ds.strong
    clean = ~np.isin(ds.subjects, list(train_excluded))
    for label in labels:
        oof, row_fold, folds = cross_validate(ds, X, label, k, seed, train_excluded=train_excluded, **fit_kw)
        pooled = routing_metrics(oof, ds.weak, ds.strong)
        without = routing_metrics(oof[clean], ds.weak[clean], ds.strong[clean]) if train_excluded else None
        per_fold = []
        for f in range(k):
            m = row_fold == f
            fm = routing_metrics(oof[m], ds.weak[m], ds.strong[m])
            per_fold.append({
                "fold": f, "subjects": sorted(s for s, j in folds.items() if j == f), "n": fm["n"],
                "weak_acc": round(fm["weak_acc"], 4), "strong_acc": round(fm["strong_acc"], 4),
                "apgr": round(fm["apgr"], 4),
                "auc_weak_wrong_strong_right": _r(auc(oof[m], target[m])),
            })
            if train_excluded and (m & ~clean).any():
                mc = m & clean
                per_fold[-1]["apgr_without_train_excluded_subjects"] = round(
                    routing_metrics(oof[mc], ds.weak[mc], ds.strong[mc])["apgr"], 4)
        fold_apgr = np.array([p["apgr"] for p in per_fold])
        results[label] = {
            "definition": LABELS[label],
            "score_meaning": SCORE_MEANING[label],
            "apgr": round(pooled["apgr"], 4),
            "cpt50": _r(pooled["cpt50"]),
            "cpt80": _r(pooled["cpt80"]),
            "auc_weak_wrong_strong_right": _r(auc(oof, target)),
            "auc_weak_wrong": _r(auc(oof, ~ds.weak)),
            "auc_own_label": _r(auc(oof, make_labels(ds, label) > 0.5)) if label != "strong_wins" else None,
            "max_acc": round(pooled["max_acc"], 4),
            "max_acc_share": round(pooled["max_acc_share"], 4),
            "weak_acc": round(pooled["weak_acc"], 4),
            "strong_acc": round(pooled["strong_acc"], 4),
            "oracle_acc": round(pooled["oracle_acc"], 4),
            "n": pooled["n"],
            "fold_apgr_mean": round(float(fold_apgr.mean()), 4),
            "fold_apgr_std": round(float(fold_apgr.std(ddof=1)), 4) if k > 1 else None,
            "fold_apgr_min": round(float(fold_apgr.min()), 4),
            "fold_apgr_max": round(float(fold_apgr.max()), 4),
            "curve": pooled["curve"],
            "folds": per_fold,
            "without_train_excluded_subjects": None if without is None else {
                "subjects_left_out": list(train_excluded), "n": without["n"],
                "weak_acc": round(without["weak_acc"], 4), "strong_acc": round(without["strong_acc"], 4),
                "apgr": round(without["apgr"], 4), "cpt50": _r(without["cpt50"]), "cpt80": _r(without["cpt80"]),
                "auc_weak_wrong_strong_right": _r(auc(oof[clean], target[clean])),
                "curve": without["curve"],
            },
        }
        print(f"[{label}] APGR {pooled['apgr']:.4f}  CPT50 {_fmt(pooled['cpt50'])}  "
              f"CPT80 {_fmt(pooled['cpt80'])}  AUC(wwsr) {results[label]['auc_weak_wrong_strong_right']}  "
              f"fold APGR {fold_apgr.mean():.3f} ± {fold_apgr.std(ddof=1) if k > 1 else 0.0:.3f} "
              f"[{fold_apgr.min():.3f}, {fold_apgr.max():.3f}]"
              + (f"; without {','.join(train_excluded)}: APGR {without['apgr']:.4f}" if without else ""), flush=True)
    return results


def choose_label(results: dict, tie: float = 0.01) -> str:
    """The label with the best held-out APGR on valid-label subjects; labels within ``tie`` of it
    count as tied (fold-to-fold spread is several times larger) and DEFAULT_LABEL, the issue's own
    definition of difficulty, wins a tie."""
    best = max(results, key=lambda k: _selection_apgr(results[k]))
    if DEFAULT_LABEL in results and _selection_apgr(results[DEFAULT_LABEL]) >= _selection_apgr(results[best]) - tie:
        return DEFAULT_LABEL
    return best


def _selection_apgr(result: dict) -> float:
    """The label is chosen by held-out APGR on the subjects with valid labels (the train-excluded
    subjects' broken labels would otherwise reward learning the breakage)."""
    clean = result.get("without_train_excluded_subjects")
    return clean["apgr"] if clean else result["apgr"]


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(float(x), nd)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def feature_config() -> dict:
    return {
        "feature_version": D.FEATURE_VERSION,
        "hash": "zlib.crc32 of words (unigrams), mixed crc32 pairs (bigrams), crc32 of symbol bytes",
        "hash_bits": D.HASH_BITS,
        "head_bytes": D.HEAD_BYTES,
        "tail_bytes": D.TAIL_BYTES,
        "dense_bin_edges": D.N_BIN_EDGES,
        "dense_names": list(D.DENSE_NAMES),
    }


# ------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"data directory (default {DEFAULT_DATA})")
    ap.add_argument("--evaluate", action="store_true", help="subject-grouped cross-validation; write --report")
    ap.add_argument("--benchmark", action="store_true", help="time DifficultyModel.score on every prompt (one core)")
    ap.add_argument("--report", type=Path, default=DEFAULT_REPORT, help="evaluation JSON (written by --evaluate, "
                    "read by training for the metadata)")
    ap.add_argument("--out", type=Path, default=D.DEFAULT_WEIGHTS, help="weights file to write when training")
    ap.add_argument("--label", choices=sorted(LABELS), default=None,
                    help=f"training target (default {DEFAULT_LABEL}, the label with the best held-out APGR)")
    ap.add_argument("--labels", default=",".join(LABELS), help="labels compared by --evaluate (comma-separated)")
    ap.add_argument("--train-exclude", default=",".join(TRAIN_EXCLUDED_SUBJECTS),
                    help="subjects never trained on, comma-separated (default: %(default)s, whose strong-model "
                         "labels are broken); '' to train on all")
    ap.add_argument("--folds", type=int, default=N_FOLDS)
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--l2", type=float, default=L2_HASHED, help="L2 on hashed weights")
    ap.add_argument("--l2-dense", type=float, default=L2_DENSE, help="L2 on standardised dense weights")
    ap.add_argument("--max-iter", type=int, default=MAX_ITER)
    args = ap.parse_args(argv)
    fit_kw = {"l2_hashed": args.l2, "l2_dense": args.l2_dense, "max_iter": args.max_iter}
    train_excluded = tuple(s.strip() for s in args.train_exclude.split(",") if s.strip())

    t0 = time.perf_counter()
    ds, stats = load_dataset(args.data)
    if args.benchmark:
        return benchmark(ds, args.out)
    X = featurize(ds.prompts)
    print(f"loaded {stats['rows_used']} rows ({stats['contaminated_excluded']} contaminated excluded) from "
          f"{stats['files']} files; features in {time.perf_counter() - t0:.1f}s", flush=True)

    if args.evaluate:
        labels = [s.strip() for s in args.labels.split(",") if s.strip()]
        unknown = set(train_excluded) - set(ds.subjects.tolist())
        if unknown:
            raise SystemExit(f"--train-exclude: no such subject(s): {sorted(unknown)}")
        results = evaluate(ds, X, labels, args.folds, args.seed, train_excluded=train_excluded, **fit_kw)
        best = choose_label(results)
        report = {
            "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["scripts/train_difficulty.py", *(argv if argv is not None else sys.argv[1:])]),
            "data": stats,
            "protocol": {
                "folds": args.folds, "seed": args.seed,
                "grouping": "subjects (every subject held out exactly once)",
                "contaminated": "excluded from training and evaluation",
                "shared_prompts": "prompts that also occur in the held-out fold are dropped from that fold's training rows",
                "train_excluded_subjects": list(train_excluded),
                "train_excluded_reason": "strong-model labels evidently broken (below chance); never trained on, "
                                         "but scored when held out and included in the headline metrics",
                "routing": "send to the strong model when score >= threshold; curve is exact over all thresholds "
                           "(linear between distinct scores = random tie-breaking)",
                "apgr": "area under PGR(share) on share in [0, 1], PGR = (acc - weak_acc) / (strong_acc - weak_acc); "
                        "random routing = 0.5",
                "cpt": "smallest share of strong calls with PGR >= 50% / 80%",
            },
            "model": {"l2_hashed": args.l2, "l2_dense": args.l2_dense, "max_iter": args.max_iter, **feature_config()},
            "best_label": best,
            "label_selection": "best APGR without the train-excluded subjects; within 0.01 of the best counts as a "
                               "tie, won by " + DEFAULT_LABEL + " (the issue's definition)",
            "labels": results,
        }
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        print(f"best label: {best}; report written to {args.report} ({time.perf_counter() - t0:.0f}s)")
        return 0

    report = None
    if args.report.exists():
        report = json.loads(args.report.read_text(encoding="utf-8"))
        if report.get("model", {}).get("feature_version") != D.FEATURE_VERSION:
            print(f"note: {args.report} was made with other features; its metrics are not embedded")
            report = None
    label = args.label or DEFAULT_LABEL
    if report and report.get("best_label") != label:
        print(f"note: {args.report} found {report.get('best_label')} routes best; training {label}")
    t1 = time.perf_counter()
    trainable = ~np.isin(ds.subjects, list(train_excluded))
    params = fit(X.take(trainable), make_labels(ds, label)[trainable], **fit_kw)
    train_s = time.perf_counter() - t1
    train_scores = D.transform_scores(_sigmoid(params.logits(X.take(trainable))), TRANSFORM[label])
    # In-sample score quantiles: to turn a wanted share of strong calls (on MMLU-like traffic) into a threshold.
    quantiles = {f"{q:.2f}": round(float(np.quantile(train_scores, q)), 5) for q in np.linspace(0, 1, 21)}
    held_out = None
    if report and label in report["labels"]:
        r = report["labels"][label]
        held_out = {k: r[k] for k in ("apgr", "cpt50", "cpt80", "auc_weak_wrong_strong_right", "fold_apgr_mean",
                                      "fold_apgr_std", "fold_apgr_min", "fold_apgr_max")}
        held_out.update(source=str(args.report.relative_to(REPO_ROOT)) if args.report.is_relative_to(REPO_ROOT)
                        else str(args.report), generated=report.get("generated"), folds=report["protocol"]["folds"])
        if r.get("without_train_excluded_subjects"):
            held_out["apgr_without_train_excluded_subjects"] = r["without_train_excluded_subjects"]["apgr"]
    meta = {
        "trained": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "data": {**stats, "rows_trained": int(trainable.sum()), "train_excluded_subjects": list(train_excluded),
                 "source": "lm-sys/RouteLLM MMLU responses (weak: Mixtral-8x7B-Instruct-v0.1, "
                                    "strong: gpt-4-1106-preview)"},
        "label": label,
        "label_definition": LABELS[label],
        "score_meaning": SCORE_MEANING[label],
        "score_transform": TRANSFORM[label],
        "score_quantiles_on_training_prompts": quantiles,
        "model": {"type": "logistic regression, L2, L-BFGS", "l2_hashed": args.l2, "l2_dense": args.l2_dense,
                  "max_iter": args.max_iter, "seed": args.seed},
        **feature_config(),
        "held_out": held_out,
        "train_seconds": round(train_s, 1),
    }
    save_weights(args.out, params, meta)
    size = args.out.stat().st_size
    print(f"trained on {int(trainable.sum())} rows with label {label} in {train_s:.1f}s "
          f"(total {time.perf_counter() - t0:.1f}s); wrote {args.out} ({size / 1e6:.2f} MB)")
    return 0


def benchmark(ds: Dataset, weights: Path, repeats: int = 2) -> int:
    """Per-call latency of DifficultyModel.score: the data's prompts plus a few very long ones."""
    t0 = time.perf_counter()
    model = D.DifficultyModel.load(weights)
    load_ms = (time.perf_counter() - t0) * 1e3
    long_prompts = [(ds.prompts[i % len(ds)] + " ") * reps for i, reps in enumerate((10, 30, 100) * 20)]
    groups = {"mmlu prompts": ds.prompts, "long prompts (2-200 KB)": long_prompts}
    clock = time.perf_counter_ns
    print(f"load {load_ms:.1f} ms; {repeats} passes, last reported")
    for name, prompts in groups.items():
        for _ in range(repeats):
            times = np.empty(len(prompts))
            for i, p in enumerate(prompts):
                t = clock()
                model.score(p)
                times[i] = clock() - t
        us = times / 1e3
        chars = np.array([len(p) for p in prompts])
        print(f"{name}: n={len(prompts)} chars p50 {np.median(chars):.0f} max {chars.max()}; score() us: "
              f"mean {us.mean():.1f} p50 {np.percentile(us, 50):.1f} p90 {np.percentile(us, 90):.1f} "
              f"p99 {np.percentile(us, 99):.1f} max {us.max():.1f}")
    return 0


def save_weights(path: Path, params: Params, meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        np.savez_compressed(
            fh,
            hashed_weights=params.hashed.astype(np.float32),
            dense_weights=params.dense.astype(np.float64),
            bin_edges=params.bin_edges.astype(np.float64),
            bin_weights=params.bin_weights.astype(np.float64),
            dense_fill=params.fill.astype(np.float64),
            dense_lo=params.lo.astype(np.float64),
            dense_hi=params.hi.astype(np.float64),
            intercept=np.float64(params.intercept),
            metadata=np.array(json.dumps(meta, sort_keys=True)),
        )


if __name__ == "__main__":
    raise SystemExit(main())
