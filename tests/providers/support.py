"""What every HTTP adapter's tests do the same way: a configuration with the tests' timeouts,
a stream run to its end (or to the UpstreamError that ends it), the text it gave, and the
check that an error never shows the key. Each test module binds these to its own model, key
and request (its `provider_for`, `run`, `assert_no_key`)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from switchboard.core.catalog import ModelSpec
from switchboard.core.config import ProviderConfig
from switchboard.core.errors import UpstreamError
from switchboard.core.types import ChatRequest, StreamEvent, TextDelta
from switchboard.providers.base import Provider

TIMEOUTS: dict[str, object] = {"connect_timeout_s": 2.0, "read_timeout_s": 5.0, "total_timeout_s": 20.0}


def provider_config(fields: Mapping[str, object], overrides: Mapping[str, object]) -> ProviderConfig:
    """`fields` (name, kind, base_url, api_key_env) with the tests' timeouts; `overrides` win over both."""
    return ProviderConfig(**{**fields, **TIMEOUTS, **overrides})  # type: ignore[arg-type]


async def collect(provider: Provider, model: ModelSpec, request: ChatRequest) -> tuple[list[StreamEvent], BaseException | None]:
    """Every event the stream yielded, and the UpstreamError that ended it (if any); the
    provider is closed afterwards."""
    events: list[StreamEvent] = []
    try:
        async for event in provider.stream(model, request):
            events.append(event)
    except UpstreamError as exc:
        return events, exc
    finally:
        await provider.aclose()
    return events, None


def run(provider: Provider, model: ModelSpec, request: ChatRequest) -> tuple[list[StreamEvent], BaseException | None]:
    return asyncio.run(collect(provider, model, request))


def text_of(events: list[StreamEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def assert_no_key(exc: BaseException, key: str) -> None:
    for text in (str(exc), repr(exc), getattr(exc, "message", "")):
        assert key not in text
    cause = exc.__cause__
    if cause is not None:
        assert key not in str(cause) and key not in repr(cause)
