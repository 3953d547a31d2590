"""Features of a prompt for the difficulty estimate: what predicts a cheap model's failure across
kinds of work (chat, writing, code, maths), computed from the text alone in tens of microseconds
(a few hundred for a long prompt).

Two parts, both general rather than keyed to any benchmark's wording:

* **hashed words**: lower-cased word unigrams and bigrams (ASCII punctuation splits words; every
  digit folds to ``0``, so a number keeps only its length) plus the set of punctuation and symbol
  characters used, hashed with zlib.crc32 (stable across processes, unlike Python's salted
  ``hash()``) into ``HASH_DIM`` buckets; each bucket counts once and the bag is scaled by
  1/sqrt(size). Only the first ``HEAD_BYTES`` and last ``TAIL_BYTES`` of the UTF-8 prompt are
  tokenised, which bounds the cost of a call;
* **dense structure features** (``DENSE_NAMES``): length (bytes, words, lines, sentences), numbers
  and operations (numeric tokens, distinct numbers, arithmetic, quantity words, LaTeX and maths
  symbols), constraints to satisfy (must / at least / exactly / do not, format rules), requested
  length ("300 words", "3 paragraphs"), code (fences, code lines, keywords, tests), multiple steps
  (sequencing words, enumerations, several questions), answer options of a multiple-choice block,
  and the task class of ``tasks.text_class`` one-hot. Lengths and line counts come from the whole
  prompt; the rest from the window.

``features(prompt)`` is the one feature function: the runtime (difficulty.py) and the trainer
(scripts/train_difficulty.py) both call it (with ``hashed=False`` for weights that use no hashed
bucket, the shipped ones). ``quantity(prompt)`` counts the quantities
of maths and word problems for the quantity term.

The window is the first 256 and last 512 bytes (it was 512 and 1,024): held out, the smaller
window scored a little better (mean APGR 0.5509 against 0.5493; 128 + 384: 0.5492; 384 + 768:
0.5497) and halves the cost of a long prompt.
"""

from __future__ import annotations

import math
import re
import zlib

import numpy as np

from switchboard.router.tasks import TEXT_CLASSES, text_class

FEATURE_VERSION = 9
HASH_BITS = 16
HASH_DIM = 1 << HASH_BITS
HEAD_BYTES = 256
TAIL_BYTES = 512

_ASCII_PUNCT = bytes(c for c in range(33, 127) if not chr(c).isalnum())
# Words: ASCII upper -> lower, digits -> "0", ASCII punctuation -> space (then bytes.split()).
_WORD_TABLE = bytes.maketrans(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZ123456789" + _ASCII_PUNCT,
    b"abcdefghijklmnopqrstuvwxyz000000000" + b" " * len(_ASCII_PUNCT),
)
# Lower-cased text that keeps punctuation (for literal cues such as "at least" or "```").
_LOWER_TABLE = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"abcdefghijklmnopqrstuvwxyz")
_NOT_PUNCT = bytes(c for c in range(256) if c not in _ASCII_PUNCT)
_UPPER = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_DIGITS = b"0123456789"
_MATH = b"=+*/^<>%|~"
_BRACKETS = b"()[]{}"
_NON_ASCII = bytes(range(128, 256))

_M1 = np.uint64(0x9E3779B1)
_M2 = np.uint64(0x85EBCA6B)
_SHIFT = np.uint64(13)
_MASK = np.uint64(HASH_DIM - 1)
# Bucket of each punctuation byte's "symbol present" feature (crc32 of "\x01" + the byte).
_PUNCT_BUCKET = np.array([zlib.crc32(b"\x01" + bytes((c,))) & (HASH_DIM - 1) for c in range(256)],
                         dtype=np.int64)

