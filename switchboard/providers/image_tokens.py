"""What an image costs in prompt tokens, per vendor, from its size when we can read it.

Vendors bill an image by its pixel size (after their own resizing), each by a documented rule;
the rules are here so that holds and the context-window check include images. The size is read
from the header of a `data:` URL's bytes (PNG, JPEG, GIF, WebP: a few bytes, no decoding of the
picture). An image given by http(s) URL, or one whose header we cannot read, is counted at the
rule's largest possible figure: the hold must cover whatever the vendor fetches.

Rules (as each vendor documents them):
- OpenAI, tile models (GPT-4o, GPT-4.1, GPT-4.5, GPT-5, o-series): "low" detail costs the base
  figure; otherwise the image is scaled to fit 2048x2048, then its shorter side to 768 px, and
  each 512 px tile costs `tile` tokens on top of the base (GPT-4o: 85 + 170 per tile).
- OpenAI, patch models (GPT-4.1-mini/nano, o4-mini, GPT-5-mini/nano): 32 px patches, at most
  1536, times a per-model multiplier.
- A model not in the tables above (a newer OpenAI model, an OpenAI-compatible server): the
  larger of the tile rule and one token per 32 px patch (at most 1,536: about what vision
  models served by vLLM and the like make of an image at their default size).
- Anthropic: width x height / 750 after scaling the long edge down (Claude's newest models
  accept up to 2576 px, about 4,800 tokens).
- Gemini: 258 tokens for an image up to 384x384; larger ones are cut into tiles of 258 tokens
  each; Gemini 3 counts up to 1,120 per image at its default (high) resolution: the larger.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct

from switchboard.core.types import ImagePart

_HEADER_B64_CHARS = 64 * 1024  # base64 read first (48 KiB): enough for nearly every JPEG header


def image_size(url: str) -> tuple[int, int] | None:
    """(width, height) of a base64 `data:` URL's image, None when it is not one or unreadable."""
    if not url.startswith("data:"):
        return None
    header, comma, payload = url[5:].partition(",")
    if not comma or ";base64" not in header.lower():
        return None
    for limit in (_HEADER_B64_CHARS, None):
        chunk = payload[:limit] if limit is not None else payload
        chunk = "".join(chunk.split())
        chunk = chunk[: len(chunk) - len(chunk) % 4]
        try:
            data = base64.b64decode(chunk, validate=False)
        except (binascii.Error, ValueError):
            return None
        size = _size_of(data)
        if size is not None or limit is None or len(payload) <= limit:
            return size
    return None


def _size_of(data: bytes) -> tuple[int, int] | None:
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        kind = data[12:16]
        if kind == b"VP8X":
            return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
        if kind == b"VP8L":
            bits = int.from_bytes(data[21:25], "little")
            return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
        if kind == b"VP8 ":
            w, h = struct.unpack("<HH", data[26:30])
            return w & 0x3FFF, h & 0x3FFF
        return None
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start of frame
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return w, h
        i += 2 + length
    return None


# -- OpenAI ----------------------------------------------------------------------------------
# (base, per tile) of tile models, by name prefix; (multiplier) of patch models.
_OPENAI_PATCH: tuple[tuple[str, float], ...] = (
    ("gpt-4.1-mini", 1.62), ("gpt-4.1-nano", 2.46), ("gpt-5-mini", 1.62), ("gpt-5-nano", 2.46), ("o4-mini", 1.72),
)
_OPENAI_TILE: tuple[tuple[str, int, int], ...] = (
    ("gpt-4o-mini", 2833, 5667), ("gpt-5", 70, 140), ("o1", 75, 150), ("o3", 75, 150),
    ("gpt-4o", 85, 170), ("gpt-4.1", 85, 170), ("gpt-4.5", 85, 170), ("chatgpt-4o", 85, 170),
)


def _tiles(size: tuple[int, int] | None) -> int:
    if size is None:
        return 8  # the most: 768 x 2048 after scaling
    w, h = (max(1, v) for v in size)
    if max(w, h) > 2048:
        scale = 2048 / max(w, h)
        w, h = w * scale, h * scale
    if min(w, h) > 768:
        scale = 768 / min(w, h)
        w, h = w * scale, h * scale
    return math.ceil(w / 512) * math.ceil(h / 512)


def _patches(size: tuple[int, int] | None) -> int:
    if size is None:
        return 1536
    w, h = (max(1, v) for v in size)
    patches = math.ceil(w / 32) * math.ceil(h / 32)
    return min(patches, 1536)


def openai_image_tokens(model: str, image: ImagePart) -> int:
    size = image_size(image.url)
    for prefix, multiplier in _OPENAI_PATCH:
        if model.startswith(prefix):
            return math.ceil(_patches(size) * multiplier)
    low = image.detail == "low"
    for prefix, base, tile in _OPENAI_TILE:
        if model.startswith(prefix):
            return base if low else base + tile * _tiles(size)
    tile_rule = 85 if low else 85 + 170 * _tiles(size)
    return max(tile_rule, _patches(size))


# -- Anthropic -------------------------------------------------------------------------------
_ANTHROPIC_LONG_EDGE = 2576
_ANTHROPIC_MAX = 4800


def anthropic_image_tokens(model: str, image: ImagePart) -> int:
    size = image_size(image.url)
    if size is None:
        return _ANTHROPIC_MAX
    w, h = (max(1, v) for v in size)
    if max(w, h) > _ANTHROPIC_LONG_EDGE:
        scale = _ANTHROPIC_LONG_EDGE / max(w, h)
        w, h = w * scale, h * scale
    return min(_ANTHROPIC_MAX, math.ceil(w * h / 750))


# -- Gemini ----------------------------------------------------------------------------------
_GEMINI_TILE = 258
_GEMINI_HIGH = 1120
_GEMINI_UNKNOWN = 16 * _GEMINI_TILE


def gemini_image_tokens(model: str, image: ImagePart) -> int:
    size = image_size(image.url)
    if size is None:
        return _GEMINI_UNKNOWN
    w, h = (max(1, v) for v in size)
    if w <= 384 and h <= 384:
        return _GEMINI_HIGH  # 258 on Gemini 2, up to 1,120 on Gemini 3
    unit = min(768, max(256, int(min(w, h) / 1.5)))
    return max(_GEMINI_HIGH, math.ceil(w / unit) * math.ceil(h / unit) * _GEMINI_TILE)
