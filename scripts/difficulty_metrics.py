"""How well a difficulty score routes and how well it is calibrated (numpy only).

Routing (RouteLLM's measures): send a prompt to the strong model when its score is at or above a
threshold, for every threshold. Outcomes may be graded (a score in [0, 1]): accuracy is then the
mean outcome. The curve is exact over all thresholds and linear between distinct scores, which is
random tie-breaking in expectation; random routing is the straight line.

* **PGR(share)** = (accuracy - weak accuracy) / (strong accuracy - weak accuracy);
* **APGR**: the area under PGR over share in [0, 1] (random routing 0.5);
* **CPT(x%)**: the smallest share of strong-model calls with PGR >= x% (random routing x%).

Calibration: Platt scaling (sigmoid(a * logit + b), weighted, by Newton's method) and its report,
a reliability table (mean predicted probability beside the observed rate, by bins of the
prediction), the expected calibration error and the Brier score.
"""

from __future__ import annotations

import numpy as np


def routing_curve(scores: np.ndarray, weak: np.ndarray, strong: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact (share of strong calls, cumulative accuracy gain) vertices of threshold routing."""
    n = len(scores)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="stable")
    s = s[order]
    gain = np.asarray(strong, dtype=np.float64)[order] - np.asarray(weak, dtype=np.float64)[order]
    cum = np.cumsum(gain)
    ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # last index of each tie group
    return np.r_[0.0, (ends + 1) / n], np.r_[0.0, cum[ends] / n]


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


def apgr(scores: np.ndarray, weak: np.ndarray, strong: np.ndarray) -> float:
    share, gained = routing_curve(scores, weak, strong)
    gap = float(np.mean(strong) - np.mean(weak))
    if gap <= 0:
        return float("nan")
    pgr = gained / gap
    return float(np.sum((pgr[1:] + pgr[:-1]) * np.diff(share)) / 2)


def routing_metrics(scores: np.ndarray, weak: np.ndarray, strong: np.ndarray, points: int = 11) -> dict:
    weak_acc, strong_acc = float(np.mean(weak)), float(np.mean(strong))
    gap = strong_acc - weak_acc
    share, gained = routing_curve(scores, weak, strong)
    pgr = gained / gap if gap > 0 else np.zeros_like(gained)
    grid = np.linspace(0, 1, points)
    acc = weak_acc + np.interp(grid, share, gained)
    return {
        "n": int(len(scores)),
        "weak_acc": round(weak_acc, 4),
        "strong_acc": round(strong_acc, 4),
        "apgr": round(float(np.sum((pgr[1:] + pgr[:-1]) * np.diff(share)) / 2), 4),
        "cpt50": _r(cpt(share, pgr, 0.5)),
        "cpt80": _r(cpt(share, pgr, 0.8)),
        "curve": [{"strong_share": round(float(g), 3), "accuracy": round(float(a), 4),
                   "pgr": round(float((a - weak_acc) / gap), 4) if gap > 0 else None} for g, a in zip(grid, acc)],
    }


def apgr_interval(scores: np.ndarray, baseline: np.ndarray, weak: np.ndarray, strong: np.ndarray,
                  rounds: int = 200, seed: int = 0) -> tuple[float, float]:
    """90% bootstrap interval (rows resampled) of APGR(scores) - APGR(baseline) on the same rows:
    how much of a difference between two routers on one source is noise."""
    rng = np.random.default_rng(seed)
    n = len(scores)
    diffs = []
    for _ in range(rounds):
        i = rng.integers(0, n, n)
        a, b = apgr(scores[i], weak[i], strong[i]), apgr(baseline[i], weak[i], strong[i])
        if np.isfinite(a) and np.isfinite(b):
            diffs.append(a - b)
    lo, hi = np.quantile(diffs, [0.05, 0.95]) if diffs else (float("nan"), float("nan"))
    return round(float(lo), 4), round(float(hi), 4)


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


# ---------------------------------------------------------------------------------- calibration


def platt(logits: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None, l2: float = 1e-6) -> tuple[float, float]:
    """(slope, offset) minimising the weighted cross-entropy of sigmoid(slope * logit + offset)
    against targets in [0, 1]: damped Newton's method on the standardised logit."""
    x = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    mu, sd = float(np.average(x, weights=w)), float(np.sqrt(np.average((x - np.average(x, weights=w)) ** 2, weights=w)))
    sd = sd if sd > 1e-12 else 1.0
    A = np.stack([(x - mu) / sd, np.ones_like(x)], axis=1)

    def loss(t: np.ndarray) -> float:
        z = A @ t
        return float(w @ (np.logaddexp(0.0, z) - y * z)) + 0.5 * l2 * float(t @ t)

    theta = np.zeros(2)
    f = loss(theta)
    for _ in range(100):
        p = 0.5 * (1.0 + np.tanh(0.5 * (A @ theta)))
        g = A.T @ (w * (p - y)) + l2 * theta
        H = (A * (w * p * (1 - p))[:, None]).T @ A + (l2 + 1e-12) * np.eye(2)
        step = np.linalg.solve(H, g)
        t = 1.0
        while loss(theta - t * step) > f and t > 1e-6:
            t *= 0.5
        theta = theta - t * step
        f_new = loss(theta)
        if abs(f - f_new) < 1e-12:
            break
        f = f_new
    slope = float(theta[0] / sd)
    return slope, float(theta[1] - slope * mu)


def calibration_report(prob: np.ndarray, y: np.ndarray, bins: int = 10) -> dict:
    """Reliability of predicted probabilities against (possibly graded) targets: equal-count bins
    of the prediction, each with its mean prediction and observed mean target; ECE (the
    count-weighted mean gap), Brier score, and the means over all rows."""
    prob, y = np.asarray(prob, dtype=np.float64), np.asarray(y, dtype=np.float64)
    order = np.argsort(prob, kind="stable")
    table, ece = [], 0.0
    for part in np.array_split(order, min(bins, len(order))):
        if part.size == 0:
            continue
        pred, seen = float(prob[part].mean()), float(y[part].mean())
        ece += part.size * abs(pred - seen)
        table.append({"n": int(part.size), "predicted": round(pred, 4), "observed": round(seen, 4)})
    return {
        "n": int(len(prob)),
        "mean_predicted": round(float(prob.mean()), 4),
        "mean_observed": round(float(y.mean()), 4),
        "ece": round(ece / max(len(prob), 1), 4),
        "brier": round(float(np.mean((prob - y) ** 2)), 4),
        "bins": table,
    }


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(float(x), nd)
