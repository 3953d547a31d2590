"""Long replies cut into messages a platform accepts, whole and in order.

Every platform caps a message (Telegram 4,096 characters after entity parsing, WhatsApp 4,096,
Discord 2,000), and a reply cut anywhere reads badly or, in a code block, breaks the rest of the
conversation's formatting. So a reply is cut at the best boundary within the limit: a paragraph,
else a line, else the end of a sentence, else a space, and only as a last resort in a word. A
cut inside a fenced code block (```lang ... ```) closes the block at the end of its part and
opens it again, with its language, at the start of the next. The limit holds for each part as
`measure` counts it (a platform's own count: Telegram counts UTF-16 code units).
"""

from __future__ import annotations

import re
from collections.abc import Callable

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
_SENTENCE_END = re.compile(r"[.!?…。！？][\"')\]]*(?=\s)")
CLOSER = "\n```"
# Below this share of the room, a better kind of boundary is not worth a much shorter part.
_MIN_SHARE = 0.3


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units (characters outside the BMP count two), as Telegram counts."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def _fence_after(text: str, fence: str | None) -> str | None:
    """The fence line still open after `text`, given the one open before it (None: none)."""
    for line in text.split("\n"):
        match = _FENCE.match(line)
        if match is None:
            continue
        marker = match.group(1)
        if fence is None:
            fence = line.strip()
        else:
            opener = _FENCE.match(fence)
            assert opener is not None
            if marker[0] == opener.group(1)[0] and len(marker) >= len(opener.group(1)) and not match.group(2).strip():
                fence = None
    return fence


def _longest_head(text: str, room: int, measure: Callable[[str], int]) -> int:
    """The largest n with measure(text[:n]) <= room (binary search: measures grow with length)."""
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if measure(text[:mid]) <= room:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _cut(window: str, whole_tail: str) -> tuple[int, int]:
    """Where to end this part within `window` (a head of the rest), and where the next part
    starts: (end, next_start), indices into the rest."""
    floor = int(len(window) * _MIN_SHARE)
    para = window.rfind("\n\n")
    if para >= floor and para > 0:
        start = para
        while start < len(whole_tail) and whole_tail[start] == "\n":
            start += 1
        return para, start
    line = window.rfind("\n")
    if line >= floor and line > 0:
        return line, line + 1
    sentences = [m.end() for m in _SENTENCE_END.finditer(window) if m.end() >= floor]
    if sentences:
        end = sentences[-1]
        return end, end + 1
    space = max(window.rfind(" "), window.rfind("\t"))
    if space >= floor and space > 0:
        return space, space + 1
    return len(window), len(window)


def _closer(fence: str | None) -> str:
    """What closes the block opened by `fence` (its own run of backticks or tildes)."""
    if fence is None:
        return ""
    match = _FENCE.match(fence)
    assert match is not None
    return "\n" + match.group(1)


def split_text(text: str, limit: int, *, measure: Callable[[str], int] = len) -> list[str]:
    """`text` as parts of at most `limit` (by `measure`), cut at the best boundaries, code
    blocks closed and reopened across cuts. Joined again (less the added fences), the parts
    are the text, minus the white space at the cuts."""
    if limit < 40:
        raise ValueError("a limit under 40 leaves no room for a code block's fences")
    text = text.strip("\n")
    parts: list[str] = []
    fence: str | None = None  # the fence line open at the start of `rest`
    rest = text
    while rest:
        prefix = fence + "\n" if fence else ""
        final = prefix + rest + _closer(_fence_after(rest, fence))
        if measure(final) <= limit:
            parts.append(final)
            break
        room = limit - measure(prefix) - measure(CLOSER)
        while True:  # the cut, with room for whatever closes the block open there
            n = _longest_head(rest, room, measure)
            if n == 0:  # cannot happen with limit >= 40 unless a fence line alone is that long
                raise ValueError("a code block's fence line is too long for the limit")
            end, start = _cut(rest[:n], rest)
            head = rest[:end].rstrip(" \t")
            after = _fence_after(head, fence)
            over = measure(prefix + head + _closer(after)) - limit
            if over <= 0:
                break
            room -= over
        following = rest[start:]
        if after is not None:
            # The next line closes the block anyway: end the part with it instead of a closer.
            first, _, remainder = following.partition("\n")
            if _fence_after(first, after) is None and _FENCE.match(first):
                if measure(prefix + head + "\n" + first) <= limit:
                    parts.append(prefix + head + "\n" + first)
                    rest, fence = remainder.lstrip("\n"), None
                    continue
        parts.append(prefix + head + _closer(after))
        rest, fence = following, after
    return [p for p in parts if p.strip()]