_NUMBER = re.compile(rb"(?<![A-Za-z_])\d+(?:[.,]\d+)*")
_HOW_MUCH = (b"how many", b"how much", b"how long")  # a question about a quantity (a dense feature)
_ARITHMETIC = re.compile(rb"\d\s*[-+*/^=<>]\s*\(?[\d.a-z]")
_REQUESTED_LENGTH = re.compile(
    rb"\b\d+\+?\s*(?:words?|sentences?|paragraphs?|lines?|bullet|items?|sections?|pages?|examples?|steps?|"
    rb"questions?|characters?|letters?|times|verses?|stanzas?)\b")
# A number that counts units of the *response* (a format rule), not a quantity of the problem: "300
# words", "3 paragraphs", "2 bullet points", "at most 10 lines", "at least 8 times". Lines, pages and
# characters count only after a limit word, and letters never ("a set of 6 letters" is combinatorics).
_LIMIT = rb"(?:at least|at most|exactly|less than|fewer than|more than|no more than|no less than|up to|under|over|" \
         rb"limit(?:ed)? to)"
# Quantities written as words ("twice as many", "three paragraphs").
_NUMBER_WORD = (rb"(?:two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen|"
                rb"seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|hundred|"
                rb"thousand|million|half|twice|thrice|double|triple|dozen|quarter)")
_COUNT = rb"(?<![\d.,])(?:\d+(?:,\d{3})*\+?|" + _NUMBER_WORD + rb")\b"
# ... unless the unit is a rate of the problem ("60 words per minute", "200 words an hour").
_NOT_A_RATE = rb"(?!\s+(?:per|every)\b|\s+an?\s+(?:second|minute|hour|day|week|month|year)\b)"
_FORMAT_COUNT = re.compile(
    rb"\b" + _COUNT + rb"[\s-]*(?:[a-z]+\s+)?(?:words?|sentences?|paragraphs?|bullets|bullet points?|sections?|"
    rb"placeholders?|stanzas?|verses?)\b" + _NOT_A_RATE +
    rb"|\b" + _LIMIT + rb"\s+" + _COUNT + rb"\s*(?:[a-z]+\s+)?(?:lines?|pages?|characters?)\b" + _NOT_A_RATE +
    rb"|\b(?:at least|at most|exactly)\s+" + _COUNT + rb"\s*times\b")
_FORMAT_UNITS = (b"word", b"sentence", b"paragraph", b"bullet", b"section", b"placeholder", b"stanza", b"verse",
                 b"line", b"page", b"character", b"times")  # where none occurs, _FORMAT_COUNT cannot match
# The quantity term's gate and count (``quantity``): a cue is a word or its inflection ("find", not
# "findings"; "costs", not "costume").
_QUESTION_CUES = re.compile(
    rb"\b(?:how (?:many|much|long|far|old|fast)\b|(?:total|cost|price|profit)s?\b|sum of\b|average|altogether|"
    rb"in all\b|left\b|remain|percent|calculat|comput(?:e|ed|ing)\b|find\b|determine|work out\b|"
    rb"what(?: i|'|\xe2\x80\x99)s the\b|what was the\b)")
_NUMBER_WORDS = re.compile(rb"\b" + _NUMBER_WORD + rb"\b")
_ENUMERATION = re.compile(rb"(?m)^\s*(?:\d{1,2}[.)]|(?:[-*]|\xe2\x80\xa2)|\(?[a-h]\))\s")
_CODE_LINE = re.compile(rb"(?m)^(?: {2,}|\t)\S|[;{}]\s*$|^\s*(?:def|class|return|import|for|while|if)\b")

_OPTION_HEADS = frozenset(bytes((c, p)) for c in b"ABCDEFGHIJ" for p in b".):")
_PAIR_OPTION = re.compile(rb"^[A-Za-z ]{1,20}, [A-Za-z ]{1,20}\.?$")
_NUMERIC_OPTION = re.compile(rb"^[-+$(]?\s*[\d.,/ ]*\d[\d.,/ ]*\s*[%a-zA-Z]{0,6}\)?\.?$")

_QUANTITY_WORDS = frozenset(
    b"each per total remaining left more less fewer times twice half third quarter percent average every "
    b"cost costs price spend spent earn earns earned pay paid buy buys bought sells sold profit rate speed "
    b"hours minutes days weeks months years dollars cents miles km kg pounds altogether combined difference "
    b"ratio share split change".split())
