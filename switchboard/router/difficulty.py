"""Difficulty estimate: how likely a cheap model fails a prompt that a strong one gets right.

``DifficultyModel.score(prompt)`` returns a number in [0, 1]: the estimated probability that the
cheap model fails the prompt and a strong model succeeds, calibrated on sources the model had not
seen (docs/routing.md, "Difficulty estimate"). The router raises the tier a prompt needs when the
score reaches its thresholds.

The served logit has two parts, built by scripts/train_difficulty.py from router-mix and
routellm-mmlu: prompt length, plus either

* for maths and word problems (``difficulty_features.quantity`` applies), a weight times how
  many quantities they hold (log count less a centre, over a spread: ``quantity``), or
* for every other prompt, ``metadata["blend"]`` times a content regression: logistic regression
  over ``difficulty_features.features`` (the shipped weights use its structure features only) that says which kinds of work separate the cheap model from the strong one
  (reasoning and code rather than knowledge and small talk),

then a Platt calibration (``slope``, ``offset``). Length and the content regression are folded
into one set of weights; ``length_weight`` is length's part alone, for quantitative prompts.
Runtime needs only numpy and the standard library; the weights load once per process
(difficulty_loader.py).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from switchboard.router.difficulty_features import (DENSE_NAMES, FEATURE_VERSION, HASH_DIM, HEAD_BYTES, N_DENSE,
                                                      TAIL_BYTES, features, quantity)

__all__ = ["DEFAULT_WEIGHTS", "DENSE_NAMES", "FEATURE_VERSION", "HASH_DIM", "N_DENSE", "DifficultyModel",
           "dense_bins", "features", "prepare_dense"]

DEFAULT_WEIGHTS = Path(__file__).with_name("difficulty_weights.npz")

N_BIN_EDGES = 7  # each dense feature is also one-hot binned into up to N_BIN_EDGES + 1 bins

_FEATURE_ROWS = np.arange(N_DENSE)
_LENGTH = DENSE_NAMES.index("log_bytes")  # log1p of the prompt's UTF-8 byte length


def prepare_dense(dense: np.ndarray, fill: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Missing (NaN) features -> their training median, then each feature clipped to its training range.

    Keeps the linear part from extrapolating on prompts unlike the training data.
    Works on one vector (N_DENSE,) or a matrix (n, N_DENSE).
    """
    return np.clip(np.where(np.isnan(dense), fill, dense), lo, hi)


