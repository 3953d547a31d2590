"""Counting text tokens: OpenAI's public tokenizers, loaded offline, and scaled estimates for
vendors whose tokenizer is not public.

Why the files ship with the code: tiktoken downloads its BPE files on first use, and a gateway
often has no internet at run time (and must not depend on a blob store to bill). The two
encodings OpenAI's chat models use (`o200k_base`, `cl100k_base`) are in `encodings/`, gzipped,
exactly as tiktoken publishes them (MIT licence, see encodings/README.md); each is checked
against tiktoken's own SHA-256 when it is loaded.

Two figures per text (`TextTokens`):
  bound    at least what the vendor will bill: what holds and the context-window check use.
  estimate the best guess: what is charged when the vendor reports no usage (a cut-off stream).
For a public tokenizer both are the exact count. For a vendor without one (Anthropic, Gemini,
an unknown OpenAI-compatible server) o200k's count is scaled: a little for the estimate, more
for the bound (vendor tokenizers that are less efficient than o200k bill up to that much more).

Counting is cheap for short texts (about 0.5 us for "hi"); long texts are remembered for a
while (a request is counted for the hold, again for each fallback candidate and for a cheaper
model), and a count that costs milliseconds is run off the event loop by the caller
(inference.metered, with `heavy`).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import math
import threading
from collections import OrderedDict
from functools import lru_cache
from importlib import resources

import tiktoken

# tiktoken's published files and their SHA-256 (as in tiktoken_ext.openai_public).
_ENCODINGS: dict[str, tuple[str, dict[str, int], str]] = {
    "o200k_base": (
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        {"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
        "|".join([
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""\p{N}{1,3}""",
            r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
            r"""\s*[\r\n]+""",
            r"""\s+(?!\S)""",
            r"""\s+""",
        ]),
    ),
    "cl100k_base": (
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        {"<|endoftext|>": 100257, "<|fim_prefix|>": 100258, "<|fim_middle|>": 100259, "<|fim_suffix|>": 100260,
         "<|endofprompt|>": 100276},
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",
    ),
}

# Texts at least this long are remembered after counting, the most recently used up to
# _MEMO_CHARS characters in all per counter. Encoding costs about 60 ns a character plus 2 us a
# call, a lookup 0.05 us (Python caches a str's hash): an assistant turn counts the same system
# prompt, tool schemas and history several times (fitting the window, then the hold), and each
# turn of a conversation counts its history again.
_MEMO_MIN_CHARS = 16
_MEMO_CHARS = 8 * 1024 * 1024
# A request with more text than this is counted on a worker thread (tiktoken releases the GIL):
# at most a few milliseconds of tokenizing (random letters: about 7 ms; prose: 0.3 ms).
HEAVY_CHARS = 16 * 1024


@lru_cache(maxsize=None)
def encoding(name: str) -> tiktoken.Encoding:
    """The tiktoken encoding `name`, built from the shipped file (once per process)."""
    if name not in _ENCODINGS:
        raise KeyError(f"no shipped tokenizer named {name!r} (shipped: {', '.join(_ENCODINGS)})")
    expected, special, pattern = _ENCODINGS[name]
    raw = gzip.decompress(resources.files(__package__).joinpath("encodings", f"{name}.tiktoken.gz").read_bytes())
    if hashlib.sha256(raw).hexdigest() != expected:
        raise RuntimeError(f"the shipped tokenizer file {name}.tiktoken.gz is damaged (SHA-256 mismatch)")
    ranks = {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in raw.splitlines() if line)}
    return tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=special)


@lru_cache(maxsize=256)
def openai_encoding_name(model_name: str) -> str:
    """The encoding of an OpenAI model (tiktoken's table; newer, unknown names: o200k_base)."""
    try:
        name = tiktoken.encoding_name_for_model(model_name)
    except KeyError:
        return "o200k_base"
    return name if name in _ENCODINGS else "o200k_base"


def utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