_CALC_WORDS = frozenset(
    b"calculate compute computed solve evaluate estimate determine find value sum product probability "
    b"expected approximately integral derivative equation equations prove proof show derive theorem lemma "
    b"matrix eigenvalue polynomial maximum minimum optimal minimize maximize".split())
_CONSTRAINT_CUES = (b"at least", b"at most", b"exactly", b"no more than", b"no less than", b"less than",
                    b"more than", b"must", b"do not", b"don't", b"without", b"make sure", b"ensure", b"avoid",
                    b"only", b"should", b"never", b"always", b"instead", b"wrap", b"end your", b"start your",
                    b"finish your", b"all lowercase", b"all capital", b"in english", b"in all", b"repeat the")
_FORMAT_WORDS = frozenset(
    b"json markdown bullet bullets table title titled section sections paragraph paragraphs words sentences "
    b"lowercase uppercase capital capitals letters highlight highlighted format formatted placeholder "
    b"placeholders postscript quotation quotes csv yaml xml html list numbered heading headings bold "
    b"italic comma commas".split())
_LENGTH_WORDS = frozenset(b"essay detailed comprehensive thorough long article report story chapter "
                          b"elaborate extensive in-depth blog".split())
_BRIEF_WORDS = frozenset(b"brief briefly short concise quick quickly simple simply one-word".split())
_STEP_WORDS = frozenset(b"then after afterwards first second third finally next before step steps later "
                        b"subsequently meanwhile until while during".split())
_CODE_WORDS = frozenset(b"def return print include int void elif lambda var const function println printf "
                        b"null bool str class import else while integer array assert self none true false "
                        b"list dict tuple string len range append".split())
_REASON_WORDS = frozenset(b"why explain reason reasoning justify analyze analyse compare evaluate discuss "
                          b"argue critique implications tradeoffs trade".split())
_CREATIVE_WORDS = frozenset(b"story poem poems song lyrics haiku limerick rap fiction character characters "
                            b"imagine pretend roleplay role dialogue script joke riddle".split())
_NEGATION_WORDS = frozenset(b"not except never least cannot false incorrect neither nor".split())
_MATH_BLOCKS = (b"\xe2\x88", b"\xe2\x89", b"\xe2\x8a", b"\xe2\x8b", b"\xe2\x86")  # U+2190.., U+2200..

# Names of the dense features, in order (stored with the weights and checked at load time).
_TASK_NAMES = tuple(f"task_{c}" for c in TEXT_CLASSES)
DENSE_NAMES: tuple[str, ...] = (
    "log_bytes",
    "log_words",
    "log_lines",
    "log_sentences",
    "log_numbers",
    "log_distinct_numbers",
    "numbers_per_word",
    "log_large_numbers",
    "decimal_or_percent",
    "currency",
    "arithmetic",
    "digit_ratio",
    "math_symbol_ratio",
    "latex",
    "math_unicode",
    "quantity_words",
    "calc_words",
    "how_many_much",
    "constraints",
    "format_words",
    "requested_length",
    "length_words",
    "brief_words",
    "step_words",
    "enumerations",
    "question_marks",
    "reason_words",
    "creative_words",
    "code_fences",
    "code_lines",
    "code_words",
    "bracket_ratio",
    "tests_or_examples",
    "n_options",
    "log_option_bytes_mean",
    "numeric_options_share",
    "pair_options_share",
    "negation_words",
    "upper_ratio",
    "non_ascii_ratio",
    "mean_word_bytes",
    "quote_marks",
    "url_or_path",
    "truncated",
    *_TASK_NAMES,
)
N_DENSE = len(DENSE_NAMES)
_MISSING = float("nan")  # a feature that does not apply (option features without options)


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
    return np.unique(np.concatenate(parts))


