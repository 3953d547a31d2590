"""What kind of task a request is: a handful of compiled patterns, microseconds per call.

Why rules and not a model: the classes are few and their cues are lexical (code fences,
equations, "remind me", "write an email"), the decision must be explainable, and it must cost
nothing. The difficulty estimate (difficulty.py) is where learning pays.
"""

from __future__ import annotations

import re

from switchboard.core.types import ChatRequest, ImagePart

CODE = re.compile(
    r"```|\bdef |\bclass \w+[:(]|\bimport \w|#include|\bfunction\s*\(|=>|\bconsole\.log|\bSELECT\b.+\bFROM\b"
    r"|\b(python|javascript|typescript|rust|golang|java|c\+\+|sql|regex|bash|kotlin|swift)\b"
    r"|\b(code|function|bug|compile|stack ?trace|exception|refactor|unit test|api endpoint|script)\b",
    re.IGNORECASE,
)
MATH = re.compile(
    r"\\frac|\\int|\\sum|\\sqrt|\$[^$]+\$|\d\s*[-+*/^=]\s*\d|\b\d+x\b"
    r"|\b(prove|proof|theorem|lemma|integral|derivative|equation|solve for|probability|matrix|eigen\w*"
    r"|polynomial|logarithm|factorial|prime number|how many ways|calculate|compute the|reason step by step)\b",
    re.IGNORECASE,
)
WRITING = re.compile(
    r"\b(write|draft|compose|rewrite|rephrase|summari[sz]e|translate|proofread|edit)\b.{0,40}"
    r"\b(email|essay|letter|story|poem|post|article|paragraph|speech|summary|cover letter|bio|text|message"
    r"|haiku|song|lyrics|limerick|joke|tweet|caption|slogan|description|outline|report|review|toast)\b"
    r"|\b(essay|poem|haiku|short story|blog post|cover letter)\b"
    r"|^\s*(please\s+)?(write|draft|compose)\b",
    re.IGNORECASE | re.DOTALL,
)
CHAT = re.compile(
    r"^\s*(hi|hello|hey|thanks|thank you|good (morning|night|evening)|how are you|ok|okay|yes|no|bye)\b"
    r"|\bremind me\b|\breminder\b|\bset (an? )?(alarm|timer)\b|\b(add|put) .{0,30}\b(to|on) my (list|calendar)\b",
    re.IGNORECASE,
)
FACTUAL = re.compile(
    r"^\s*(what|who|when|where|which|how (many|much|old|far|long|tall)|is|are|does|did|define|name)\b",
    re.IGNORECASE,
)


def last_user_text(request: ChatRequest) -> str:
    for message in reversed(request.messages):
        if message.role == "user":
            return message.text()
    return request.messages[-1].text() if request.messages else ""


def classify(request: ChatRequest, prompt_tokens: int, long_document_tokens: int) -> tuple[str, str]:
    """(task class, the cue that decided it)."""
    if any(isinstance(m.content, list) and any(isinstance(p, ImagePart) for p in m.content) for m in request.messages):
        return "vision", "the request contains an image"
    if request.tools:
        return "tool_use", "the request offers tools"
    if prompt_tokens >= long_document_tokens:
        return "long_document", f"the prompt is {prompt_tokens} tokens"
    text = last_user_text(request)
    head = text[:4000]  # cues live at the start; long pastes are long_document anyway
    if CODE.search(head):
        return "coding", "code or programming terms"
    if MATH.search(head):
        return "math", "maths or reasoning terms"
    if WRITING.search(head):
        return "writing", "a writing request"
    if CHAT.search(head) and len(text) < 300:
        return "chat", "small talk or a reminder"
    if FACTUAL.search(head) and len(text) < 600:
        return "factual", "a short question"
    return ("chat", "short message") if len(text) < 200 else ("writing", "a longer open request")
