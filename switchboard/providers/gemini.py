"""Adapter for Google's Gemini API (generativelanguage.googleapis.com, `v1beta`), native wire format.

Always streams: POST {base}/models/{model}:streamGenerateContent?alt=sse. Each SSE event's
data is a whole `GenerateContentResponse` (camelCase JSON): text and `functionCall` parts
under `candidates[0].content.parts`, a cumulative `usageMetadata` on every chunk, and
`finishReason` on the last one. There is no `[DONE]`: the body just ends.

Request mapping (our OpenAI-shaped `ChatRequest` -> `GenerateContentRequest`):
  system messages      -> `systemInstruction.parts[].text`
  user / assistant     -> `contents[]` with role "user" / "model" (consecutive same-role turns merged)
  image parts          -> `inlineData {mimeType, data}` (data: URLs) or `fileData {mimeType, fileUri}`
  assistant tool_calls -> `functionCall {name, args}` parts (args must be a JSON object)
  tool messages        -> `functionResponse {name, response}` parts in a "user" turn
  tools / tool_choice  -> `tools[].functionDeclarations`, `toolConfig.functionCallingConfig`
  sampling, stop, json -> `generationConfig`
Tool schemas are cut down to the OpenAPI subset Gemini's `Schema` accepts (local `$ref`s
inlined, `additionalProperties`, `$schema` and other unknown keys dropped).

Gemini gives function calls no id: we make one (`call_...`), and remember the call's
`thoughtSignature` under it, so that when the client sends the call back the signature goes
with it (Gemini 3 rejects replayed calls without one; unknown ids get Google's documented
`skip_thought_signature_validator` placeholder on Gemini 3+ models).

Usage is normalised to our shape: Gemini's `promptTokenCount` already includes
`cachedContentTokenCount`; `candidatesTokenCount` excludes `thoughtsTokenCount`, which is
billed as output, so completion = candidates + thoughts and reasoning = thoughts.

Error contract as in providers/base.py. The API key travels only in `x-goog-api-key`.
"""

from __future__ import annotations

import mimetypes
import re
import secrets
import urllib.parse
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from switchboard.core.catalog import ModelSpec
from switchboard.core.config import ProviderConfig
from switchboard.core.errors import InvalidRequest, UpstreamError
from switchboard.core.types import (
    ChatMessage,
    ChatRequest,
    ContentPart,
    Finish,
    FinishReason,
    ImagePart,
    StreamEvent,
    TextDelta,
    TextPart,
    ToolCallDelta,
    ToolSpec,
    Usage,
    UsageReport,
)
from switchboard.providers.media import decode_data_url
from switchboard.providers.http import HTTPProvider, SSEDecoder, describe, drain, error_message, scrub
from switchboard.providers.prompt_tokens import PromptCounter, gemini_counter

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com/v1beta"

# Gemini's FinishReason enum onto ours. Anything not listed maps to "stop".
_FINISH_REASONS: dict[str, FinishReason] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "IMAGE_RECITATION": "content_filter",
    "MODEL_ARMOR": "content_filter",
    "LANGUAGE": "error",
    "OTHER": "error",
    "MALFORMED_FUNCTION_CALL": "error",
    "UNEXPECTED_TOOL_CALL": "error",
    "TOO_MANY_TOOL_CALLS": "error",
    "MISSING_THOUGHT_SIGNATURE": "error",
    "MALFORMED_RESPONSE": "error",
    "IMAGE_OTHER": "error",
    "NO_IMAGE": "error",
    "FINISH_REASON_UNSPECIFIED": "error",
}

_TOOL_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}

# Google's documented placeholder for a replayed function call whose signature is unknown.
SKIP_THOUGHT_SIGNATURE = "skip_thought_signature_validator"
_SIGNATURES_KEPT = 4096  # thought signatures remembered per provider (each ~1-2 KB)
_MAJOR_VERSION = re.compile(r"gemini-(\d+)")

_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?)s\s*$")

