"""Discord's HTTP API (https://discord.com/developers/docs/reference), as the adapter calls it,
within Discord's rate limits.

Discord says how much of each limit is left on every answer (`X-RateLimit-Remaining`,
`X-RateLimit-Reset-After`, `X-RateLimit-Bucket`; per route and per top-level resource: a
channel, a webhook) and answers 429 with `retry_after` (seconds, in the body and `Retry-After`)
when one is exceeded, `global: true` (or `X-RateLimit-Scope: global`) for the limit on all of a
bot's requests. So a request whose bucket is known to be empty waits for its reset, briefly,
or is not made at all and handed back to the outbox to try again after the reset; a 429 is
never retried sooner than Discord asked. Per process: processes that share a bot share its
limits at Discord, and the 429s that follow are honoured the same way.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import httpx

from switchboard.channels.base import SendResult, transport_failure

WAIT_AT_MOST_S = 2.0  # a bucket that resets sooner is waited for; later, the outbox retries then
_INTERACTION_CODES = {10015, 50027}  # Unknown Webhook, Invalid Webhook Token: the interaction's token


@dataclass(slots=True)
class Answer:
    """What a call got back: the response (None: no answer) and, where it failed, why."""

    response: httpx.Response | None
    result: SendResult

    @property
    def body(self) -> dict[str, Any]:
        if self.response is None:
            return {}
        try:
            body = self.response.json()
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {}

    @property
    def code(self) -> int | None:
        """Discord's JSON error code (50035 Invalid Form Body, 10015 Unknown Webhook...)."""
        code = self.body.get("code")
        return code if isinstance(code, int) else None

    @property
    def token_gone(self) -> bool:
        """An interaction's webhook that does not (or no longer) exist(s)."""
        return self.response is not None and self.response.status_code in (401, 404) and (
            self.code in _INTERACTION_CODES or self.code is None)


class RateLimits:
    """What Discord said about its limits: per (bucket, resource), and the global one."""

    def __init__(self) -> None:
        self._bucket_of: dict[str, str] = {}  # route -> Discord's bucket id
        self._resets: dict[tuple[str, str], float] = {}  # (bucket, resource) -> monotonic time it refills
        self._global_until = 0.0

    def _key(self, route: str, resource: str) -> tuple[str, str]:
        return self._bucket_of.get(route, route), resource

    def wait_s(self, route: str, resource: str) -> float:
        """How long before a request on this route may go (0: now)."""
        now = time.monotonic()
        until = max(self._global_until, self._resets.get(self._key(route, resource), 0.0))
        return max(0.0, until - now)

    def learn(self, route: str, resource: str, response: httpx.Response) -> float | None:
        """Read the answer's headers; the retry_after of a 429 (seconds), else None."""
        headers, now = response.headers, time.monotonic()
        bucket = headers.get("x-ratelimit-bucket")
        if bucket:
            self._bucket_of[route] = bucket
        key = self._key(route, resource)
        remaining, reset_after = _number(headers.get("x-ratelimit-remaining")), _number(
            headers.get("x-ratelimit-reset-after"))
        if remaining is not None and remaining <= 0 and reset_after is not None:
            self._resets[key] = now + reset_after
        else:
            self._resets.pop(key, None)
        if response.status_code != 429:
            return None
        body: dict[str, Any] = {}
        try:
            parsed = response.json()
            body = parsed if isinstance(parsed, dict) else {}
        except ValueError:
            pass
        retry_after = _number(body.get("retry_after")) or _number(headers.get("retry-after")) or 1.0
        if body.get("global") is True or headers.get("x-ratelimit-global") or headers.get("x-ratelimit-scope") == "global":
            self._global_until = max(self._global_until, now + retry_after)
        else:
            self._resets[key] = max(self._resets.get(key, 0.0), now + retry_after)
        return retry_after


class DiscordREST:
    """Calls to Discord's API with the bot's token (`Authorization: Bot ...`), or without it for
    an interaction's webhook (its token is in the path)."""

    def __init__(self, client: httpx.AsyncClient, base_url: str, token: str) -> None:
        self.client = client
        self.base = base_url.rstrip("/")
        self._auth = {"Authorization": f"Bot {token}"}
        self.limits = RateLimits()

    async def call(self, method: str, route: str, resource: str, path: str, *, json: Any = None,
                   bot_auth: bool = True, params: dict[str, str] | None = None) -> Answer:
        """One request on `route` (its template, e.g. "POST /channels/{id}/messages"), for the
        top-level `resource` its limits are counted on. Never raises for the network."""
        wait = self.limits.wait_s(route, resource)
        if wait > WAIT_AT_MOST_S:
            return Answer(None, SendResult(False, error="Discord's rate limit: waiting for its reset", retryable=True,
                                           retry_after_s=wait))
        if wait:
            await asyncio.sleep(wait)
        try:
            response = await self.client.request(method, self.base + path, json=json, params=params,
                                                 headers=self._auth if bot_auth else None)
        except httpx.HTTPError as exc:
            return Answer(None, transport_failure(exc))
        retry_after = self.limits.learn(route, resource, response)
        if 200 <= response.status_code < 300:
            return Answer(response, SendResult(True))
        answer = Answer(response, SendResult(False))
        detail = answer.body.get("message") or response.reason_phrase or "error"
        error = f"HTTP {response.status_code}" + (f" ({answer.code})" if answer.code else "") + f": {detail}"
        if retry_after is not None:
            answer.result = SendResult(False, error=error, retryable=True, retry_after_s=retry_after)
        else:  # 5xx (and a proxy's page in place of Discord's JSON): transient; 4xx: final
            answer.result = SendResult(False, error=error, retryable=response.status_code >= 500 or not answer.body)
        return answer


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None
