"""How a vendor counts the tokens it bills, for the fake upstreams.

Written from the vendor's side, independently of the gateway's counting: OpenAI's cookbook
("How to count tokens with tiktoken") for messages (3 tokens per message, every string field
tokenized, role included, 1 more for a name, 3 to prime the reply) and for function tools
(7 per function, "name:description", 3 + 3 per property "key:type:description", enums, 12 at
the end), the schema of a `response_format` as compact JSON, images by OpenAI's documented tile
rule, and the o200k tokenizer for the text. A gateway whose hold is below this figure would let
a user run up a bill the hold never covered.
"""

from __future__ import annotations

import json
from typing import Any

from switchboard.core.types import ImagePart
from switchboard.providers.image_tokens import openai_image_tokens
from switchboard.providers.tokenizers import encoding


def tokens(text: str) -> int:
    return len(encoding("o200k_base").encode_ordinary(text)) if text else 0


def head(text: str, limit: int) -> str:
    """The first `limit` tokens of `text`."""
    enc = encoding("o200k_base")
    return enc.decode_bytes(enc.encode_ordinary(text)[:limit]).decode("utf-8", "ignore")


def token_pieces(text: str) -> list[str]:
    """`text` as one piece per token (bytes of a character split across tokens are kept together)."""
    enc = encoding("o200k_base")
    pieces, pending = [], b""
    for token in enc.encode_ordinary(text):
        pending += enc.decode_single_token_bytes(token)
        try:
            pieces.append(pending.decode("utf-8"))
        except UnicodeDecodeError:
            continue
        pending = b""
    if pending:
        pieces.append(pending.decode("utf-8", "replace"))
    return pieces


def _content_tokens(content: Any, model: str) -> int:
    if isinstance(content, str):
        return tokens(content)
    total = 0
    for part in content or []:
        if part.get("type") == "text":
            total += tokens(part.get("text", ""))
        elif part.get("type") == "image_url":
            image = part.get("image_url") or {}
            total += openai_image_tokens(model, ImagePart(image.get("url", ""), image.get("detail")))
    return total


def _tools_tokens(tools: list[dict[str, Any]]) -> int:
    total = 0
    for tool in tools:
        fn = tool.get("function") or {}
        total += 7
        desc = (fn.get("description") or "").removesuffix(".")
        total += tokens(f"{fn.get('name', '')}:{desc}")
        properties = (fn.get("parameters") or {}).get("properties") or {}
        if properties:
            total += 3
            for key, prop in properties.items():
                prop = prop if isinstance(prop, dict) else {}
                total += 3
                if prop.get("enum"):
                    total += -3 + sum(3 + tokens(str(item)) for item in prop["enum"])
                p_desc = str(prop.get("description") or "").removesuffix(".")
                total += tokens(f"{key}:{prop.get('type', '')}:{p_desc}")
    return total + 12 if tools else 0


def prompt_tokens(payload: dict[str, Any]) -> int:
    """The prompt tokens a vendor bills for a Chat Completions request body."""
    model = str(payload.get("model", ""))
    total = 3  # priming the reply
    for message in payload.get("messages") or []:
        total += 3
        for key, value in message.items():
            if key == "content":
                total += _content_tokens(value, model)
            elif key == "tool_calls":
                for call in value or []:
                    fn = call.get("function") or {}
                    total += 3 + tokens(fn.get("name", "")) + tokens(fn.get("arguments", "")) + tokens(call.get("id", ""))
            elif isinstance(value, str):
                total += tokens(value)
                if key == "name":
                    total += 1
    total += _tools_tokens(payload.get("tools") or [])
    response_format = payload.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        schema = (response_format.get("json_schema") or {})
        total += 8 + tokens(json.dumps(schema, separators=(",", ":")))
    return total