# The OpenAPI-3.0 subset Gemini's `Schema` message has (generativelanguage v1beta).
_SCHEMA_KEYS = frozenset(
    {
        "type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems",
        "properties", "required", "minProperties", "maxProperties", "minLength", "maxLength",
        "pattern", "example", "anyOf", "propertyOrdering", "default", "items", "minimum", "maximum",
    }
)
# `format` values the Gemini Developer API accepts, per type; others are rejected with a 400.
_FORMATS = {"STRING": {"enum", "date-time"}, "NUMBER": {"float", "double"}, "INTEGER": {"int32", "int64"}}
_MAX_SCHEMA_DEPTH = 32


class GeminiProvider(HTTPProvider):
    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config, DEFAULT_BASE_URL)
        # Our generated call id -> the thoughtSignature Gemini sent with that call.
        self._signatures: OrderedDict[str, str] = OrderedDict()

    def prompt_counter(self, model: ModelSpec) -> PromptCounter:
        """Gemini's tokenizer is not shipped: a generous stand-in, and Gemini's image rule."""
        return gemini_counter()

    def url_for(self, model: ModelSpec) -> str:
        name = model.upstream_name
        path = name if "/" in name else f"models/{name}"  # also takes "tunedModels/x"
        return f"{self.base_url}/{urllib.parse.quote(path, safe='/')}:streamGenerateContent?alt=sse"

    # -- request -------------------------------------------------------------------------

    def build_payload(self, model: ModelSpec, request: ChatRequest) -> dict[str, Any]:
        """The JSON body sent upstream (public so tests and the CLI can show it).

        Raises InvalidRequest for what Gemini cannot express (tool-call arguments that are not
        a JSON object, a tool result answering no known call, a malformed data: URL)."""
        system: list[dict[str, Any]] = []
        contents: list[dict[str, Any]] = []
        call_names: dict[str, str] = {}
        needs_signature = _needs_thought_signature(model.upstream_name)
        for message in request.messages:
            role = message.role
            if role == "system":
                text = message.text()
                if text:
                    system.append({"text": text})
                continue
            if role == "tool":
                parts = [self._function_response(message, call_names)]
                turn_role = "user"
            elif role == "assistant":
                parts = _content_parts(message.content)
                if message.tool_calls:
                    parts.extend(self._function_calls(message, call_names, needs_signature))
                turn_role = "model"
            else:
                parts = _content_parts(message.content)
                turn_role = "user"
            if not parts:
                continue  # Gemini rejects a turn without parts
            if contents and contents[-1]["role"] == turn_role:
                contents[-1]["parts"].extend(parts)
            else:
                contents.append({"role": turn_role, "parts": parts})

        body: dict[str, Any] = {"contents": contents}
        if system:
            body["systemInstruction"] = {"parts": system}
        if request.tools:
            body["tools"] = [{"functionDeclarations": [_declaration(t) for t in request.tools]}]
            if request.tool_choice is not None:
                body["toolConfig"] = {"functionCallingConfig": _calling_config(request.tool_choice)}
        generation: dict[str, Any] = {}
        if request.max_tokens is not None:
            generation["maxOutputTokens"] = request.max_tokens
        if request.temperature is not None:
            generation["temperature"] = request.temperature
        if request.top_p is not None:
            generation["topP"] = request.top_p
        if request.stop:
            generation["stopSequences"] = list(request.stop)
        if request.response_format is not None:
            generation.update(_response_format(request.response_format))
        if generation:
            body["generationConfig"] = generation
        # request.user is not sent: Gemini has no such field.
        return body

    def _function_calls(
        self, message: ChatMessage, call_names: dict[str, str], needs_signature: bool
    ) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = []
        signed = False
        for call in message.tool_calls or ():
            try:
                args = orjson.loads(call.arguments) if call.arguments.strip() else {}
            except orjson.JSONDecodeError:
                raise InvalidRequest(
                    f"tool call {call.id!r} ({call.name}): arguments are not valid JSON", param="messages"
                ) from None
            if not isinstance(args, dict):
                raise InvalidRequest(
                    f"tool call {call.id!r} ({call.name}): arguments must be a JSON object", param="messages"
                )
            call_names[call.id] = call.name
            part: dict[str, Any] = {"functionCall": {"name": call.name, "args": args}}
            signature = self._signatures.get(call.id)
            if signature:
                part["thoughtSignature"] = signature
                signed = True
            parts.append(part)
        if parts and needs_signature and not signed:
            # Only the first call of a step carries the signature (parallel calls share it).
            parts[0]["thoughtSignature"] = SKIP_THOUGHT_SIGNATURE
        return parts

    @staticmethod
    def _function_response(message: ChatMessage, call_names: dict[str, str]) -> dict[str, Any]:
        name = call_names.get(message.tool_call_id or "") or message.name
        if not name:
            raise InvalidRequest(
                f"tool message with tool_call_id {message.tool_call_id!r} answers no earlier assistant tool call",
                param="messages",
            )
        text = message.text()
        response: Any = None
        if text.lstrip().startswith("{"):
            try:
                response = orjson.loads(text)
            except orjson.JSONDecodeError:
                response = None
        if not isinstance(response, dict):
            response = {"result": text}
        return {"functionResponse": {"name": name, "response": response}}

    def _remember_signature(self, call_id: str, signature: str) -> None:
        signatures = self._signatures
        signatures[call_id] = signature
        if len(signatures) > _SIGNATURES_KEPT:
            signatures.popitem(last=False)

    # -- response ------------------------------------------------------------------------

    async def stream(self, model: ModelSpec, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        body = orjson.dumps(self.build_payload(model, request))  # InvalidRequest before any I/O
        key = self.config.api_key()
        headers = {"Content-Type": "application/json"}
        if key:
            headers["x-goog-api-key"] = key

        # Phase 1: connect and get the status line. Nothing has been produced: retryable.
        resp = await self.open(self.url_for(model), body, headers)

        async with resp:
            if resp.status >= 300:
                raise await self.status_error(resp, key)
            state = _StreamState(self, key)
            if resp.content_type == "application/json":
                # No SSE: a whole response, or the `alt=json` array of chunks.
                async for event in self._from_json(resp, state):
                    yield event
                return

            # Phase 2: the stream. Locals, not attributes, on the per-event path.
            decoder = SSEDecoder()
            load = self._load_chunk
            feed = state.feed
            content = resp.content
            try:
                async for chunk in content.iter_any():
                    for data in decoder.feed(chunk):
                        for event in feed(load(data, state)):
                            state.yielded = True
                            yield event
                for data in decoder.flush():  # a last event without its blank line
                    for event in feed(load(data, state)):
                        state.yielded = True
                        yield event
            except (TimeoutError, aiohttp.ClientError) as exc:
                if state.reason is None:
                    self.raise_mid_stream(exc, state.yielded)
                # The answer is complete (finishReason seen); only the body's end went missing.

            if state.reason is None:
                raise UpstreamError(
                    f"{self.name}: upstream stream ended without a finishReason", retryable=not state.yielded
                )
            for event in state.finish():
                yield event
            if not content.at_eof():
                await drain(content)

    def _load_chunk(self, data: bytes, state: _StreamState) -> Any:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamError(
                f"{self.name}: malformed stream chunk from upstream", retryable=not state.yielded
            ) from None

    async def _from_json(self, resp: aiohttp.ClientResponse, state: _StreamState) -> AsyncIterator[StreamEvent]:
        try:
            obj = orjson.loads(await resp.read())
        except orjson.JSONDecodeError:
            raise UpstreamError(f"{self.name}: malformed response from upstream") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamError(f"{self.name}: upstream connection lost ({describe(exc)})") from exc
        for chunk in obj if isinstance(obj, list) else [obj]:
            for event in state.feed(chunk):
                state.yielded = True
                yield event
        if state.reason is None:
            raise UpstreamError(f"{self.name}: upstream response has no finishReason", retryable=not state.yielded)
        for event in state.finish():
            yield event

    # -- errors --------------------------------------------------------------------------

    def error_detail(self, body: Any) -> str:
        """Google's `{"error": {"code", "message", "status", "details"}}` as "STATUS: message"."""
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            status = err.get("status")
            return f"{status}: {err['message']}" if isinstance(status, str) and status else err["message"]
        if isinstance(body, list) and body:  # some Google front ends wrap the error in an array
            return self.error_detail(body[0])
        return error_message(body)

    def refine_error(self, error: UpstreamError, status: int, body: Any) -> UpstreamError:
        err = _error_object(body)
        if err is None:
            return error
        details = err.get("details")
        details = details if isinstance(details, list) else []
        if status == 429 and error.retry_after_s is None:
            for detail in details:
                if isinstance(detail, dict) and detail.get("@type") == _RETRY_INFO:
                    error.retry_after_s = _duration_s(detail.get("retryDelay"))
                    break
        if status == 400 and not error.retryable:
            # Gemini answers a bad key or an unserved region with 400; neither is the request's
            # fault, so another provider may serve it.
            reasons = {d.get("reason") for d in details if isinstance(d, dict) and d.get("@type") == _ERROR_INFO}
            if "API_KEY_INVALID" in reasons or err.get("status") == "FAILED_PRECONDITION":
                error.retryable = True
        return error


class _StreamState:
    """Turns GenerateContentResponse chunks into our events; collects finish reason and usage."""

    __slots__ = ("provider", "key", "yielded", "tool_index", "reason", "usage")

    def __init__(self, provider: GeminiProvider, key: str | None) -> None:
        self.provider = provider
        self.key = key
        self.yielded = False  # whether the client may have seen output (then: not retryable)
        self.tool_index = 0
        self.reason: str | None = None  # Gemini's finishReason, once seen
        self.usage: dict[str, Any] | None = None

    def feed(self, obj: Any) -> list[StreamEvent]:
        name = self.provider.name
        if type(obj) is not dict:
            raise UpstreamError(f"{name}: unexpected stream chunk from upstream", retryable=not self.yielded)
        if "error" in obj:  # an error reported inside a 200 stream
            err = _error_object(obj) or {}
            code = err.get("code")
            raise UpstreamError(
                f"{name}: upstream error mid-stream: {scrub(self.provider.error_detail(obj), self.key)}",
                retryable=not self.yielded,
                upstream_status=code if isinstance(code, int) else None,
            )
        try:
            usage = obj.get("usageMetadata")
            if usage:
                self.usage = usage  # cumulative on every chunk: keep the last
            candidates = obj.get("candidates")
            if not candidates:
                feedback = obj.get("promptFeedback")
                if feedback and feedback.get("blockReason"):
                    why = feedback.get("blockReasonMessage") or ""
                    raise UpstreamError(
                        f"{name}: Gemini blocked the prompt (blockReason {feedback['blockReason']})"
                        + (f": {why}" if why else ""),
                        retryable=False,
                    )
                return []
            candidate = candidates[0]
            events: list[StreamEvent] = []
            content = candidate.get("content")
            if content:
                for part in content.get("parts") or ():
                    if part.get("thought"):
                        continue  # a thought summary, not the answer
                    text = part.get("text")
                    if text:
                        events.append(TextDelta(text))
                    call = part.get("functionCall")
                    if call is not None:
                        events.append(self._tool_call(call, part.get("thoughtSignature")))
            reason = candidate.get("finishReason")
            if reason:
                self.reason = reason
            return events
        except (AttributeError, TypeError, KeyError):
            raise UpstreamError(f"{name}: unexpected stream chunk from upstream", retryable=not self.yielded) from None

    def _tool_call(self, call: dict[str, Any], signature: Any) -> ToolCallDelta:
        call_id = call.get("id") or f"call_{secrets.token_hex(12)}"
        if isinstance(signature, str) and signature:
            self.provider._remember_signature(call_id, signature)
        args = call.get("args")
        delta = ToolCallDelta(
            index=self.tool_index,
            id=call_id,
            name=call.get("name"),
            arguments=orjson.dumps(args if args is not None else {}).decode(),
        )
        self.tool_index += 1
        return delta

    def finish(self) -> list[StreamEvent]:
        reason = _FINISH_REASONS.get(self.reason or "STOP", "stop")
        if reason == "stop" and self.tool_index:
            reason = "tool_calls"  # Gemini says STOP after function calls
        events: list[StreamEvent] = [Finish(reason)]
        if self.usage is not None:
            events.append(UsageReport(gemini_usage(self.usage)))
        return events


# -- helpers -------------------------------------------------------------------------------


def gemini_usage(raw: dict[str, Any]) -> Usage:
    """Gemini's usageMetadata in our shape (cached within prompt, reasoning within completion)."""
    thoughts = int(raw.get("thoughtsTokenCount") or 0)
    return Usage(
        prompt_tokens=int(raw.get("promptTokenCount") or 0) + int(raw.get("toolUsePromptTokenCount") or 0),
        completion_tokens=int(raw.get("candidatesTokenCount") or 0) + thoughts,
        cached_prompt_tokens=int(raw.get("cachedContentTokenCount") or 0),
        reasoning_tokens=thoughts,
    )


def _needs_thought_signature(upstream_name: str) -> bool:
    """Gemini 3 and later reject replayed function calls without a signature; so may an
    unversioned alias ("gemini-flash-latest") that points at one. Gemini 1/2 need none."""
    match = _MAJOR_VERSION.search(upstream_name)
    if match:
        return int(match.group(1)) >= 3
    return "gemini" in upstream_name


def _content_parts(content: str | list[ContentPart] | None) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, TextPart):
            if part.text:
                parts.append({"text": part.text})
        elif isinstance(part, ImagePart):
            parts.append(_image_part(part.url))
    return parts