def dense_bins(dense: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each dense feature: how many of its (ascending, +inf padded) edges it reaches.

    ``dense`` is (N_DENSE,) or (n, N_DENSE); ``edges`` is (N_DENSE, N_BIN_EDGES). The model adds
    one weight per (feature, bin), so each dense feature also gets a learnt piecewise-constant shape.
    """
    return (dense[..., None] >= edges).sum(axis=-1)


def calibrate(logit: float | np.ndarray, slope: float, offset: float) -> float | np.ndarray:
    """The served difficulty from the regression's logit: sigmoid(slope * logit + offset), the
    calibration fitted on sources the regression had not seen (see ``DifficultyModel``)."""
    z = slope * np.asarray(logit, dtype=np.float64) + offset
    p = 0.5 * (1.0 + np.tanh(0.5 * z))
    return float(p) if np.ndim(p) == 0 else p


@dataclass
class DifficultyModel:
    """Logistic regression over ``features()`` plus a calibration; ``score()`` is in [0, 1].

    The regression's logit ranks prompts; ``score`` maps it through sigmoid(slope * logit +
    offset), with slope and offset fitted (Platt scaling) on leave-one-source-out predictions, so
    that the number means what it says on kinds of prompts the regression never saw: the
    probability that the cheap model fails and the strong one succeeds
    (``metadata["score_meaning"]``; the calibration measured per source is in
    ``metadata["held_out"]``).
    """

    hashed_weights: np.ndarray  # (HASH_DIM,) float32
    dense_weights: np.ndarray  # (N_DENSE,) float64, on the raw features
    bin_edges: np.ndarray  # (N_DENSE, N_BIN_EDGES) float64, ascending, +inf padded
    bin_weights: np.ndarray  # (N_DENSE, N_BIN_EDGES + 1) float64
    dense_fill: np.ndarray  # (N_DENSE,) training medians, for missing (NaN) features
    dense_lo: np.ndarray  # (N_DENSE,) training minimum
    dense_hi: np.ndarray  # (N_DENSE,) training maximum
    intercept: float
    slope: float = 1.0  # calibration: score = sigmoid(slope * logit + offset)
    offset: float = 0.0
    metadata: dict[str, Any] = field(default_factory=dict)
    # (weight, centre, spread): where quantity() applies (maths and word problems) the logit is
    # length_weight * log bytes + weight * (quantity(prompt) - centre) / spread instead of the
    # regression; weight 0 turns it off.
    quantity: tuple[float, float, float] = (0.0, 0.0, 1.0)
    length_weight: float = 0.0

    @classmethod
    def load(cls, path: Path = DEFAULT_WEIGHTS) -> DifficultyModel:
        with np.load(Path(path), allow_pickle=False) as data:
            meta = json.loads(str(data["metadata"]))
            hashed = np.asarray(data["hashed_weights"], dtype=np.float32)
            dense = np.asarray(data["dense_weights"], dtype=np.float64)
            edges = np.asarray(data["bin_edges"], dtype=np.float64)
            bins = np.asarray(data["bin_weights"], dtype=np.float64)
            fill, lo, hi = (np.asarray(data[k], dtype=np.float64) for k in ("dense_fill", "dense_lo", "dense_hi"))
            intercept = float(data["intercept"])
            slope, offset = (float(data[k]) for k in ("calibration_slope", "calibration_offset"))
            q = tuple(float(x) for x in data["quantity"]) if "quantity" in data.files else (0.0, 0.0, 1.0)
            length_weight = float(data["length_weight"]) if "length_weight" in data.files else 0.0
        if (meta.get("feature_version") != FEATURE_VERSION or hashed.shape != (HASH_DIM,)
                or (meta.get("head_bytes"), meta.get("tail_bytes")) != (HEAD_BYTES, TAIL_BYTES)):
            raise ValueError(
                f"{path}: weights are for feature version {meta.get('feature_version')} with "
                f"{hashed.shape[0]} buckets and a {meta.get('head_bytes')} + {meta.get('tail_bytes')}-byte window; "
                f"this code computes version {FEATURE_VERSION} with {HASH_DIM} and {HEAD_BYTES} + {TAIL_BYTES}: "
                f"retrain with scripts/train_difficulty.py"
            )
        if (tuple(meta.get("dense_names", ())) != DENSE_NAMES or dense.shape != (N_DENSE,)
                or edges.shape != (N_DENSE, N_BIN_EDGES) or bins.shape != (N_DENSE, N_BIN_EDGES + 1)
                or not fill.shape == lo.shape == hi.shape == (N_DENSE,)):
            raise ValueError(f"{path}: dense features differ from this code's; retrain")
        numbers = (slope, offset, length_weight, *q)
        if not all(map(math.isfinite, numbers)) or len(q) != 3 or not q[2] > 0 or (q[0] and not length_weight > 0):
            raise ValueError(f"{path}: a non-finite number, or a quantity term that is not (weight, centre, "
                             f"spread > 0) with a length weight; retrain")
        return cls(hashed, dense, edges, bins, fill, lo, hi, intercept, slope, offset, meta, (q[0], q[1], q[2]),
                   length_weight)

    def __post_init__(self) -> None:
        # Compute only what the weights use: with every weight but prompt length's at zero (the
        # blend the held-out sources chose may be 0), the logit needs the prompt's length alone.
        rest = np.ones(N_DENSE, dtype=bool)
        rest[_LENGTH] = False
        self._hashed = bool(self.hashed_weights.any())  # else the prompt need not be hashed
        self._length_only = not (self._hashed or self.dense_weights[rest].any() or self.bin_weights[rest].any())

    def logit(self, prompt: str) -> float:
        """The served logit (uncalibrated): higher = harder."""
        weight, centre, spread = self.quantity
        if weight:
            q = quantity(prompt)
            if q is not None:
                return self.length_weight * self._log_bytes(prompt) + weight * (q - centre) / spread
        return self._regression(prompt)

    def _log_bytes(self, prompt: str) -> float:
        """log1p of the prompt's UTF-8 length, clipped to the training range."""
        x = math.log1p(len(prompt.encode("utf-8", "replace")))
        return min(max(x, self.dense_lo[_LENGTH]), self.dense_hi[_LENGTH])

    def _regression(self, prompt: str) -> float:
        if self._length_only:
            x = self._log_bytes(prompt)
            bin_ = int((x >= self.bin_edges[_LENGTH]).sum())
            return self.intercept + x * float(self.dense_weights[_LENGTH]) + float(self.bin_weights[_LENGTH, bin_])
        idx, dense = features(prompt, hashed=self._hashed)
        dense = prepare_dense(dense, self.dense_fill, self.dense_lo, self.dense_hi)
        z = self.intercept + float(dense @ self.dense_weights)
        z += float(self.bin_weights[_FEATURE_ROWS, dense_bins(dense, self.bin_edges)].sum())
        if idx.size:
            z += float(self.hashed_weights[idx].sum(dtype=np.float64)) / math.sqrt(idx.size)
        return z

    def score(self, prompt: str) -> float:
        """Difficulty in [0, 1]: the estimated probability that the cheap model fails this prompt
        where a strong one succeeds."""
        z = self.slope * self.logit(prompt) + self.offset
        if z >= 0:
            return 1.0 / (1.0 + math.exp(-z))
        e = math.exp(z)
        return e / (1.0 + e)
