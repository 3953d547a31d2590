"""Idempotency-Key, as Stripe does it: a request retried with the key of one that completed
gets the first one's response again (for 24 hours), marked `Idempotent-Replayed: true`, and is
not charged again.

- The same key with another body (or on another endpoint) is 422 `idempotency_key_reused`.
- 409 while the first is still running, and for a stream (a stream cannot be replayed); the
  message names the first request's id.
- A request that failed without an answer and charged nothing (502, 402, 503...) leaves no
  record: retrying with the key runs it again, as clients that retry with the same key expect.
- Keys are per user: another user's identical key is another record.

The stored response (status, headers, body) is the user's content: it is encrypted with the
user's data key (switchboard.crypto), bound to its row, before it reaches the database.
Requests without a key do none of this (no database work on the hot path).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson
from sqlalchemy import Engine
from starlette.requests import Request
from starlette.responses import Response

from switchboard.core.config import Settings
from switchboard.core.errors import DuplicateRequest, IdempotencyKeyReused, InvalidRequest, SwitchboardError
from switchboard.crypto import Binding, CryptoError, KeyRing, keyring_for
from switchboard.inference.metered import MeteredCall
from switchboard.store import idempotency as records
from switchboard.store.runner import TransactionRunner

log = logging.getLogger(__name__)

KEY_HEADERS = ("idempotency-key", "x-request-id")
_TABLE = records.idempotency_keys.name
# Headers of the stored response that a replay repeats (the body's length is recomputed).
_NOT_REPLAYED = frozenset({"content-length", "date", "server"})


def idempotency_key_of(request: Request) -> str | None:
    """The client's Idempotency-Key (or X-Request-Id), if it sent one."""
    for header in KEY_HEADERS:
        value = request.headers.get(header)
        if value:
            if len(value) > 100 or not value.isprintable():
                raise InvalidRequest(f"{header} must be at most 100 printable characters", param=header)
            return value
    return None


def fingerprint(endpoint: str, body: bytes) -> str:
    """The request, for telling a retry from another request under the same key: the body as
    canonical JSON (key order and spacing do not matter), and the endpoint."""
    try:
        canonical = orjson.dumps(orjson.loads(body), option=orjson.OPT_SORT_KEYS)
    except (ValueError, TypeError):  # not JSON orjson can round-trip: the bytes as they came
        canonical = body
    return hashlib.sha256(endpoint.encode() + b"\x00" + canonical).hexdigest()


@dataclass(frozen=True, slots=True)
class Attempt:
    """A request that runs under a key: its ledger request id, and its record to complete."""

    user_id: int
    key: str
    row_id: int
    attempt: int
    request_id: str


def replayed(response: Response) -> Response:
    response.headers["idempotent-replayed"] = "true"
    return response


