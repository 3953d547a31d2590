"""Anthropic's Messages API request body, validated at the edge and turned into a ChatRequest.

The mapping onto the provider-neutral request (and so onto OpenAI-compatible upstreams):

- `system` (text or text blocks) becomes the first message, with role "system".
- An assistant turn's `tool_use` blocks become its tool calls (input as JSON text);
  a user turn's `tool_result` blocks become messages with role "tool", in order.
- `image` blocks become image parts: base64 sources as `data:` URLs, URL sources as is.
- `tool_choice` any -> "required", tool -> that function, auto/none unchanged.
- `stop_sequences` -> stop, `metadata.user_id` -> user. `top_k` is accepted and ignored
  (OpenAI-compatible upstreams have no such knob), as are `thinking`, `service_tier`,
  `cache_control` and other fields Switchboard does not act on.
- Thinking blocks in the history are dropped (they are the model's own scratch work); other
  unknown block types are dropped from assistant turns and refused in user turns, where
  dropping them would silently change what the user asked.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Union

import orjson
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, model_validator

from switchboard.api.schemas import JsonObject
from switchboard.core.errors import InvalidRequest
from switchboard.core.types import ChatMessage, ChatRequest, ContentPart, ImagePart, TextPart, ToolCall, ToolSpec

# Block types that carry the model's hidden reasoning: never forwarded, never an error.
_THINKING_TYPES = frozenset({"thinking", "redacted_thinking"})


class _Edge(BaseModel):
    # Unknown fields are ignored (cache_control, citations, signature, container, ...).
    model_config = ConfigDict(extra="ignore")


class TextBlock(_Edge):
    type: Literal["text"]
    text: str


class Base64Source(_Edge):
    type: Literal["base64"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    data: str = Field(min_length=1)


class URLSource(_Edge):
    type: Literal["url"]
    url: str = Field(min_length=1)


ImageSource = Annotated[Union[Base64Source, URLSource], Field(discriminator="type")]


class ImageBlock(_Edge):
    type: Literal["image"]
    source: ImageSource


class ToolUseBlock(_Edge):
    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: JsonObject = Field(default_factory=dict)


class OtherBlock(_Edge):
    """A block type Switchboard does not translate (thinking, document, server tool results...)."""

    type: str


def _block_tag(value: Any) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if not isinstance(kind, str):
        return None
    return kind if kind in ("text", "image", "tool_use", "tool_result") else "other"


class ToolResultBlock(_Edge):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list["Block"] | None = None
    is_error: bool | None = None

    @model_validator(mode="after")
    def _text_only(self) -> "ToolResultBlock":
        if isinstance(self.content, list):
            for part in self.content:
                if not isinstance(part, TextBlock):
                    raise ValueError(
                        f"tool_result content may hold only text blocks here, not {part.type!r}: "
                        "OpenAI-compatible upstreams take tool results as text"
                    )
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(p.text for p in self.content if isinstance(p, TextBlock))


Block = Annotated[
    Union[
        Annotated[TextBlock, Tag("text")],
        Annotated[ImageBlock, Tag("image")],
        Annotated[ToolUseBlock, Tag("tool_use")],
        Annotated[ToolResultBlock, Tag("tool_result")],
        Annotated[OtherBlock, Tag("other")],
    ],
    Discriminator(
        _block_tag,
        custom_error_type="invalid_block",
        custom_error_message="each content block must be an object with a string 'type'",
    ),
]
ToolResultBlock.model_rebuild()


class InputMessage(_Edge):
    role: Literal["user", "assistant"]
    content: str | list[Block]

    @model_validator(mode="after")
    def _blocks_fit_the_role(self) -> "InputMessage":
        if isinstance(self.content, str):
            return self
        for block in self.content:
            if self.role == "user":
                if isinstance(block, ToolUseBlock):
                    raise ValueError("tool_use blocks may only appear in assistant messages")
                if isinstance(block, OtherBlock) and block.type not in _THINKING_TYPES:
                    raise ValueError(f"content blocks of type {block.type!r} are not supported by Switchboard")
            elif isinstance(block, (ToolResultBlock, ImageBlock)):
                raise ValueError(f"{block.type} blocks may only appear in user messages")
        return self


class Metadata(_Edge):
    user_id: str | None = Field(default=None, max_length=256)


class ToolDef(_Edge):
    type: str | None = None  # "custom" (or absent): a client tool; others are Anthropic's server tools
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    description: str | None = None
    input_schema: JsonObject

    @model_validator(mode="before")
    @classmethod
    def _client_tools_only(cls, data: Any) -> Any:
        kind = data.get("type") if isinstance(data, dict) else None
        if kind not in (None, "custom"):
            raise ValueError(
                f"tool type {kind!r} is not supported: Switchboard runs client tools only "
                "(name, description, input_schema)"
            )
        return data


class ToolChoice(_Edge):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None  # accepted; OpenAI-compatible upstreams decide

    @model_validator(mode="after")
    def _name_for_tool(self) -> "ToolChoice":
        if self.type == "tool" and not self.name:
            raise ValueError("tool_choice of type 'tool' needs the tool's name")
        return self


class MessagesBody(_Edge):
    model: str = Field(min_length=1)
    max_tokens: int = Field(ge=1)
    messages: list[InputMessage] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)  # accepted, not forwarded
    stream: bool = False
    metadata: Metadata | None = None
    tools: list[ToolDef] | None = None
    tool_choice: ToolChoice | None = None

    @model_validator(mode="after")
    def _tool_choice_needs_tools(self) -> "MessagesBody":
        choice = self.tool_choice
        if choice is not None and choice.type in ("any", "tool"):
            names = {t.name for t in self.tools or []}
            if not names:
                raise ValueError(f"tool_choice of type {choice.type!r} needs tools")
            if choice.type == "tool" and choice.name not in names:
                raise ValueError(f"tool_choice names {choice.name!r}, which is not among the tools")
        return self

    def to_request(self) -> ChatRequest:
        messages: list[ChatMessage] = []
        system = self.system if isinstance(self.system, str) else "\n\n".join(b.text for b in self.system or [])
        if system:
            messages.append(ChatMessage(role="system", content=system))
        for m in self.messages:
            messages.extend(_user_messages(m) if m.role == "user" else _assistant_message(m))
        return ChatRequest(
            model=self.model,
            messages=messages,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=[s for s in self.stop_sequences or [] if s],
            user=self.metadata.user_id if self.metadata else None,
            tools=[ToolSpec(t.name, t.description, t.input_schema) for t in self.tools] if self.tools else None,
            tool_choice=_tool_choice(self.tool_choice) if self.tools else None,
        )


def _tool_choice(choice: ToolChoice | None) -> Any:
    if choice is None:
        return None
    if choice.type == "any":
        return "required"
    if choice.type == "tool":
        return {"type": "function", "function": {"name": choice.name}}
    return choice.type  # "auto" | "none"


def _image_url(block: ImageBlock) -> str:
    source = block.source
    if isinstance(source, Base64Source):
        return f"data:{source.media_type};base64,{source.data}"
    return source.url


def _user_messages(m: InputMessage) -> list[ChatMessage]:
    """One user turn: its tool results as "tool" messages and the rest as user messages, in order."""
    if isinstance(m.content, str):
        return [ChatMessage(role="user", content=m.content)]
    out: list[ChatMessage] = []
    parts: list[ContentPart] = []

    def flush() -> None:
        if parts:
            # A lone text block is sent as plain text: the form every upstream accepts.
            only = parts[0]
            content: str | list[ContentPart] = only.text if len(parts) == 1 and isinstance(only, TextPart) else list(parts)
            out.append(ChatMessage(role="user", content=content))
            parts.clear()

    for block in m.content:
        if isinstance(block, TextBlock):
            parts.append(TextPart(block.text))
        elif isinstance(block, ImageBlock):
            parts.append(ImagePart(_image_url(block)))
        elif isinstance(block, ToolResultBlock):
            flush()
            out.append(ChatMessage(role="tool", content=block.text(), tool_call_id=block.tool_use_id))
        # thinking blocks: dropped
    flush()
    if not out:  # only thinking blocks: keep the turn so roles still alternate
        out.append(ChatMessage(role="user", content=""))
    return out


def _assistant_message(m: InputMessage) -> list[ChatMessage]:
    if isinstance(m.content, str):
        return [ChatMessage(role="assistant", content=m.content)]
    text = "".join(b.text for b in m.content if isinstance(b, TextBlock))
    calls = [
        ToolCall(b.id, b.name, json.dumps(b.input, ensure_ascii=False))
        for b in m.content
        if isinstance(b, ToolUseBlock)
    ]
    if not text and not calls:
        return []  # nothing but thinking (or untranslatable) blocks
    return [ChatMessage(role="assistant", content=text or None, tool_calls=calls or None)]


def parse_messages_body(raw: bytes) -> MessagesBody:
    """Validate a request body; any problem becomes a 400 naming the offending field."""
    if not raw:
        raise InvalidRequest("the request body is empty; expected a JSON object")
    try:
        return MessagesBody.model_validate_json(raw)
    except ValidationError as exc:
        raise _invalid(exc, raw) from None


def _invalid(exc: ValidationError, raw: bytes) -> InvalidRequest:
    errors = exc.errors(include_url=False)
    if errors[0].get("type") == "json_invalid":
        return InvalidRequest(f"the request body is not valid JSON: {errors[0].get('msg')}")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = None
    # The most specific problem: with `str | list[...]` content, the list branch's error says
    # more than "Input should be a valid string".
    paths = [_path(e.get("loc", ()), data) for e in errors]
    best = max(range(len(errors)), key=lambda i: len(paths[i]))
    where = ".".join(paths[best])
    message = str(errors[best].get("msg", "invalid value")).removeprefix("Value error, ")
    return InvalidRequest(f"{where}: {message}" if where else message, param=where or None)


def _path(loc: tuple[int | str, ...], data: Any) -> list[str]:
    """Pydantic's error location as Anthropic names fields ("messages.0.content"), without the
    union branch labels pydantic puts in between: walk the input and keep only real steps."""
    out: list[str] = []
    node = data
    for i, step in enumerate(loc):
        if isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node):
            out.append(str(step))
            node = node[step]
        elif isinstance(node, dict) and isinstance(step, str) and (step in node or i == len(loc) - 1):
            out.append(step)
            node = node.get(step)
    return out
