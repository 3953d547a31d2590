"""Difficulty estimate: how likely a small, cheap model fails a prompt that a stronger one gets right.

``DifficultyModel.score(prompt)`` returns a number in [0, 1]: with the shipped weights, the
estimated probability that the weak model answers the prompt wrongly and the strong model answers
it correctly, i.e. that the stronger model is needed (label ``weak_wrong_strong_right``; the
weights record their label, its meaning and the held-out metrics in ``metadata``; see
docs/routing.md, "Difficulty estimate"). The router sends a prompt to the stronger model when the
score is at or above its threshold. (Weights trained with ``--label strong_wins`` instead serve
max(0, 2p - 1), the expected gain in the chance of a right answer from escalating.)

The model is a logistic regression over

* hashed unigrams and bigrams of the prompt's lower-cased words (digits folded to ``0``, so a
  number keeps only its length) plus the set of punctuation/symbol characters it uses, hashed with
  zlib.crc32 (stable across processes, unlike Python's salted ``hash()``) into ``HASH_DIM``
  buckets; each bucket counts once and the bag is scaled by 1/sqrt(size). Only the first
  ``HEAD_BYTES`` and last ``TAIL_BYTES`` of the UTF-8 prompt are tokenised (long prompts put the
  question and the options at the end), which bounds the cost of a call;
* a few dozen dense, hand-crafted features (length, digits, maths/LaTeX/code markers,
  answer-option structure, negation and calculation cues, long-passage cues).

Runtime needs only numpy and the standard library. ``features()`` is the one feature function:
the trainer (scripts/train_difficulty.py) uses it too.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_WEIGHTS = Path(__file__).with_name("difficulty_weights.npz")

FEATURE_VERSION = 5
N_BIN_EDGES = 7  # each dense feature is also one-hot binned into up to N_BIN_EDGES + 1 bins
HASH_BITS = 18
HASH_DIM = 1 << HASH_BITS
HEAD_BYTES = 256
TAIL_BYTES = 768

_ASCII_PUNCT = bytes(c for c in range(33, 127) if not chr(c).isalnum())
# Words: ASCII upper -> lower, digits -> "0", ASCII punctuation -> space (then bytes.split()).
_WORD_TABLE = bytes.maketrans(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZ123456789" + _ASCII_PUNCT,
    b"abcdefghijklmnopqrstuvwxyz000000000" + b" " * len(_ASCII_PUNCT),
)
_NOT_PUNCT = bytes(c for c in range(256) if c not in _ASCII_PUNCT)
_UPPER = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_DIGITS = b"0123456789"
_MATH = b"=+*/^<>%|~"
_NON_ASCII = bytes(range(128, 256))

_M1 = np.uint64(0x9E3779B1)
_M2 = np.uint64(0x85EBCA6B)
_SHIFT = np.uint64(13)
_MASK = np.uint64(HASH_DIM - 1)
# Bucket of each punctuation byte's "symbol present" feature (crc32 of "\x01" + the byte).
_PUNCT_BUCKET = np.array([zlib.crc32(b"\x01" + bytes((c,))) & (HASH_DIM - 1) for c in range(256)],
                         dtype=np.int64)

_OPTION_HEADS = frozenset(bytes((c, p)) for c in b"ABCDEFGHIJ" for p in b".):")
_PAIR_OPTION = re.compile(rb"^[A-Za-z ]{1,20}, [A-Za-z ]{1,20}\.?$")
_NUMERIC_OPTION = re.compile(rb"^[-+$(]?\s*[\d.,/ ]*\d[\d.,/ ]*\s*[%a-zA-Z]{0,6}\)?\.?$")
_ROMAN_OPTION = re.compile(rb"^(?:I{1,3}|IV|V)(?:(?:,|,? and)\s*(?:I{1,3}|IV|V))*(?: only)?\.?$")

_CALC_WORDS = frozenset(b"calculate compute computed solve evaluate probability estimate determine "
                        b"approximately value total find expected ratio rate sum product".split())
_CODE_WORDS = frozenset(b"def return print include int void elif lambda var const function println "
                        b"printf null bool boolean str class import else while integer array".split())
_NEGATION_WORDS = frozenset(b"not except never least cannot false incorrect neither nor "
                            b"unlikely impossible".split())
_PASSAGE_WORDS = frozenset(b"passage excerpt following quotation author".split())
_SCENARIO_WORDS = frozenset(b"scenario situation suppose hypothetical".split())
_UNIT_WORDS = frozenset(b"kg g mg m cm mm km s ms n j kj w kw v mv ohm ohms hz mol k pa atm ev "
                        b"mph percent units meters seconds joules watts volts newtons liters".split())
_QUESTION_WORDS = frozenset(b"why how explain best most primarily likely".split())
_NEGATION_CAPS = (b"NOT", b"EXCEPT", b"LEAST")
_MATH_BLOCKS = (b"\xe2\x88", b"\xe2\x89", b"\xe2\x8a", b"\xe2\x8b", b"\xe2\x86")  # U+2190.., U+2200..

# Names of the dense features, in order (stored with the weights and checked at load time).
DENSE_NAMES: tuple[str, ...] = (
    "log_bytes",
    "log_tokens",
    "log_lines",
    "digit_ratio",
    "upper_ratio",
    "math_symbol_ratio",
    "non_ascii_ratio",
    "math_unicode",
    "latex_or_dollar",
    "code_cues",
    "n_options",
    "log_stem_bytes",
    "log_stem_digits",
    "log_stem_sentences",
    "log_option_bytes_mean",
    "option_bytes_cv",
    "option_longest_share",
    "numeric_options_share",
    "pair_options_share",
    "roman_options_share",
    "option_word_overlap",
    "all_none_of_above",
    "statement_pair",
    "negation_caps",
    "negation_words",
    "calc_words",
    "which_of_following",
    "passage_cues",
    "quote_marks",
    "scenario_words",
    "question_marks",
    "question_words",
    "mean_token_bytes",
    "unit_words",
    "truncated",
)
N_DENSE = len(DENSE_NAMES)
_MISSING = float("nan")  # a feature that does not apply (e.g. option features without options)


def _window(raw: bytes) -> tuple[bytes, bool]:
    if len(raw) <= HEAD_BYTES + TAIL_BYTES:
        return raw, False
    return raw[:HEAD_BYTES] + b"\n" + raw[-TAIL_BYTES:], True


def _hash_tokens(words: list[bytes], window: bytes) -> np.ndarray:
    punct = np.frombuffer(window.translate(None, _NOT_PUNCT), dtype=np.uint8)
    parts = [_PUNCT_BUCKET[punct]]
    if words:
        h = np.array(list(map(zlib.crc32, words)), dtype=np.uint64)
        parts.append((h & _MASK).astype(np.int64))
        if len(words) > 1:
            parts.append(((((h[:-1] * _M1 + h[1:]) * _M2) >> _SHIFT) & _MASK).astype(np.int64))
    idx = np.sort(np.concatenate(parts))
    if idx.size > 1:
        keep = np.empty(idx.size, dtype=bool)
        keep[0] = True
        np.not_equal(idx[1:], idx[:-1], out=keep[1:])
        idx = idx[keep]
    return idx


def _options(tail: bytes) -> tuple[int, list[bytes]]:
    """(offset in tail of the first option line, option texts) of the last "A. ..." option block."""
    opts: list[bytes] = []
    first = -1
    pos = 0
    for line in tail.split(b"\n"):
        head = line[:2]
        if head in _OPTION_HEADS:
            if head[0] == 65 or first < 0:  # "A": a new block starts (only the last one counts)
                first = pos
                opts = []
            opts.append(line[2:].strip())
        pos += len(line) + 1
    return first, opts[:10]


def _option_overlap(opts: list[bytes]) -> float:
    """Share of the options' words that other options repeat (near-identical options are hard):
    1 - |union of the options' word sets| / sum of their sizes, scaled so that identical options give 1."""
    sets = [set(o.split()) for o in opts]
    total = sum(map(len, sets))
    if not total:
        return 1.0
    union = len(set().union(*sets))
    return (total - union) / (total - total / len(sets)) if len(sets) > 1 else 0.0