class Idempotency:
    def __init__(self, settings: Settings, engine: Engine, runner: TransactionRunner,
                 keyring: KeyRing | None = None) -> None:
        self.keyring = keyring or keyring_for(settings, engine)
        self.runner = runner
        self.ttl_ms = settings.idempotency.ttl_s * 1000
        self.purge_interval_s = settings.idempotency.purge_interval_s
        self._next_purge = 0.0

    async def claim(self, user_id: int, key: str, endpoint: str, body: bytes, stream: bool) -> Attempt | Response:
        """An `Attempt` to run, or the replayed response; raises 409 / 422 as the module says."""
        self.purge_soon()
        outcome: records.Claim = await self.runner.run(
            lambda conn: records.claim(conn, user_id=user_id, key=key, endpoint=endpoint,
                                       fingerprint=fingerprint(endpoint, body), stream=stream,
                                       now_ms=_now_ms(), ttl_ms=self.ttl_ms),
            order_key=user_id,
        )
        first = outcome.request_id
        if outcome.outcome == "run":
            return Attempt(user_id, key, outcome.row_id, outcome.attempt, outcome.request_id)
        if outcome.outcome == "replay":
            assert outcome.response is not None
            return replayed(await self._open(user_id, outcome.row_id, outcome.response))
        if outcome.outcome == "reused":
            raise IdempotencyKeyReused(
                "This Idempotency-Key was already used with a different request (body or endpoint); "
                "use a new key for a new request.", param="idempotency-key")
        if outcome.outcome == "running":
            raise DuplicateRequest(
                f"A request with this Idempotency-Key is still running (request id {first!r}); "
                f"retry once it has completed to get its response.", param="idempotency-key",
                code="idempotency_key_in_use")
        if outcome.outcome == "stream":
            raise DuplicateRequest(
                f"This Idempotency-Key was used by a streaming request (request id {first!r}), whose "
                f"answer cannot be replayed; it is not run or charged again.", param="idempotency-key")
        raise DuplicateRequest(
            f"The request with this Idempotency-Key (request id {first!r}) was charged, but its answer "
            f"was not kept (its server stopped); it is not run or charged again.", param="idempotency-key")

    async def complete(self, attempt: Attempt, response: Response) -> None:
        """Keep `response` (encrypted) for replays. A failure to keep it is logged, never
        passed on: the client still gets the answer it paid for."""
        try:
            await self.keyring.prepare(attempt.user_id)
            headers = {k: v for k, v in response.headers.items() if k not in _NOT_REPLAYED}
            plain = orjson.dumps({"status": response.status_code, "headers": headers,
                                  "body": bytes(response.body).decode()})
            blob = self.keyring.encrypt(Binding(attempt.user_id, _TABLE, attempt.row_id, "response"), plain)
            now = _now_ms()
            await self.runner.run(lambda conn: records.complete(
                conn, row_id=attempt.row_id, attempt=attempt.attempt, response=blob, now_ms=now, ttl_ms=self.ttl_ms),
                order_key=attempt.user_id)
        except Exception:  # noqa: BLE001 - see the docstring
            log.exception("could not keep the response of request %s for replays", attempt.request_id)

    async def then_done(self, events: AsyncIterator[bytes], attempt: Attempt, call: MeteredCall) -> AsyncIterator[bytes]:
        """A stream's bytes; once it is sent (or cut off), its key's record is done: a stream is
        never replayed, later uses of the key get 409. Unless it failed before producing
        anything (an error event as its only content, charged nothing): then the key may be retried."""
        try:
            async for chunk in events:
                yield chunk
        finally:
            if call.delivered() is None and not any(a.get("outcome") == "ok" for a in call.attempts):
                self.release(attempt)
            else:
                now = _now_ms()
                self.runner.submit_nowait(lambda conn: records.complete(
                    conn, row_id=attempt.row_id, attempt=attempt.attempt, response=None, now_ms=now,
                    ttl_ms=self.ttl_ms), order_key=attempt.user_id)

    def release(self, attempt: Attempt) -> None:
        """The attempt failed with no answer, charging nothing: the key may be retried."""
        now = _now_ms()
        self.runner.submit_nowait(
            lambda conn: records.release(conn, row_id=attempt.row_id, attempt=attempt.attempt, now_ms=now),
            order_key=attempt.user_id)

    async def _open(self, user_id: int, row_id: int, blob: bytes) -> Response:
        try:
            await self.keyring.prepare(user_id)
            stored = orjson.loads(self.keyring.decrypt(Binding(user_id, _TABLE, row_id, "response"), blob))
        except CryptoError as exc:
            log.error("stored response of idempotency record %s cannot be read: %s", row_id, exc)
            raise SwitchboardError("The stored response for this Idempotency-Key cannot be read.") from None
        return Response(stored["body"].encode(), status_code=stored["status"], headers=stored["headers"])

    def purge_soon(self) -> None:
        """At most every `purge_interval_s`, delete expired records (queued; nobody waits for it)."""
        now = time.monotonic()
        if now < self._next_purge:
            return
        self._next_purge = now + self.purge_interval_s
        self.runner.submit_nowait(lambda conn: records.purge(conn, now_ms=_now_ms()))


def _now_ms() -> int:
    return int(time.time() * 1000)
