"""What kind of task a request is: word sets and a few literal cues, microseconds per call.

Why rules and not a model: the classes are few and their cues are lexical (code fences,
equations, "remind me", "write an email"), the decision must be explainable, and it must cost
nothing. The difficulty estimate (difficulty.py) is where learning pays. Cues are looked up in
the set of words of the message's head, not with alternation-heavy regular expressions, which
measured ~50 us per search on a 2 kB prompt.
"""

from __future__ import annotations

import re
from functools import lru_cache

from switchboard.core.types import ChatRequest

HEAD_CHARS = 2000  # cues live at the start; long pastes are long_document anyway
_WORDS = re.compile(r"[a-z][a-z0-9_+#]*")
_ARITHMETIC = re.compile(r"\d\s*[-+*/^=<>]\s*\(?\d|\b\d+[a-z]\b\s*[-+=]")

CODE_WORDS = frozenset(
    "python javascript typescript rust golang java c++ c# sql regex bash shell kotlin swift php ruby html css "
    "code function functions bug bugs compile compiler exception traceback stacktrace refactor script debug "
    "segfault api endpoint dockerfile kubernetes git npm pip variable loop recursion algorithm".split()
)
CODE_MARKS = ("```", "def ", "#include", "=>", "console.log", "import ", "function(", "select ", "();", "){", "</")
MATH_WORDS = frozenset(
    "prove proof theorem lemma integral derivative equation equations probability matrix eigenvalue eigenvalues "
    "polynomial logarithm factorial calculate compute solve sum integer integers prime divisible modulo "
    "geometry triangle algebra calculus".split()
)
MATH_MARKS = ("\\frac", "\\int", "\\sum", "\\sqrt", "$$", "√", "∫", "≤", "≥")
WRITING_VERBS = frozenset("write draft compose rewrite rephrase summarise summarize translate proofread edit".split())
WRITING_NOUNS = frozenset(
    "email essay letter story poem post article paragraph speech summary bio message haiku song lyrics limerick "
    "joke tweet caption slogan description outline report review toast".split()
)
GREETINGS = frozenset("hi hello hey thanks thank ok okay yes no bye morning night evening".split())
REMINDER_MARKS = ("remind me", "reminder", "set an alarm", "set a timer", "set alarm", "to my list", "on my calendar")
QUESTION_WORDS = frozenset("what who when where which is are does did define name how".split())


def last_user_text(request: ChatRequest) -> str:
    for message in reversed(request.messages):
        if message.role == "user":
            return message.text()
    return request.messages[-1].text() if request.messages else ""


def classify(
    request: ChatRequest, prompt_tokens: int, long_document_tokens: int, *,
    needed: frozenset[str] | None = None, text: str | None = None,
) -> tuple[str, str]:
    """(task class, the cue that decided it). A caller that already has the request's
    `needed_abilities()` or `last_user_text` passes them in."""
    needed = request.needed_abilities() if needed is None else needed
    if "vision" in needed:
        return "vision", "the request contains an image"
    if "tools" in needed:
        return "tool_use", "the request offers tools"
    if prompt_tokens >= long_document_tokens:
        return "long_document", f"the prompt is {prompt_tokens} tokens"
    return text_class(last_user_text(request) if text is None else text)


TEXT_CLASSES = ("coding", "math", "writing", "chat", "factual")


def text_class(text: str) -> tuple[str, str]:
    """(task class, cue) from a message's text alone: one of TEXT_CLASSES. The difficulty
    estimate uses the class as a feature, so it must not depend on anything but the text."""
    # It depends on the head and on whether the text is shorter than 200, 300 or 600 characters
    # alone, and is remembered by those: a routing decision classifies the text, then the
    # difficulty estimate classifies it again (its features, its quantity term).
    return _text_class(text[:HEAD_CHARS], min(len(text), 600))


@lru_cache(maxsize=256)
def _text_class(head: str, length: int) -> tuple[str, str]:
    head = head.lower()
    words = _WORDS.findall(head)
    vocabulary = set(words)
    first = words[0] if words else ""
    if any(mark in head for mark in CODE_MARKS) or vocabulary & CODE_WORDS:
        return "coding", "code or programming terms"
    if any(mark in head for mark in MATH_MARKS) or vocabulary & MATH_WORDS or _ARITHMETIC.search(head):
        return "math", "maths or reasoning terms"
    if first in ("write", "draft", "compose") or (vocabulary & WRITING_VERBS and vocabulary & WRITING_NOUNS):
        return "writing", "a writing request"
    if length < 300 and (first in GREETINGS or any(mark in head for mark in REMINDER_MARKS)):
        return "chat", "small talk or a reminder"
    if first in QUESTION_WORDS and length < 600:
        return "factual", "a short question"
    return ("chat", "short message") if length < 200 else ("writing", "a longer open request")