def _options(window: bytes) -> list[bytes]:
    """Option texts of the last "A. ..." block of lines (multiple choice), at most ten."""
    opts: list[bytes] = []
    for line in window.split(b"\n"):
        head = line[:2]
        if head in _OPTION_HEADS:
            if head[0] == 65:  # "A": a new block starts (only the last one counts)
                opts = []
            opts.append(line[2:].strip())
    return opts[:10]


def _count_any(text: bytes, cues: tuple[bytes, ...]) -> int:
    return sum(map(text.count, cues))


def _asks_quantity(lower: bytes) -> bool:
    return any(cue in lower for cue in _HOW_MUCH)


def _dense(raw: bytes, window: bytes, lower: bytes, words: list[bytes], truncated: bool, task: str) -> np.ndarray:
    n = len(raw)
    nwf = float(max(len(window), 1))
    ntok = len(words)
    vocab = set(words)
    log1p = math.log1p

    numbers = _NUMBER.findall(window)
    n_numbers = len(numbers)
    opts = _options(window)
    n_opt = len(opts)
    if n_opt >= 2:
        mean_len = log1p(sum(map(len, opts)) / n_opt)
        numeric = sum(1 for o in opts if _NUMERIC_OPTION.match(o)) / n_opt
        pair = sum(1 for o in opts if _PAIR_OPTION.match(o)) / n_opt
        n_options = float(n_opt)
    else:
        n_options, mean_len, numeric, pair = 0.0, _MISSING, _MISSING, _MISSING
    words_whole = raw.count(b" ") + raw.count(b"\n") + 1 if truncated else ntok
    fences = window.count(b"```")
    return np.array(
        (
            log1p(n),
            log1p(words_whole),
            log1p(raw.count(b"\n")),
            log1p(window.count(b". ") + window.count(b"? ") + window.count(b"! ") + window.count(b".\n")),
            log1p(n_numbers),
            log1p(len(set(numbers))),
            min(n_numbers / ntok, 1.0) if ntok else 0.0,
            log1p(sum(1 for x in numbers if len(x) >= 3)),
            log1p(window.count(b"%") + sum(1 for x in numbers if b"." in x or b"," in x)),
            log1p(window.count(b"$") - 2 * window.count(b"$$") if fences == 0 else 0),
            log1p(len(_ARITHMETIC.findall(window))),
            (len(window) - len(window.translate(None, _DIGITS))) / nwf,
            (len(window) - len(window.translate(None, _MATH))) / nwf,
            log1p(window.count(b"\\") + window.count(b"$$")),
            log1p(_count_any(window, _MATH_BLOCKS)) if b"\xe2" in window else 0.0,
            log1p(len(vocab & _QUANTITY_WORDS)),
            log1p(len(vocab & _CALC_WORDS)),
            float(_asks_quantity(lower)),
            log1p(_count_any(lower, _CONSTRAINT_CUES)),
            log1p(len(vocab & _FORMAT_WORDS)),
            log1p(len(_REQUESTED_LENGTH.findall(lower))),
            log1p(len(vocab & _LENGTH_WORDS)),
            log1p(len(vocab & _BRIEF_WORDS)),
            log1p(len(vocab & _STEP_WORDS)),
            log1p(len(_ENUMERATION.findall(window))),
            log1p(window.count(b"?")),
            log1p(len(vocab & _REASON_WORDS)),
            log1p(len(vocab & _CREATIVE_WORDS)),
            log1p(fences),
            log1p(len(_CODE_LINE.findall(window))),
            log1p(len(vocab & _CODE_WORDS)),
            (len(window) - len(window.translate(None, _BRACKETS))) / nwf,
            log1p(lower.count(b"assert") + lower.count(b">>>") + lower.count(b"example")),
            n_options,
            mean_len,
            numeric,
            pair,
            log1p(len(vocab & _NEGATION_WORDS)),
            (len(window) - len(window.translate(None, _UPPER))) / nwf,
            (len(window) - len(window.translate(None, _NON_ASCII))) / nwf,
            sum(map(len, words)) / ntok if ntok else _MISSING,
            log1p(window.count(b'"') + window.count(b"\xe2\x80\x9c")),
            float(b"http" in lower or b"://" in lower or b".py" in lower or b"/" in lower and b"./" in lower),
            float(truncated),
            *(float(task == c) for c in TEXT_CLASSES),
        ),
        dtype=np.float64,
    )