def _image_part(url: str) -> dict[str, Any]:
    if url.startswith("data:"):
        image = decode_data_url(url)
        return {"inlineData": {"mimeType": image.media_type, "data": image.data}}
    path = urllib.parse.urlsplit(url).path
    mime = mimetypes.guess_type(path)[0]
    if not mime or not mime.startswith("image/"):
        mime = "image/jpeg"
    return {"fileData": {"mimeType": mime, "fileUri": url}}


def _declaration(tool: ToolSpec) -> dict[str, Any]:
    decl: dict[str, Any] = {"name": tool.name}
    if tool.description:
        decl["description"] = tool.description
    params = gemini_schema(tool.parameters) if tool.parameters else {}
    if params.get("properties") or params.get("type", "OBJECT") != "OBJECT" or params.get("anyOf"):
        decl["parameters"] = params  # Gemini rejects an OBJECT with no properties: leave it out
    return decl


def _calling_config(choice: Any) -> dict[str, Any]:
    if isinstance(choice, str) and choice in _TOOL_MODES:
        return {"mode": _TOOL_MODES[choice]}
    if isinstance(choice, dict) and choice.get("type") == "function":
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if isinstance(name, str) and name:
            return {"mode": "ANY", "allowedFunctionNames": [name]}
    raise InvalidRequest(f"unsupported tool_choice: {choice!r}", param="tool_choice")