class _Memo:
    """One tokenizer's count function, remembering the counts of long texts (shared by every
    scaling of that tokenizer: a request is often counted for several vendors' models)."""

    __slots__ = ("_chars", "_decode", "_encode", "_lock", "_memo")

    def __init__(self, encoding_name: str) -> None:
        enc = encoding(encoding_name)
        self._encode, self._decode = enc.encode_ordinary, enc.decode_bytes
        self._memo: OrderedDict[str, int] = OrderedDict()
        self._chars = 0  # the length of the texts remembered
        self._lock = threading.Lock()  # counting may run on worker threads (HEAVY_CHARS)

    def tokens(self, text: str) -> int:
        if not text:
            return 0
        if len(text) < _MEMO_MIN_CHARS:
            return len(self._encode(text))
        with self._lock:
            n = self._memo.get(text)
            if n is not None:
                self._memo.move_to_end(text)
                return n
        n = len(self._encode(text))
        if len(text) > _MEMO_CHARS // 4:  # one text must not push everything else out
            return n
        with self._lock:
            if text not in self._memo:
                self._memo[text] = n
                self._chars += len(text)
                while self._chars > _MEMO_CHARS:
                    old, _ = self._memo.popitem(last=False)
                    self._chars -= len(old)
        return n

    def fresh(self, text: str) -> int:
        """The count of a text not worth remembering (a model's output: new every time)."""
        return len(self._encode(text)) if text else 0

    def head(self, text: str, tokens: int) -> str:
        """The start of `text` that is its first `tokens` tokens (a token split inside a
        character is left out)."""
        ids = self._encode(text)
        return text if len(ids) <= tokens else self._decode(ids[:max(0, tokens)]).decode("utf-8", "ignore")


@lru_cache(maxsize=None)
def _memo(encoding_name: str) -> _Memo:
    return _Memo(encoding_name)


class TextTokens:
    """Counts the tokens of texts with one tokenizer, optionally scaled (see the module doc).

    `per_byte` is the most tokens one UTF-8 byte of text can count as (neither figure exceeds
    `per_byte * bytes`, rounded up): a byte-level BPE never makes more tokens than bytes, so a
    caller can tell from a text's length alone that it is short enough not to need counting.
    """

    __slots__ = ("_fresh", "_head", "bound_factor", "estimate_factor", "exact", "name", "per_byte", "tokens")

    def __init__(self, encoding_name: str, *, estimate_factor: float = 1.0, bound_factor: float = 1.0) -> None:
        self.name = encoding_name
        memo = _memo(encoding_name)
        self.tokens = memo.tokens  # the tokenizer's own count (unscaled)
        self._fresh = memo.fresh
        self._head = memo.head
        self.exact = estimate_factor == 1.0 and bound_factor == 1.0
        self.estimate_factor = estimate_factor
        self.bound_factor = bound_factor
        self.per_byte = max(1.0, bound_factor, estimate_factor)

    def bound(self, text: str) -> int:
        n = self.tokens(text)
        return n if self.bound_factor == 1.0 else math.ceil(n * self.bound_factor)

    def estimate(self, text: str) -> int:
        """Produced text's count (not remembered: an output is new each time)."""
        n = self._fresh(text)
        return n if self.estimate_factor == 1.0 else math.ceil(n * self.estimate_factor)

    def head(self, text: str, tokens: int) -> str:
        """The longest start of `text` whose estimate is at most `tokens`."""
        return self._head(text, int(tokens / self.estimate_factor))

    def scale(self, tokens: int) -> tuple[int, int]:
        """(bound, estimate) of `tokens` counted with the unscaled tokenizer."""
        return math.ceil(tokens * self.bound_factor), math.ceil(tokens * self.estimate_factor)


@lru_cache(maxsize=None)
def text_tokens(encoding_name: str, estimate_factor: float = 1.0, bound_factor: float = 1.0) -> TextTokens:
    """One shared counter per tokenizer and scaling (cached: building an encoding takes ~0.3 s)."""
    return TextTokens(encoding_name, estimate_factor=estimate_factor, bound_factor=bound_factor)
