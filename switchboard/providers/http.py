"""What every HTTP provider adapter shares: one pooled aiohttp session per provider, SSE
decoding, and the mapping of upstream HTTP failures onto our error contract.

Error contract (see providers/base.py): failures before any output are `retryable=True`
(the caller may retry or fall back), except client errors the same request would hit
anywhere; once output has been yielded they are `retryable=False`. API keys are read per
request from the environment and never put into a message, a log line or a repr.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import re
import time
from typing import Any

import aiohttp
import orjson

from switchboard.core.catalog import ModelSpec
from switchboard.core.config import ProviderConfig
from switchboard.core.errors import UpstreamError, UpstreamTimeout
from switchboard.core.types import ChatRequest
from switchboard.providers import tokenizers
from switchboard.providers.base import Provider
from switchboard.providers.prompt_tokens import PromptCounter, TokenCount, openai_compatible_counter

log = logging.getLogger(__name__)

# Client errors the same request will hit again anywhere; everything else (5xx, 429, and
# 401/403/404, which are our configuration's fault) may be retried or sent elsewhere.
NOT_RETRYABLE_STATUSES = frozenset({400, 413, 422})

MAX_ERROR_MESSAGE = 500  # characters of an upstream error message kept in ours
_DRAIN_AFTER_DONE_S = 0.25  # how long to wait for the body's end after the last event, to keep the connection


class SSEDecoder:
    """Splits a byte stream into the `data` payloads of Server-Sent Events.

    Per the SSE spec: lines end in LF (CRLF tolerated), an event ends at a blank line,
    several `data:` lines in one event are joined with LF, comments (`:`) and other
    fields (`event:`, `id:`, `retry:`) are ignored.
    """

    __slots__ = ("_buf", "_data")

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        buf = self._buf + chunk if self._buf else chunk
        lines = buf.split(b"\n")
        self._buf = lines.pop()  # the unterminated tail waits for the next read
        out: list[bytes] = []
        data = self._data
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if data:
                    out.append(data[0] if len(data) == 1 else b"\n".join(data))
                    data.clear()
            elif line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(b" ") else value)
        return out

    def flush(self) -> list[bytes]:
        """At end of stream: a last line without LF, and an event without its blank line."""
        out = self.feed(b"\n\n") if self._buf or self._data else []
        self._buf = b""
        return out


class HTTPProvider(Provider):
    """Base for adapters that talk to an HTTP API: session lifecycle and error mapping."""

    def __init__(self, config: ProviderConfig, default_base_url: str | None) -> None:
        base_url = config.base_url or default_base_url
        if not base_url:
            raise ValueError(f"provider {config.name!r} (kind {config.kind!r}) needs a base_url")
        self.config = config
        self.name = config.name
        self.kind = config.kind
        self.base_url = base_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, kind={self.kind!r}, base_url={self.base_url!r})"

    # -- counting tokens -----------------------------------------------------------------

    def prompt_counter(self, model: ModelSpec) -> PromptCounter:
        """This vendor's tokenizer (or stand-in) and framing for `model` (override per vendor;
        the default suits a server whose tokenizer we do not know)."""
        return openai_compatible_counter()

    def count_prompt(self, model: ModelSpec, request: ChatRequest) -> TokenCount:
        return self.prompt_counter(model).count(model.upstream_name, request)

    def count_prompt_tokens(self, model: ModelSpec, request: ChatRequest) -> int:
        return self.count_prompt(model, request).bound

    def count_text_tokens(self, model: ModelSpec, text: str) -> int:
        return self.prompt_counter(model).text.estimate(text) if text else 0

    def head_of_text(self, model: ModelSpec, text: str, tokens: int) -> str:
        return self.prompt_counter(model).text.head(text, tokens)

    def tokens_per_byte(self, model: ModelSpec) -> float:
        return self.prompt_counter(model).text.per_byte

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self.session()
        # Load the tokenizer now (a few tenths of a second), not in the first request.
        await asyncio.to_thread(tokenizers.encoding, "o200k_base")

    async def aclose(self) -> None:
        session, self._session, self._loop = self._session, None, None
        if session is not None and not session.closed:
            await session.close()

    def session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        session = self._session
        if session is not None and not session.closed and self._loop is loop:
            return session
        # One pooled session per provider and event loop; a session cannot cross loops.
        cfg = self.config
        connector = aiohttp.TCPConnector(
            limit=cfg.max_connections,
            limit_per_host=0,
            keepalive_timeout=30.0,
            ttl_dns_cache=300,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=cfg.total_timeout_s,
                sock_connect=cfg.connect_timeout_s,
                sock_read=cfg.read_timeout_s,
            ),
            raise_for_status=False,
            auto_decompress=True,
        )
        self._loop = loop
        return self._session

    async def open(self, url: str, body: bytes, headers: dict[str, str]) -> aiohttp.ClientResponse:
        """POST and wait for the status line. Nothing has been produced yet, so every failure
        here is retryable (a time-out as UpstreamTimeout)."""
        try:
            return await self.session().post(url, data=body, headers=headers)
        except TimeoutError as exc:  # includes aiohttp's connect/read timeout classes
            self._log_transport(exc, "timed out waiting for")
            raise UpstreamTimeout(f"{self.name}: timed out waiting for the upstream ({describe(exc)})") from exc
        except aiohttp.ClientResponseError as exc:  # carries request headers: do not chain
            raise UpstreamError(f"{self.name}: bad response from upstream (HTTP {exc.status})") from None
        except aiohttp.ClientError as exc:  # refused, DNS, reset, TLS
            self._log_transport(exc, "cannot reach")
            raise UpstreamError(f"{self.name}: cannot reach upstream ({describe(exc)})") from exc

    def _log_transport(self, exc: BaseException, what: str) -> None:
        """The whole story for the operator's log: clients get it without addresses (`describe`)."""
        log.warning("provider %s: %s %s: %s: %s", self.name, what, self.base_url, type(exc).__name__, exc)

    def raise_mid_stream(self, exc: BaseException, yielded: bool) -> None:
        """Map a transport failure while reading the stream (a stall, a reset, a broken body) to
        our error. Called only when the answer is not complete; `yielded` says whether the client
        may have seen output (then it is not retryable)."""
        self._log_transport(exc, "stream broke from")
        if isinstance(exc, TimeoutError):
            raise UpstreamTimeout(
                f"{self.name}: upstream stalled mid-stream ({describe(exc)})", retryable=not yielded
            ) from exc
        if isinstance(exc, aiohttp.ClientResponseError):  # carries request headers: do not chain
            raise UpstreamError(f"{self.name}: upstream stream broke", retryable=not yielded) from None
        raise UpstreamError(
            f"{self.name}: upstream connection lost mid-stream ({describe(exc)})", retryable=not yielded
        ) from exc

    def error_detail(self, body: Any) -> str:
        """The human message in an upstream error body (override per vendor)."""
        return error_message(body)

    async def status_error(self, resp: aiohttp.ClientResponse, key: str | None) -> UpstreamError:
        status = resp.status
        try:
            raw = await resp.read()
        except (aiohttp.ClientError, TimeoutError):
            raw = b""
        body: Any = None
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            detail = raw.decode("utf-8", "replace").strip()
        else:
            detail = self.error_detail(body)
        public = scrub(detail, key)
        if public != scrub_key(detail, key):
            log.warning("provider %s: HTTP %s from %s: %s", self.name, status, self.base_url, scrub_key(detail, key))
        detail = public[:MAX_ERROR_MESSAGE] or resp.reason or "no detail"
        message = f"{self.name}: upstream returned HTTP {status}: {detail}"
        error: UpstreamError
        if status in (504, 408):
            error = UpstreamTimeout(message, upstream_status=status)
        elif status >= 500:
            error = UpstreamError(message, upstream_status=status)
        else:
            error = UpstreamError(
                message,
                retryable=status not in NOT_RETRYABLE_STATUSES,
                upstream_status=status,
                retry_after_s=retry_after_s(resp.headers) if status == 429 else None,
            )
        return self.refine_error(error, status, body)

    def refine_error(self, error: UpstreamError, status: int, body: Any) -> UpstreamError:
        """What a vendor's error body says beyond its status and message (override per vendor);
        `body` is the parsed JSON, None when it was not JSON."""
        return error