def _dense(raw: bytes, window: bytes, text: bytes, words: list[bytes], truncated: bool) -> np.ndarray:
    n = len(raw)
    nw = len(window)
    nwf = float(max(nw, 1))
    ntok = len(words)
    vocab = set(words)

    tail = raw[-TAIL_BYTES:] if truncated else raw
    first, opts = _options(tail)
    n_opt = len(opts)
    if n_opt >= 2:
        stem = n - len(tail) + first
        stem_tail = tail[:first]
        stem_digits = len(stem_tail) - len(stem_tail.translate(None, _DIGITS))
        stem_sentences = stem_tail.count(b". ") + stem_tail.count(b"? ") + stem_tail.count(b".\n")
        lens = [len(o) for o in opts]
        total = float(sum(lens))
        mean_len = total / n_opt
        var = sum((x - mean_len) ** 2 for x in lens) / n_opt
        cv = min(math.sqrt(var) / mean_len, 3.0) if mean_len > 0 else 0.0
        longest = max(lens) / max(total, 1.0)
        numeric = sum(1 for o in opts if _NUMERIC_OPTION.match(o)) / n_opt
        pair = sum(1 for o in opts if _PAIR_OPTION.match(o)) / n_opt
        roman = sum(1 for o in opts if _ROMAN_OPTION.match(o)) / n_opt
        opt_text = b"\n".join(opts).translate(_WORD_TABLE)
        allnone = float(b"of the above" in opt_text or b"none of these" in opt_text)
        overlap = _option_overlap(opt_text.split(b"\n"))
        n_options = min(n_opt, 10) / 4.0
    else:  # not multiple choice: option features are missing (the model fills in its training median)
        stem = n
        stem_digits = nw - len(window.translate(None, _DIGITS))
        stem_sentences = window.count(b". ") + window.count(b"? ") + window.count(b".\n")
        n_options = mean_len = cv = longest = numeric = pair = roman = allnone = overlap = _MISSING

    log1p = math.log1p
    return np.array(
        (
            log1p(n),
            log1p(ntok),
            log1p(raw.count(b"\n")),
            (nw - len(window.translate(None, _DIGITS))) / nwf,
            (nw - len(window.translate(None, _UPPER))) / nwf,
            (nw - len(window.translate(None, _MATH))) / nwf,
            (nw - len(window.translate(None, _NON_ASCII))) / nwf,
            log1p(sum(map(window.count, _MATH_BLOCKS))) if b"\xe2" in window else 0.0,
            log1p(window.count(b"\\") + window.count(b"$")),
            log1p(len(vocab & _CODE_WORDS) + window.count(b"{") + window.count(b"==")),
            n_options,
            log1p(max(stem, 0)),
            log1p(stem_digits),
            log1p(stem_sentences),
            log1p(mean_len) if n_opt >= 2 else _MISSING,
            cv,
            longest,
            numeric,
            pair,
            roman,
            overlap,
            allnone,
            float(b"statement 0 " in text or b"statement i " in text),
            log1p(sum(map(window.count, _NEGATION_CAPS))),
            log1p(len(vocab & _NEGATION_WORDS)),
            log1p(len(vocab & _CALC_WORDS) + text.count(b"how many")),
            float(b"which of the following" in text),
            log1p(len(vocab & _PASSAGE_WORDS) + text.count(b"refers to the following")),
            log1p(window.count(b'"') + window.count(b"\xe2\x80\x9c")),
            log1p(len(vocab & _SCENARIO_WORDS)),
            log1p(window.count(b"?")),
            log1p(len(vocab & _QUESTION_WORDS)),
            len(text.translate(None, b" \t\n\r\x0b\x0c")) / ntok if ntok else _MISSING,
            log1p(len(vocab & _UNIT_WORDS)),
            float(truncated),
        ),
        dtype=np.float64,
    )


