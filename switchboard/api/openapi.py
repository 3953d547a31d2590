"""The OpenAPI 3.1 schema served at /openapi.json, built from api.routes' table.

FastAPI describes only the routes it builds itself; Switchboard's are plain Starlette routes
(see api.routes), so the schema is put together here: each endpoint's query parameters (from the
objects that parse them), its body (the pydantic model it validates against, as JSON Schema),
its success media types, and its errors (OpenAI's shape, or Anthropic's for /v1/messages).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from switchboard.api.routes import ENDPOINTS, Endpoint
from switchboard.api.schemas import AnthropicErrorResponse, ErrorResponse

_REF = "#/components/schemas/{model}"
_SECURITY: dict[str, list[dict[str, list[str]]]] = {
    "bearer": [{"bearer": []}],
    "bearer or x-api-key": [{"bearer": []}, {"x-api-key": []}],
    "stripe signature": [],
    "telegram secret token": [],
    "whatsapp signature": [],
    "discord signature": [],
    "none": [],
}
_SIGNATURE_HEADERS = {
    "telegram secret token": (("X-Telegram-Bot-Api-Secret-Token", "The secret_token given to setWebhook"),),
    "whatsapp signature": (("X-Hub-Signature-256", "sha256=HMAC-SHA256(app secret, raw body), hex"),),
    "discord signature": (("X-Signature-Ed25519", "Ed25519 signature of timestamp + raw body, hex"),
                          ("X-Signature-Timestamp", "Unix seconds; more than 5 minutes off is refused")),
}
_SUCCESS_SCHEMAS: dict[str, dict[str, Any]] = {
    "application/json": {"type": "object"},
    "text/csv": {"type": "string"},
    "text/plain": {"type": "string"},
    # Each event's data: a JSON object (a chunk, an event, an error), or `[DONE]`.
    "text/event-stream": {"description": "Server-sent events, as the vendor's API streams them"},
}


def openapi_schema(title: str, version: str, summary: str) -> dict[str, Any]:
    models: list[type[BaseModel]] = [ErrorResponse, AnthropicErrorResponse]
    models += [e.body for e in ENDPOINTS if e.body is not None]
    refs, defs = models_json_schema([(m, "validation") for m in models], ref_template=_REF)
    ref = {model: refs[(model, "validation")] for model in models}
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in ENDPOINTS:
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = _operation(endpoint, ref)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "summary": summary},
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "An API key: Authorization: Bearer sb-..."},
                "x-api-key": {"type": "apiKey", "in": "header", "name": "x-api-key", "description": "Anthropic's header"},
            },
        },
    }


def _operation(e: Endpoint, ref: dict[type[BaseModel], dict[str, Any]]) -> dict[str, Any]:
    error_model = AnthropicErrorResponse if e.errors == "anthropic" else ErrorResponse
    error = {"content": {"application/json": {"schema": ref[error_model]}}}
    op: dict[str, Any] = {
        "summary": e.summary,
        "operationId": e.method.lower() + e.path.replace("/", "_"),
        "tags": [e.tag],
        "security": _SECURITY[e.auth],
        "parameters": [p.openapi() for p in e.params],
        "responses": {
            str(e.success): {"description": "Success",
                    "content": {media: {"schema": _SUCCESS_SCHEMAS[media]} for media in e.answers}},
            "413": {"description": "The request body is over this endpoint's limit (request_too_large)", **error},
            "429": {"description": "Too many requests; Retry-After says when to retry", **error},
            "default": {"description": f"An error, in {'Anthropic' if e.errors == 'anthropic' else 'OpenAI'}'s shape", **error},
        },
    }
    if e.idempotency_key:
        op["parameters"].append({
            "name": "Idempotency-Key", "in": "header", "required": False,
            "description": ("Your id for the request: a retry with the same key within 24 hours gets the first "
                            "response again (Idempotent-Replayed: true), never a second charge; another body is "
                            "422, a request still running or a stream 409"),
            "schema": {"type": "string", "minLength": 1, "maxLength": 100},
        })
    if e.auth == "stripe signature":
        op["parameters"].append({"name": "Stripe-Signature", "in": "header", "required": False,
                                 "description": "t=TIMESTAMP,v1=HMAC, as Stripe signs", "schema": {"type": "string"}})
    for name, description in _SIGNATURE_HEADERS.get(e.auth, ()):
        op["parameters"].append({"name": name, "in": "header", "required": False, "description": description,
                                 "schema": {"type": "string"}})
    if e.body is not None:
        op["requestBody"] = {"required": e.body_required, "content": {"application/json": {"schema": ref[e.body]}}}
    elif e.any_json_body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}
    return op
