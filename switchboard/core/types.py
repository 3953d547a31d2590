"""Domain types shared by every part: the canonical chat request, stream events, usage.

Plain dataclasses: pydantic lives at the edges (HTTP, config, provider payloads).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Union

Role = Literal["system", "user", "assistant", "tool"]


@dataclass(slots=True)
class ImagePart:
    """An image given by URL or as a data: URL with base64 content."""

    url: str
    detail: str | None = None


@dataclass(slots=True)
class TextPart:
    text: str


ContentPart = Union[TextPart, ImagePart]


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as the model produced it


@dataclass(slots=True)
class ChatMessage:
    role: Role
    content: str | list[ContentPart] | None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        """The message's text, with non-text parts left out."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if isinstance(p, TextPart))


@dataclass(slots=True)
class ToolSpec:
    name: str
    description: str | None
    parameters: dict[str, Any]


@dataclass(slots=True)
class ChatRequest:
    """One provider-neutral chat request, after validation at the edge."""

    model: str
    messages: list[ChatMessage]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    user: str | None = None
    tools: list[ToolSpec] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None
    # Set by the inference layer, never by clients: the Switchboard user this runs for
    # (providers use it to queue users fairly).
    account_id: int | None = None


    def needed_abilities(self) -> frozenset[str]:
        """What a model must be able to do to serve this request."""
        needed = set()
        if self.tools:
            needed.add("tools")
        if self.response_format and self.response_format.get("type") in ("json_object", "json_schema"):
            needed.add("json")
        for message in self.messages:
            if isinstance(message.content, list) and any(isinstance(p, ImagePart) for p in message.content):
                needed.add("vision")
                break
        return frozenset(needed)


@dataclass(slots=True)
class Usage:
    """Token counts as the provider (or our own count, when it said nothing) reports them.

    `cached_prompt_tokens` is a subset of `prompt_tokens`, as in OpenAI's usage;
    `reasoning_tokens` is a subset of `completion_tokens`. Adapters for vendors that
    count differently normalise to this shape.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "error"]


@dataclass(slots=True)
class TextDelta:
    text: str


@dataclass(slots=True)
class ToolCallDelta:
    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(slots=True)
class Finish:
    reason: FinishReason


@dataclass(slots=True)
class UsageReport:
    """The provider's own final usage figures. A stream may end without one (cut off)."""

    usage: Usage


StreamEvent = Union[TextDelta, ToolCallDelta, Finish, UsageReport]