def error_message(obj: Any) -> str:
    """The human message out of OpenAI's `{"error": {"message": ...}}` and common variants."""
    if isinstance(obj, dict):
        err = obj.get("error", obj)
        if isinstance(err, dict):
            for field in ("message", "detail", "msg"):
                if isinstance(err.get(field), str):
                    return err[field]
            return orjson.dumps(err).decode()
        if isinstance(err, str):
            return err
    return orjson.dumps(obj).decode() if obj is not None else ""


def scrub_key(text: str, key: str | None) -> str:
    # Some upstreams echo the key they rejected; never pass it on, not even to the log.
    return text.replace(key, "***") if key and key in text else text


# Where an upstream lives is the operator's business: URLs, host names with ports and IP
# addresses in what an upstream or the transport says are replaced before a client sees them
# (and kept in the log). Conservative: only forms that are addresses for certain.
_ADDRESSES = (
    re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>)\]]+"),  # URLs
    re.compile(r"(?i)(?<=\bhost )\[?[^\s\]]+\]?(?::\d+)?"),  # aiohttp: "Cannot connect to host H:P"
    re.compile(r"\('[^']*', \d+(?:, \d+)*\)"),  # a socket address tuple: ('10.0.0.5', 8081)
    re.compile(r"\[[0-9a-fA-F:.]*:[0-9a-fA-F:.]*\](?::\d+)?"),  # [IPv6]:port
    re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b"),  # IPv4, with a port or not
    re.compile(r"(?i)\b(?:localhost|(?:[a-z0-9-]+\.)+[a-z][a-z0-9-]*):\d{1,5}\b"),  # host:port
)


def scrub_addresses(text: str) -> str:
    for pattern in _ADDRESSES:
        text = pattern.sub("<address>", text)
    return text


def scrub(text: str, key: str | None) -> str:
    """Upstream text as a client may see it: without the key and without addresses."""
    return scrub_addresses(scrub_key(text, key))


def retry_after_s(headers: Any) -> float | None:
    """Seconds from `retry-after-ms` (OpenAI's precise form) or `Retry-After` (seconds or HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def describe(exc: BaseException) -> str:
    """A transport failure as a client may see it: its kind and message, addresses removed
    (`HTTPProvider._log_transport` logs the whole)."""
    text = scrub_addresses(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def drain(content: aiohttp.StreamReader) -> None:
    """Read to the body's end after [DONE] so the connection goes back to the pool; a server
    that keeps the body open just costs us that connection."""
    try:
        async with asyncio.timeout(_DRAIN_AFTER_DONE_S):
            while await content.readany():
                pass
    except (TimeoutError, aiohttp.ClientError):
        pass
