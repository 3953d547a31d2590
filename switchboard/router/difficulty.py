"""Difficulty estimate: how likely a small, cheap model fails a prompt that a stronger one gets right.

``DifficultyModel.score(prompt)`` returns a probability in [0, 1]: the estimated probability that
the weak model answers the prompt wrongly *and* the strong model answers it correctly (the label
the shipped weights were trained on, recorded in their metadata; see docs/routing.md,
"Difficulty estimate"). The router sends a prompt to the stronger model when the score is at or
above its threshold.

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

FEATURE_VERSION = 3
N_BIN_EDGES = 7  # each dense feature is also one-hot binned into up to N_BIN_EDGES + 1 bins
HASH_BITS = 18
HASH_DIM = 1 << HASH_BITS
HEAD_BYTES = 512
TAIL_BYTES = 1024

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
    "has_options",
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
    """(offset in tail of the first option line, option texts) for "A. ..." style options."""
    opts: list[bytes] = []
    first = -1
    pos = 0
    for line in tail.split(b"\n"):
        if line[:2] in _OPTION_HEADS:
            if first < 0:
                first = pos
            opts.append(line[2:].strip())
        pos += len(line) + 1
    return first, opts


def _option_overlap(opts: list[bytes]) -> float:
    """Mean pairwise Jaccard overlap of the options' word sets (near-identical options are hard)."""
    sets = [set(o.split()) for o in opts]
    total = 0.0
    pairs = 0
    for i in range(len(sets) - 1):
        a = sets[i]
        for b in sets[i + 1:]:
            union = len(a | b)
            total += len(a & b) / union if union else 1.0
            pairs += 1
    return total / pairs


def _dense(raw: bytes, window: bytes, text: bytes, words: list[bytes], truncated: bool) -> np.ndarray:
    n = len(raw)
    nw = len(window)
    nwf = float(max(nw, 1))
    ntok = len(words)
    vocab = set(words)

    tail = raw[-TAIL_BYTES:] if truncated else raw
    first, opts = _options(tail)
    n_opt = len(opts)
    if n_opt:
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
        low_opts = b"\n".join(opts).lower()
        allnone = float(b"of the above" in low_opts or b"none of these" in low_opts)
        overlap = _option_overlap(low_opts.split(b"\n")) if n_opt >= 2 else 0.0
    else:
        stem = n
        stem_digits = nw - len(window.translate(None, _DIGITS))
        stem_sentences = window.count(b". ") + window.count(b"? ") + window.count(b".\n")
        mean_len = cv = longest = numeric = pair = roman = allnone = overlap = 0.0

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
            min(n_opt, 10) / 4.0,
            float(n_opt >= 2),
            log1p(max(stem, 0)),
            log1p(stem_digits),
            log1p(stem_sentences),
            log1p(mean_len),
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
            len(text.translate(None, b" \t\n\r\x0b\x0c")) / ntok if ntok else 0.0,
            log1p(len(vocab & _UNIT_WORDS)),
            float(truncated),
        ),
        dtype=np.float64,
    )


def features(prompt: str) -> tuple[np.ndarray, np.ndarray]:
    """(hashed bucket indices, dense feature vector) of a prompt: the one feature function.

    Indices are sorted, unique int64 in [0, HASH_DIM); each present bucket has the value
    1/sqrt(len(indices)). The dense vector holds N_DENSE unscaled float64 values (the model
    standardises them with the mean/std it was trained with).
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


def dense_bins(dense: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each dense feature: how many of its (ascending, +inf padded) edges it reaches.

    ``dense`` is (N_DENSE,) or (n, N_DENSE); ``edges`` is (N_DENSE, N_BIN_EDGES). The model adds
    one weight per (feature, bin), so each dense feature also gets a learnt piecewise-constant shape.
    """
    return (dense[..., None] >= edges).sum(axis=-1)


_FEATURE_ROWS = np.arange(N_DENSE)


@dataclass
class DifficultyModel:
    """Logistic regression over ``features()``; ``score()`` is a probability in [0, 1].

    What the probability is of depends on the label the weights were trained with
    (``metadata["label"]``, ``metadata["score_meaning"]``); higher always means "more in need of
    the stronger model".
    """

    hashed_weights: np.ndarray  # (HASH_DIM,) float32
    dense_weights: np.ndarray  # (N_DENSE,) float64, already divided by each feature's std
    bin_edges: np.ndarray  # (N_DENSE, N_BIN_EDGES) float64, ascending, +inf padded
    bin_weights: np.ndarray  # (N_DENSE, N_BIN_EDGES + 1) float64
    intercept: float  # includes -sum(w * mean / std) of the standardisation
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path = DEFAULT_WEIGHTS) -> DifficultyModel:
        with np.load(Path(path), allow_pickle=False) as data:
            meta = json.loads(str(data["metadata"]))
            hashed = np.asarray(data["hashed_weights"], dtype=np.float32)
            dense = np.asarray(data["dense_weights"], dtype=np.float64)
            edges = np.asarray(data["bin_edges"], dtype=np.float64)
            bins = np.asarray(data["bin_weights"], dtype=np.float64)
            intercept = float(data["intercept"])
        if meta.get("feature_version") != FEATURE_VERSION or hashed.shape != (HASH_DIM,):
            raise ValueError(
                f"{path}: weights are for feature version {meta.get('feature_version')} with "
                f"{hashed.shape[0]} buckets; this code computes version {FEATURE_VERSION} with "
                f"{HASH_DIM}: retrain with scripts/train_difficulty.py"
            )
        if (tuple(meta.get("dense_names", ())) != DENSE_NAMES or dense.shape != (N_DENSE,)
                or edges.shape != (N_DENSE, N_BIN_EDGES) or bins.shape != (N_DENSE, N_BIN_EDGES + 1)):
            raise ValueError(f"{path}: dense features differ from this code's; retrain")
        return cls(hashed, dense, edges, bins, intercept, meta)

    def logit(self, prompt: str) -> float:
        idx, dense = features(prompt)
        z = self.intercept + float(dense @ self.dense_weights)
        z += float(self.bin_weights[_FEATURE_ROWS, dense_bins(dense, self.bin_edges)].sum())
        if idx.size:
            z += float(self.hashed_weights[idx].sum(dtype=np.float64)) / math.sqrt(idx.size)
        return z

    def score(self, prompt: str) -> float:
        """Estimated probability in [0, 1] that the prompt needs the stronger model (see class doc)."""
        return _sigmoid(self.logit(prompt))