def features(prompt: str) -> tuple[np.ndarray, np.ndarray]:
    """(hashed bucket indices, dense feature vector) of a prompt: the one feature function.

    Indices are sorted, unique int64 in [0, HASH_DIM); each present bucket has the value
    1/sqrt(len(indices)). The dense vector holds N_DENSE unscaled float64 values, NaN where a
    feature does not apply (option features of a prompt without options); the model fills those
    in (training median) and clips to its training range (``prepare_dense``).
    """
    raw = prompt.encode("utf-8", "replace")
    window, truncated = _window(raw)
    text = window.translate(_WORD_TABLE)
    words = text.split()
    return _hash_tokens(words, window), _dense(raw, window, text, words, truncated)


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


SCORE_TRANSFORMS = ("probability", "net_gain")


def transform_scores(p: np.ndarray, transform: str) -> np.ndarray:
    """Vectorised ``DifficultyModel.score`` from regression probabilities (for the trainer)."""
    if transform == "net_gain":
        return np.maximum(0.0, 2.0 * np.asarray(p) - 1.0)
    if transform == "probability":
        return np.asarray(p)
    raise ValueError(f"unknown score transform {transform!r}")


def prepare_dense(dense: np.ndarray, fill: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Missing (NaN) features -> their training median, then each feature clipped to its training range.

    Keeps the linear part from extrapolating on prompts unlike the training data (chat, no options).
    Works on one vector (N_DENSE,) or a matrix (n, N_DENSE).
    """
    return np.clip(np.where(np.isnan(dense), fill, dense), lo, hi)


def dense_bins(dense: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each dense feature: how many of its (ascending, +inf padded) edges it reaches.

    ``dense`` is (N_DENSE,) or (n, N_DENSE); ``edges`` is (N_DENSE, N_BIN_EDGES). The model adds
    one weight per (feature, bin), so each dense feature also gets a learnt piecewise-constant shape.
    """
    return (dense[..., None] >= edges).sum(axis=-1)


_FEATURE_ROWS = np.arange(N_DENSE)


@dataclass
class DifficultyModel:
    """Logistic regression over ``features()``; ``score()`` is in [0, 1], higher = more in need of
    the stronger model.

    The regression gives p = sigmoid(logit). With ``score_transform == "net_gain"`` (weights
    trained on the "strong model wins, ties half" target, where p = 0.5 + 0.5 * (P(strong only
    right) - P(weak only right))) the score is max(0, 2p - 1); with ``"probability"`` it is p.
    ``metadata["label"]`` and ``metadata["score_meaning"]`` say which.
    """

    hashed_weights: np.ndarray  # (HASH_DIM,) float32
    dense_weights: np.ndarray  # (N_DENSE,) float64, already divided by each feature's std
    bin_edges: np.ndarray  # (N_DENSE, N_BIN_EDGES) float64, ascending, +inf padded
    bin_weights: np.ndarray  # (N_DENSE, N_BIN_EDGES + 1) float64
    dense_fill: np.ndarray  # (N_DENSE,) training medians, for missing (NaN) features
    dense_lo: np.ndarray  # (N_DENSE,) training minimum
    dense_hi: np.ndarray  # (N_DENSE,) training maximum
    intercept: float  # includes -sum(w * mean / std) of the standardisation
    metadata: dict[str, Any] = field(default_factory=dict)
    score_transform: str = "probability"  # or "net_gain"

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
        if meta.get("feature_version") != FEATURE_VERSION or hashed.shape != (HASH_DIM,):
            raise ValueError(
                f"{path}: weights are for feature version {meta.get('feature_version')} with "
                f"{hashed.shape[0]} buckets; this code computes version {FEATURE_VERSION} with "
                f"{HASH_DIM}: retrain with scripts/train_difficulty.py"
            )
        if (tuple(meta.get("dense_names", ())) != DENSE_NAMES or dense.shape != (N_DENSE,)
                or edges.shape != (N_DENSE, N_BIN_EDGES) or bins.shape != (N_DENSE, N_BIN_EDGES + 1)
                or not fill.shape == lo.shape == hi.shape == (N_DENSE,)):
            raise ValueError(f"{path}: dense features differ from this code's; retrain")
        transform = meta.get("score_transform", "probability")
        if transform not in SCORE_TRANSFORMS:
            raise ValueError(f"{path}: unknown score_transform {transform!r}")
        return cls(hashed, dense, edges, bins, fill, lo, hi, intercept, meta, transform)

    def logit(self, prompt: str) -> float:
        idx, dense = features(prompt)
        dense = prepare_dense(dense, self.dense_fill, self.dense_lo, self.dense_hi)
        z = self.intercept + float(dense @ self.dense_weights)
        z += float(self.bin_weights[_FEATURE_ROWS, dense_bins(dense, self.bin_edges)].sum())
        if idx.size:
            z += float(self.hashed_weights[idx].sum(dtype=np.float64)) / math.sqrt(idx.size)
        return z

    def score(self, prompt: str) -> float:
        """Difficulty in [0, 1]: the estimated (net) probability that the stronger model is needed."""
        p = _sigmoid(self.logit(prompt))
        return max(0.0, 2.0 * p - 1.0) if self.score_transform == "net_gain" else p
