"""The prompt tokens a vendor bills for a request: everything it reads, not just the messages.

A vendor bills every message's text (system prompts included), the names, tool calls and tool
results in the history, the tool definitions (name, description, parameters), a
`response_format` schema, images, and some framing of its own around all of that. Counting only
the messages let a request with a 400 KB tool description through a hold of a few tokens (and
through the context-window check). `PromptCounter` counts all of it with the vendor's tokenizer
where one is public (tokenizers.TextTokens) plus the vendor's framing (`Framing`), and gives two
figures (`TokenCount`): the bound the hold and the window check use, and the estimate charged
when the vendor reports nothing.

Framing figures are deliberately on the high side: OpenAI documents 3 tokens per message (and
its role, 1 more) and 3 to prime the reply; tools are rendered by the vendor in a form we do not see, so their JSON
(which is longer than the vendor's rendering) is counted plus a fixed overhead per tool;
Anthropic adds a tool-use system prompt of about 350 tokens when tools are given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import orjson

from switchboard.core.types import ChatRequest, ImagePart, TextPart
from switchboard.providers.image_tokens import anthropic_image_tokens, gemini_image_tokens, openai_image_tokens
from switchboard.providers.tokenizers import HEAVY_CHARS, TextTokens, text_tokens


@dataclass(frozen=True, slots=True)
class TokenCount:
    """A prompt's tokens: `bound` is at least what the vendor bills (holds, the context window),
    `estimate` the best guess (charged when the vendor reports no usage). Equal when exact."""

    bound: int
    estimate: int


@dataclass(frozen=True, slots=True)
class Framing:
    """The tokens a vendor adds around the text it bills."""

    per_message: int
    per_name: int
    reply: int  # once per request: priming the answer
    per_tool_call: int  # a tool call in the history, beside its name and arguments
    tools: int  # once, when the request has tools (a vendor's tool-use instructions)
    per_tool: int  # each tool definition, beside its name, description and parameters
    response_format: int  # a response format, beside its JSON
    image: Callable[[str, ImagePart], int]  # one image, by the vendor's rule (model name, image)


OPENAI_FRAMING = Framing(per_message=4, per_name=1, reply=3, per_tool_call=8, tools=12, per_tool=10,
                         response_format=10, image=openai_image_tokens)
ANTHROPIC_FRAMING = Framing(per_message=5, per_name=2, reply=5, per_tool_call=12, tools=400, per_tool=12,
                            response_format=20, image=anthropic_image_tokens)
GEMINI_FRAMING = Framing(per_message=5, per_name=2, reply=5, per_tool_call=12, tools=40, per_tool=12,
                         response_format=20, image=gemini_image_tokens)


def _json_text(value: object) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


class PromptCounter:
    """Counts a request's billed prompt tokens for one vendor: its tokenizer and its framing."""

    __slots__ = ("framing", "text")

    def __init__(self, text: TextTokens, framing: Framing) -> None:
        self.text = text
        self.framing = framing

    def count(self, model_name: str, request: ChatRequest) -> TokenCount:
        framing, tokens = self.framing, self.text.tokens
        raw = 0  # tokens of text, scaled when the tokenizer is a stand-in
        fixed = framing.reply  # framing and images: not scaled
        for message in request.messages:
            fixed += framing.per_message
            if message.name:
                raw += tokens(message.name)
                fixed += framing.per_name
            content = message.content
            if isinstance(content, str):
                raw += tokens(content)
            elif content:
                for part in content:
                    if isinstance(part, TextPart):
                        raw += tokens(part.text)
                    elif isinstance(part, ImagePart):
                        fixed += framing.image(model_name, part)
            if message.tool_calls:
                for call in message.tool_calls:
                    raw += tokens(call.name) + tokens(call.arguments) + tokens(call.id)
                    fixed += framing.per_tool_call
            if message.tool_call_id:
                raw += tokens(message.tool_call_id)
        if request.tools:
            fixed += framing.tools
            for tool in request.tools:
                raw += tokens(tool.name) + tokens(tool.description or "") + tokens(_json_text(tool.parameters))
                fixed += framing.per_tool
        if request.response_format:
            raw += tokens(_json_text(request.response_format))
            fixed += framing.response_format
        if request.tool_choice is not None and not isinstance(request.tool_choice, str):
            raw += tokens(_json_text(request.tool_choice))
        bound, estimate = self.text.scale(raw)
        return TokenCount(bound + fixed, estimate + fixed)


def is_heavy(request: ChatRequest) -> bool:
    """Whether counting this request costs more than about a millisecond (then the caller runs
    it on a worker thread): it has more than HEAVY_CHARS of text or inline images."""
    total = 0
    for message in request.messages:
        content = message.content
        if isinstance(content, str):
            total += len(content)
        elif content:
            for part in content:
                total += len(part.text) if isinstance(part, TextPart) else len(part.url)
        if message.tool_calls:
            total += sum(len(call.arguments) for call in message.tool_calls)
    if request.tools:
        for tool in request.tools:
            total += len(tool.description or "") + (len(orjson.dumps(tool.parameters)) if tool.parameters else 0)
    return total > HEAVY_CHARS


# Counters per vendor. OpenAI's models use a public tokenizer (exact); for the others o200k
# stands in, scaled (see tokenizers): Claude's tokenizer makes up to about 1.6 times o200k's
# count on English and code, Gemini's about as many, unknown servers anything in between.
@lru_cache(maxsize=None)
def openai_counter(encoding_name: str) -> PromptCounter:
    return PromptCounter(text_tokens(encoding_name), OPENAI_FRAMING)


@lru_cache(maxsize=1)
def openai_compatible_counter() -> PromptCounter:
    return PromptCounter(text_tokens("o200k_base", 1.1, 1.5), OPENAI_FRAMING)


@lru_cache(maxsize=1)
def anthropic_counter() -> PromptCounter:
    return PromptCounter(text_tokens("o200k_base", 1.25, 1.6), ANTHROPIC_FRAMING)


@lru_cache(maxsize=1)
def gemini_counter() -> PromptCounter:
    return PromptCounter(text_tokens("o200k_base", 1.0, 1.35), GEMINI_FRAMING)

