"""The OpenAI Chat Completions request body, validated at the edge and turned into a ChatRequest."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from switchboard.core.errors import InvalidRequest
from switchboard.core.types import ChatMessage, ChatRequest, ImagePart, TextPart, ToolCall, ToolSpec


def _json_safe(value: Any) -> Any:
    """Refuse JSON that cannot be sent on: an integer beyond 64 bits parses, but no upstream
    payload can carry it (orjson, like most JSON libraries, refuses it)."""
    try:
        orjson.dumps(value)
    except TypeError as exc:
        raise ValueError(f"not a JSON value Switchboard can pass on ({exc}): numbers must fit in 64 bits") from None
    return value


# A JSON object from the client that goes upstream as is (tool parameters, response_format...).
JsonObject = Annotated[dict[str, Any], AfterValidator(_json_safe)]
JsonAny = Annotated[Any, AfterValidator(_json_safe)]


class _Edge(BaseModel):
    # Unknown fields are ignored, as OpenAI-compatible servers commonly do (clients send
    # seed, logit_bias, ... that we do not act on).
    model_config = ConfigDict(extra="ignore")


class TextContent(_Edge):
    type: Literal["text"]
    text: str


class ImageURL(_Edge):
    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None


class ImageContent(_Edge):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[Union[TextContent, ImageContent], Field(discriminator="type")]


class FunctionCall(_Edge):
    name: str
    arguments: str


class ToolCallIn(_Edge):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Edge):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _content_rules(self) -> "Message":
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("messages with role 'tool' must have a tool_call_id")
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role} message must have content")
        return self


class FunctionDef(_Edge):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    description: str | None = None
    parameters: JsonObject = Field(default_factory=lambda: {"type": "object", "properties": {}})


class Tool(_Edge):
    type: Literal["function"]
    function: FunctionDef


class StreamOptions(_Edge):
    include_usage: bool = False


class ChatCompletionBody(_Edge):
    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, max_length=256)
    n: int = Field(default=1, ge=1)
    tools: list[Tool] | None = None
    tool_choice: JsonAny = None
    response_format: JsonObject | None = None

    @model_validator(mode="after")
    def _rules(self) -> "ChatCompletionBody":
        if self.n != 1:
            raise ValueError("n must be 1: Switchboard returns one choice per request")
        if isinstance(self.stop, list) and len(self.stop) > 4:
            raise ValueError("stop may hold at most 4 sequences")
        return self

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def to_request(self) -> ChatRequest:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return ChatRequest(
            model=self.model,
            messages=[_message(m) for m in self.messages],
            max_tokens=self.max_completion_tokens or self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=[s for s in stop if s],
            user=self.user,
            tools=[ToolSpec(t.function.name, t.function.description, t.function.parameters) for t in self.tools]
            if self.tools
            else None,
            tool_choice=self.tool_choice,
            response_format=self.response_format,
        )


def _message(m: Message) -> ChatMessage:
    content: str | list[TextPart | ImagePart] | None
    if isinstance(m.content, list):
        content = [
            TextPart(p.text) if isinstance(p, TextContent) else ImagePart(p.image_url.url, p.image_url.detail)
            for p in m.content
        ]
    else:
        content = m.content
    return ChatMessage(
        role="system" if m.role == "developer" else m.role,
        content=content,
        name=m.name,
        tool_calls=[ToolCall(c.id, c.function.name, c.function.arguments) for c in m.tool_calls] if m.tool_calls else None,
        tool_call_id=m.tool_call_id,
    )


def parse_chat_body(raw: bytes) -> ChatCompletionBody:
    """Validate a request body; any problem becomes a 400 naming the offending field."""
    if not raw:
        raise InvalidRequest("the request body is empty; expected a JSON object")
    try:
        return ChatCompletionBody.model_validate_json(raw)
    except ValidationError as exc:
        raise invalid_from_validation(exc) from None


def invalid_from_validation(exc: ValidationError) -> InvalidRequest:
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if not str(p).startswith("function-after"))
    if first.get("type") == "json_invalid":
        return InvalidRequest(f"the request body is not valid JSON: {first.get('msg')}")
    message = first.get("msg", "invalid value").removeprefix("Value error, ")
    return InvalidRequest(f"Invalid value for '{where}': {message}" if where else message, param=where or None)


# -- the other bodies and the error shapes, for the OpenAPI schema (api.openapi) ---------------


class CheckoutBody(_Edge):
    """POST /v1/billing/checkout: exactly one of `plan` and `pack`."""

    plan: str | None = Field(default=None, description="A paid plan to subscribe to: plus, pro, ...")
    pack: str | None = Field(default=None, description="A top-up pack to buy once: 600, 2000, 5000, 10000")


class PlanChangeBody(_Edge):
    """POST /v1/billing/plan."""

    plan: str = Field(description="The plan to move to; free cancels at the end of the paid period")


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error shape: every error of every endpoint but /v1/messages."""

    error: ErrorDetail


class AnthropicErrorDetail(BaseModel):
    type: str
    message: str


class AnthropicErrorResponse(BaseModel):
    """Anthropic's error shape, for /v1/messages."""

    type: Literal["error"]
    error: AnthropicErrorDetail
    request_id: str | None
