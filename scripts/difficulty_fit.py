"""Fitting the difficulty estimate: logistic regression over difficulty_features, numpy only.

The regression has one weight per hash bucket, one per standardised dense feature and one per
(dense feature, quantile bin), plus an intercept; it is fitted by full-batch L-BFGS over index
arrays (np.bincount) rather than a sparse-matrix library, deterministically. Two things make it
learn what carries over to a source it has not seen:

* **sample weights**: each source weighs n_source ** -source_power in all (1: every source counts
  the same, 0: every row does), so MMLU's 14,000 rows do not drown chat or code;
* **one intercept per source while fitting** (``fixed_effects``): sources differ in how often the
  weak model fails (18% of MMLU, 40% of IFEval). With a shared intercept the weights would learn
  to recognise the source (its template words) and its base rate; with one per source they
  learn what makes a prompt harder than others *of its own kind*, which is what transfers. The
  intercepts are dropped after fitting: the served probability comes from a calibration fitted
  on held-out sources (calibration.py in this folder), not from any one source's rate.

A fixed **length prior** (``length_weight``) can be added to the logit: that weight times the
standardised log byte length. Prompt length is the one signal that predicts difficulty in nearly
every source; pinning part of it keeps the fit from trading it away for source-specific cues.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from switchboard.router import difficulty as D
from switchboard.router import difficulty_features as F

LENGTH_FEATURE = F.DENSE_NAMES.index("log_bytes")


@dataclass
class Matrix:
    """Rows of hashed features as index arrays (value 1/sqrt(k) per present bucket) + dense block."""

    rows: np.ndarray  # int64 (nnz,)
    cols: np.ndarray  # int64 (nnz,)
    vals: np.ndarray  # float64 (nnz,)
    dense: np.ndarray  # float64 (n, N_DENSE), NaN where a feature does not apply

    @property
    def n(self) -> int:
        return self.dense.shape[0]

    def take(self, mask: np.ndarray) -> Matrix:
        idx = np.flatnonzero(mask) if mask.dtype == bool else np.asarray(mask)
        remap = np.full(self.n, -1, dtype=np.int64)
        remap[idx] = np.arange(idx.size)
        keep = remap[self.rows] >= 0
        return Matrix(remap[self.rows[keep]], self.cols[keep], self.vals[keep], self.dense[idx])


def featurize(prompts: list[str]) -> Matrix:
    rows, cols, vals = [], [], []
    dense = np.zeros((len(prompts), F.N_DENSE))
    for i, p in enumerate(prompts):
        idx, d = F.features(p)
        dense[i] = d
        if idx.size:
            rows.append(np.full(idx.size, i, dtype=np.int64))
            cols.append(idx)
            vals.append(np.full(idx.size, 1.0 / np.sqrt(idx.size)))
    if rows:
        return Matrix(np.concatenate(rows), np.concatenate(cols), np.concatenate(vals), dense)
    empty = np.zeros(0, dtype=np.int64)
    return Matrix(empty, empty, np.zeros(0), dense)


@dataclass
class Params:
    """What the runtime's DifficultyModel serves (before calibration): see D.DifficultyModel."""

    hashed: np.ndarray  # (HASH_DIM,)
    dense: np.ndarray  # (N_DENSE,) on the raw (unstandardised) features, length prior included
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
        z += self.bin_weights[np.arange(F.N_DENSE)[None, :], bins].sum(axis=1)
        return z + dense @ self.dense + self.intercept


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def source_weights(sources: np.ndarray, power: float) -> np.ndarray:
    """Row weights with mean 1 such that each source weighs n_source ** (1 - power) in all."""
    names, inverse, counts = np.unique(sources, return_inverse=True, return_counts=True)
    w = counts[inverse].astype(np.float64) ** -power
    return w / w.mean()


def bin_edges(dense: np.ndarray, n_edges: int = D.N_BIN_EDGES) -> np.ndarray:
    """Quantile edges per dense feature (+inf padded); mostly-zero features get a zero/non-zero edge first."""
    out = np.full((dense.shape[1], n_edges), np.inf)
    q = np.linspace(0, 1, n_edges + 2)[1:-1]
    for j in range(dense.shape[1]):
        x = dense[:, j]
        if np.unique(x).size <= 2:
            continue  # binary (or constant): the linear weight already says everything
        nz = x[x != 0]
        e = np.unique(np.r_[nz.min(), np.quantile(nz, q[1:])]) if (x == 0).mean() > 0.3 else np.unique(np.quantile(x, q))
        out[j, : min(e.size, n_edges)] = e[:n_edges]
    return out