def _response_format(fmt: dict[str, Any]) -> dict[str, Any]:
    kind = fmt.get("type")
    if kind == "json_object":
        return {"responseMimeType": "application/json"}
    if kind == "json_schema":
        out: dict[str, Any] = {"responseMimeType": "application/json"}
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if isinstance(schema, dict) and schema:
            out["responseSchema"] = gemini_schema(schema)
        return out
    return {}  # "text": Gemini's default


def gemini_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON Schema cut down to the OpenAPI subset Gemini's `Schema` accepts: local `$ref`s
    inlined (a recursive one becomes a bare OBJECT), `["T", "null"]` and `anyOf` with a null
    branch turned into `nullable`, `oneOf` read as `anyOf`, `const` as a one-value enum, enums
    on other types than STRING moved into the description (Gemini rejects them), and
    unsupported keys (`additionalProperties`, `$schema`, `$defs`, `allOf`, ...) and formats dropped."""
    defs: dict[str, Any] = {}
    for field in ("$defs", "definitions"):
        if isinstance(schema.get(field), dict):
            for name, sub in schema[field].items():
                defs[f"#/{field}/{name}"] = sub
    return _schema_node(schema, defs, (), 0)


def _schema_node(node: Any, defs: dict[str, Any], refs: tuple[str, ...], depth: int) -> dict[str, Any]:
    if not isinstance(node, dict) or depth > _MAX_SCHEMA_DEPTH:
        return {}
    ref = node.get("$ref")
    if isinstance(ref, str):
        target = defs.get(ref)
        if target is None or ref in refs:
            return {"type": "OBJECT"}  # unknown or recursive reference: as loose as Gemini allows
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _schema_node(merged, defs, refs + (ref,), depth + 1)
    all_of = node.get("allOf")
    if isinstance(all_of, list) and len(all_of) == 1 and isinstance(all_of[0], dict):
        # pydantic's way of giving a $ref a description
        merged = {**all_of[0], **{k: v for k, v in node.items() if k != "allOf"}}
        return _schema_node(merged, defs, refs, depth + 1)

    out: dict[str, Any] = {}
    type_ = node.get("type")
    if isinstance(type_, list):
        kinds = [t for t in type_ if isinstance(t, str) and t != "null"]
        if len(kinds) < len(type_):
            out["nullable"] = True
        if len(kinds) == 1:
            type_ = kinds[0]
        else:
            if len(kinds) > 1:
                out["anyOf"] = [{"type": t.upper()} for t in kinds]
            type_ = None
    if isinstance(type_, str) and type_ != "null":
        out["type"] = type_.upper()
    elif type_ == "null":
        out["nullable"] = True

    for key, value in node.items():
        if key in ("type", "$ref", "allOf") or (key not in _SCHEMA_KEYS and key not in ("oneOf", "const")):
            continue
        if key == "properties":
            if isinstance(value, dict) and value:
                out["properties"] = {str(k): _schema_node(v, defs, refs, depth + 1) for k, v in value.items()}
        elif key == "items":
            if isinstance(value, list):  # tuple validation: the first item's schema is the best we have
                value = value[0] if value else {}
            out["items"] = _schema_node(value, defs, refs, depth + 1)
        elif key in ("anyOf", "oneOf"):
            if isinstance(value, list):
                branches = [b for b in value if isinstance(b, dict)]
                if any(b.get("type") == "null" for b in branches):
                    out["nullable"] = True
                    branches = [b for b in branches if b.get("type") != "null"]
                if len(branches) == 1:
                    single = _schema_node(branches[0], defs, refs, depth + 1)
                    for k, v in single.items():
                        out.setdefault(k, v)
                elif branches:
                    out["anyOf"] = [_schema_node(b, defs, refs, depth + 1) for b in branches]
        elif key in ("enum", "const"):
            values = value if key == "enum" and isinstance(value, list) else [value]
            if None in values:
                out["nullable"] = True
            values = [v for v in values if v is not None]
            if values:
                out["enum"] = values  # checked against the type below
        elif key == "required":
            if isinstance(value, list):
                out["required"] = [r for r in value if isinstance(r, str)]
        elif key == "format":
            out.setdefault("format", value)
        elif key == "propertyOrdering":
            if isinstance(value, list):
                out["propertyOrdering"] = [p for p in value if isinstance(p, str)]
        else:
            out[key] = value

    enum = out.pop("enum", None)
    if enum:
        # Gemini allows enum only on STRING: a typeless enum of strings becomes one; any other
        # type keeps its type and gets the allowed values in its description instead.
        if out.get("type", "STRING") == "STRING" and all(isinstance(v, str) for v in enum):
            out["type"] = "STRING"
            out["enum"] = enum
        else:
            listed = ", ".join(orjson.dumps(v).decode() for v in enum)
            described = out.get("description")
            out["description"] = f"{described} (one of: {listed})" if described else f"One of: {listed}"
    fmt = out.get("format")
    if fmt is not None and fmt not in _FORMATS.get(out.get("type", ""), ()):
        del out["format"]
    props = out.get("properties") or {}
    if "required" in out:
        out["required"] = [r for r in out["required"] if r in props]
        if not out["required"]:
            del out["required"]
    if "propertyOrdering" in out:
        out["propertyOrdering"] = [p for p in out["propertyOrdering"] if p in props]
        if not out["propertyOrdering"]:
            del out["propertyOrdering"]
    if "type" not in out and "anyOf" not in out and ("properties" in out or "required" in out):
        out["type"] = "OBJECT"
    return out


def _error_object(body: Any) -> dict[str, Any] | None:
    if isinstance(body, list) and body:
        body = body[0]
    err = body.get("error") if isinstance(body, dict) else None
    return err if isinstance(err, dict) else None


def _duration_s(value: Any) -> float | None:
    """A google.protobuf.Duration in its JSON form ("30s", "1.5s") as seconds."""
    if not isinstance(value, str):
        return None
    match = _DURATION.match(value)
    return float(match.group(1)) if match else None