_NO_BUCKETS = np.empty(0, dtype=np.int64)


def features(prompt: str, hashed: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(hashed bucket indices, dense feature vector) of a prompt.

    Indices are sorted, unique int64 in [0, HASH_DIM); each present bucket has the value
    1/sqrt(len(indices)). The dense vector holds N_DENSE unscaled float64 values, NaN where a
    feature does not apply (option features of a prompt without options); the model fills those
    in (training median) and clips to its training range. ``hashed=False`` skips the hashing (no
    indices), for weights that use no hashed bucket.
    """
    raw = prompt.encode("utf-8", "replace")
    window, truncated = _window(raw)
    text = window.translate(_WORD_TABLE)
    words = text.split()
    lower = window.translate(_LOWER_TABLE)
    task = text_class(prompt)[0]
    idx = _hash_tokens(words, window) if hashed else _NO_BUCKETS
    return idx, _dense(raw, window, lower, words, truncated, task)


def quantity(prompt: str) -> float | None:
    """log1p of how many quantities a quantitative prompt holds; None for any other prompt.

    Quantitative: maths (``tasks.text_class`` says so) with at least one quantity (maths with none,
    a proof say, is left to the content term), or a word problem: not code, at least two
    quantities, and a question cue ("how many", "total", "cost", "find", "what is the", ...).
    Why a signal of its own: there, each quantity is one the answer has to combine, so more of them
    mean more steps for the cheap model to get wrong; held out by source it ranks maths better
    than length alone does (docs/routing.md). Elsewhere numbers mean other things (word counts in
    format rules, test values in code), which is why the plain number features did not transfer.

    What counts: numbers, and number words ("twice", "half", "three", "a dozen"), for word problems
    state many of their quantities in words. What does not: numbers of format rules ("at least 300
    words", "three paragraphs": ``_FORMAT_COUNT``), which size the answer, and the lines of
    multiple-choice options ("A. 12"), which are candidate answers, not quantities of the problem.
    The gate once required "how many / how much / how long", which let only about half of plain
    word problems through ("What is the total cost?" was not) and ranked the rest by another rule.
    Cheaper than ``features``: the task class and a few scans of the window.
    """
    task = text_class(prompt)[0]
    if task == "coding":
        return None
    window, _ = _window(prompt.encode("utf-8", "replace"))
    if len(_options(window)) >= 2:
        window = _without_options(window)
    lower = window.translate(_LOWER_TABLE)
    if task != "math" and not _QUESTION_CUES.search(lower):
        return None
    if any(unit in lower for unit in _FORMAT_UNITS):  # the format-rule scan costs ~10 us
        lower = _FORMAT_COUNT.sub(b" ", lower)
    n = len(_NUMBER.findall(lower)) + len(_NUMBER_WORDS.findall(lower))
    if n < (1 if task == "math" else 2):
        return None
    return math.log1p(n)


def _without_options(window: bytes) -> bytes:
    """The window less its last multiple-choice block: consecutive lines "A. ...", "B. ...", ...
    starting at an "A" (an "E.g." or a lone "A:" line elsewhere is kept)."""
    lines = window.split(b"\n")
    block, i = None, 0
    while i < len(lines):
        end = i
        while end < len(lines) and _is_option(lines[end]):
            end += 1
        if end - i >= 2 and lines[i][:1] == b"A" and lines[i + 1][:1] == b"B":
            block = (i, end)
        i = max(end, i + 1)
    if block is None:
        return window
    return b"\n".join(lines[:block[0]] + lines[block[1]:])


def _is_option(line: bytes) -> bool:
    return line[:2] in _OPTION_HEADS and line[2:3] in (b" ", b"")