def _onehot_bins(dense: np.ndarray, edges: np.ndarray) -> np.ndarray:
    bins = D.dense_bins(dense, edges)
    k = edges.shape[1] + 1
    oh = np.zeros((dense.shape[0], dense.shape[1] * k))
    oh[np.arange(dense.shape[0])[:, None], np.arange(dense.shape[1])[None, :] * k + bins] = 1.0
    return oh


def _ranges(dense: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    present = ~np.isnan(dense)
    stats = []
    for j in range(dense.shape[1]):
        x = dense[present[:, j], j]
        stats.append((np.median(x), x.min(), x.max()) if x.size else (0.0, 0.0, 0.0))
    fill, lo, hi = (np.array(s) for s in zip(*stats))
    return fill, lo, hi


@dataclass(frozen=True)
class FitConfig:
    l2_hashed: float = 1e-4
    l2_dense: float = 1e-2
    source_power: float = 1.0
    fixed_effects: bool = True
    length_weight: float = 0.0  # fixed logit weight of the standardised log byte length
    bins: bool = True
    hashed: bool = True
    max_iter: int = 150


def fit(X: Matrix, y: np.ndarray, sources: np.ndarray, cfg: FitConfig = FitConfig()) -> Params:
    """L2-regularised logistic regression (targets in [0, 1]) by L-BFGS; deterministic."""
    n, dim = X.n, F.HASH_DIM
    fill, lo, hi = _ranges(X.dense)
    dense = D.prepare_dense(X.dense, fill, lo, hi)
    edges = bin_edges(dense) if cfg.bins else np.full((F.N_DENSE, D.N_BIN_EDGES), np.inf)
    A = np.hstack([dense, _onehot_bins(dense, edges)]) if cfg.bins else dense
    mu, sd = A.mean(axis=0), A.std(axis=0)
    sd[sd < 1e-9] = 1.0
    Z = (A - mu) / sd
    length = Z[:, LENGTH_FEATURE] * cfg.length_weight  # a fixed offset: not fitted
    names, src = np.unique(sources, return_inverse=True)
    n_fe = len(names) if cfg.fixed_effects else 1
    if not cfg.fixed_effects:
        src = np.zeros(n, dtype=np.int64)
    sw = source_weights(sources, cfg.source_power)
    y = np.asarray(y, dtype=np.float64)
    nd = Z.shape[1]
    hashed = cfg.hashed

    def loss_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, v, b = theta[:dim], theta[dim:dim + nd], theta[dim + nd:]
        z = Z @ v + b[src] + length
        if hashed:
            z += np.bincount(X.rows, weights=X.vals * w[X.cols], minlength=n)
        loss = float(np.mean(sw * (np.logaddexp(0.0, z) - y * z)))
        loss += 0.5 * cfg.l2_hashed * float(w @ w) + 0.5 * cfg.l2_dense * float(v @ v)
        r = sw * (sigmoid(z) - y) / n
        g = np.zeros_like(theta)
        if hashed:
            g[:dim] = np.bincount(X.cols, weights=X.vals * r[X.rows], minlength=dim) + cfg.l2_hashed * w
        g[dim:dim + nd] = Z.T @ r + cfg.l2_dense * v
        g[dim + nd:] = np.bincount(src, weights=r, minlength=n_fe)
        return loss, g

    theta = np.zeros(dim + nd + n_fe)
    for k in range(n_fe):
        p0 = float(np.clip(np.average(y[src == k], weights=sw[src == k]), 1e-4, 1 - 1e-4))
        theta[dim + nd + k] = np.log(p0 / (1 - p0))
    theta = lbfgs(loss_grad, theta, max_iter=cfg.max_iter, tol=1e-6)
    w, v = theta[:dim], theta[dim:dim + nd].copy()
    v[LENGTH_FEATURE] += cfg.length_weight
    # The served intercept is the sources' weighted mean; calibration moves it anyway.
    b = float(np.average(theta[dim + nd:][src], weights=sw))
    v_raw = v / sd
    nf = F.N_DENSE
    bins_w = v_raw[nf:].reshape(nf, D.N_BIN_EDGES + 1) if cfg.bins else np.zeros((nf, D.N_BIN_EDGES + 1))
    return Params(w.copy(), v_raw[:nf], edges, bins_w, fill, lo, hi, b - float(v_raw @ mu))


def lbfgs(fun, x: np.ndarray, max_iter: int, tol: float, m: int = 10) -> np.ndarray:
    """Minimise ``fun`` (returning value and gradient) by L-BFGS with Armijo backtracking."""
    f, g = fun(x)
    s_hist: list[np.ndarray] = []
    y_hist: list[np.ndarray] = []
    for _ in range(max_iter):
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
            q += (a - rho * float(yv @ q)) * s
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
        if converged or float(np.abs(g).max()) < 1e-7:
            break
    return x
