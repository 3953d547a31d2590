"""Splitting a reply at a platform's limit: whole, in order, at the best boundary, code blocks
closed and reopened, counted as the platform counts."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from switchboard.channels.split import split_text, utf16_len
from switchboard.channels.telegram import render_html
from tests.fakes.telegram_api import parse_html

_FENCE_LINE = re.compile(r"^ {0,3}(`{3,}|~{3,}).*$", re.MULTILINE)


def _content(text: str) -> str:
    """The text without fence lines and white space: what must survive splitting."""
    return re.sub(r"\s+", "", _FENCE_LINE.sub("", text))


def _fences_balanced(part: str) -> bool:
    """Every code block of the part is closed (CommonMark: a closing fence is the opening's
    character, at least as long, with nothing after it; inside a block, anything else is code)."""
    opened: str | None = None
    for line in part.split("\n"):
        match = re.match(r"^ {0,3}(`{3,}|~{3,})(.*)$", line)
        if match is None:
            continue
        fence, info = match.groups()
        if opened is None:
            opened = fence
        elif fence[0] == opened[0] and len(fence) >= len(opened) and not info.strip():
            opened = None
    return opened is None


def test_short_text_is_one_part() -> None:
    assert split_text("Hello there.\n\nBye.", 4096) == ["Hello there.\n\nBye."]


def test_paragraphs_are_preferred_then_sentences_then_words() -> None:
    paragraph = "word " * 150  # 750 characters
    parts = split_text(f"{paragraph.strip()}\n\n{paragraph.strip()}", 1000)
    assert parts == [paragraph.strip(), paragraph.strip()]
    sentences = " ".join(["This is one sentence of the reply."] * 40)  # ~1,400 characters
    first, second = split_text(sentences, 1000)
    assert first.endswith("reply.") and second.startswith("This is")
    words = " ".join(["lorem"] * 300)
    assert all(p.startswith("lorem") and p.endswith("lorem") for p in split_text(words, 500))


def test_a_code_block_cut_in_two_is_closed_and_reopened_with_its_language() -> None:
    code = "\n".join(f"print({i})  # line {i}" for i in range(200))
    parts = split_text(f"Here you go:\n\n```python\n{code}\n```\n\nThat's all.", 1000)
    assert len(parts) > 3 and all(len(p) <= 1000 for p in parts)
    inside = [p for p in parts if "print(" in p]
    assert all(p.count("```") == 2 for p in inside)
    assert all(p.lstrip().startswith("```python") or p.startswith("Here you go") for p in inside)
    printed = [line for p in parts for line in p.split("\n") if line.startswith("print(")]
    assert printed == code.split("\n")  # every line once, in order, none cut
    assert parts[-1].endswith("That's all.")


def test_a_block_ending_at_a_cut_is_not_reopened_empty() -> None:
    code = "x = 1\n" * 150
    parts = split_text(f"```\n{code}```\nafter", 300)
    assert not any(re.fullmatch(r"```\w*\n```", p) for p in parts)


def test_utf16_measure_counts_emoji_twice() -> None:
    text = "😀 " * 3000  # 9,000 UTF-16 code units, 6,000 characters
    parts = split_text(text, 4096, measure=utf16_len)
    assert all(utf16_len(p) <= 4096 for p in parts) and len(parts) == 3
    assert "".join(parts).replace(" ", "") == text.replace(" ", "")


def test_telegram_html_is_never_longer_than_its_source() -> None:
    source = "if a < b && c > d:\n```js\nconst x = a < b && '<b>';\n```\nand `x<y` too"
    visible, problem = parse_html(render_html(source))
    assert problem is None and len(visible) <= len(source)
    assert "const x = a < b && '<b>';" in visible and "a < b && c > d" in visible


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(st.one_of(
    st.text(alphabet=st.sampled_from("ab c.\n!?é😀<&"), min_size=1, max_size=300),
    st.sampled_from(["\n```python\n", "\n```\n", "\n\n", "\n~~~\n"]),
), max_size=40), st.integers(min_value=60, max_value=700))
def test_any_text_splits_whole_within_the_limit_with_balanced_fences(pieces: list[str], limit: int) -> None:
    text = "".join(pieces)
    parts = split_text(text, limit, measure=utf16_len)
    assert all(utf16_len(p) <= limit for p in parts)
    assert all(_fences_balanced(p) for p in parts)
    assert _content("\n".join(parts)) == _content(text)  # (each part starts a line of its own)
