"""The model's vocabulary: tokenizing, rendering tokens, and the tokens a reply may never contain.

Tokenizing only reads the vocabulary, which llama.cpp allows from any thread while the engine
decodes (its own server tokenizes on its HTTP threads), so callers count prompts on their own
thread without waiting for the engine.
"""

from __future__ import annotations

import ctypes
import re
from typing import Any

import numpy as np

from switchboard.providers.local.prompt import Segment

# Markup the model may not write: image and turn markers (`<start_of_image>` is a user-defined
# token in Gemma 3 that renders as text and leaked into replies), and the multimodal placeholder.
_MARKER = re.compile(rb"^(<(start|end)_of_\w+>|\[multimodal\]|<image_soft_token>|</?bbox>)$")


class Vocabulary:
    """Tokenizer and detokenizer of one loaded model, plus its banned and end-of-generation tokens."""

    def __init__(self, llama_cpp: Any, vocab: Any) -> None:
        self._lib = llama_cpp
        self._vocab = vocab
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
        self.bos = int(llama_cpp.llama_vocab_bos(vocab))
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
        never = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNUSED | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
        normal = llama_cpp.LLAMA_TOKEN_ATTR_NORMAL
        banned: list[int] = []
        eog: list[int] = []
        blank: list[int] = []
        buf = ctypes.create_string_buffer(256)
        get_attr, to_piece, is_eog = llama_cpp.llama_vocab_get_attr, llama_cpp.llama_token_to_piece, llama_cpp.llama_vocab_is_eog
        for token in range(self.n_vocab):  # one pass over the vocabulary's attributes at load
            flags = get_attr(vocab, token)
            if flags == normal:
                continue
            size = to_piece(vocab, token, buf, 256, 0, True)  # before reading buf.raw
            piece = buf.raw[: max(0, size)]
            if is_eog(vocab, token):
                eog.append(token)
            elif flags & never or _MARKER.match(piece):
                banned.append(token)
            elif not piece.strip():
                blank.append(token)  # Gemma's runs of newlines, spaces and tabs
        # Ordinary tokens that are only whitespace, found by what they encode.
        for space in (" ", "\u00a0", "\u3000", "\r", "\r\n", "\n"):
            ids = self.tokenize_text(space)
            if len(ids) == 1:
                blank.append(ids[0])
        eog += [t for t in (llama_cpp.llama_vocab_eos(vocab), llama_cpp.llama_vocab_eot(vocab)) if t >= 0]
        self.eog = frozenset(eog)
        # Never sampled: control, unused and unknown tokens and multimodal markup.
        self.banned = np.array(banned, dtype=np.int64)
        # Not sampled before a reply has visible text: ending it, or more leading whitespace.
        self.not_first = np.array(sorted(self.eog.union(blank)), dtype=np.int64)

    def tokenize(self, segments: list[Segment], *, add_bos: bool = False) -> list[int]:
        tokens = [self.bos] if add_bos and self.add_bos else []
        for segment in segments:
            if segment.text:
                tokens += self.tokenize_text(segment.text, special=segment.special)
        return tokens

    def tokenize_text(self, text: str, *, special: bool = False) -> list[int]:
        data = text.encode("utf-8")
        size = len(data) + 8
        while True:
            buf = (ctypes.c_int32 * size)()
            n = self._lib.llama_tokenize(self._vocab, data, len(data), buf, size, False, special)
            if n >= 0:
                return list(buf[:n])
            size = -n

    def piece(self, token: int, *, special: bool = False) -> bytes:
        """The bytes of one token. Not Llama.detokenize, whose fixed 32-byte buffer truncates
        Gemma's longer pieces (runs of spaces, HTML fragments)."""
        size = 64
        while True:
            buf = ctypes.create_string_buffer(size)
            n = self._lib.llama_token_to_piece(self._vocab, token, buf, size, 0, special)
            if n >= 0:
                return buf.raw[:n]
            size = -n
