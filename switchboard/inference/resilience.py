"""Surviving provider failures: retries with jittered backoff, and a circuit breaker per provider.

Only failures before any output are retried or sent elsewhere (the client has seen nothing);
`MeteredCall.events` enforces that. The policy here decides *whether and when* to retry the
same model: a 429 is retried after the upstream's Retry-After (if that is short), a 5xx or a
lost connection after a jittered exponential backoff, a time-out never (the next candidate
gets the time instead). A provider that keeps failing is skipped for a cool-down, so requests
fall back at once instead of each waiting for the failure.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from switchboard.core.errors import UpstreamError, UpstreamTimeout


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts_per_model: int = 2  # tries of one model before falling back (1 = no retry)
    backoff_base_s: float = 0.2
    backoff_max_s: float = 2.0
    max_retry_after_s: float = 5.0  # a longer Retry-After means: fall back now instead

    def delay_before_retry(self, error: UpstreamError, attempt: int, rng: random.Random) -> float | None:
        """Seconds to wait before trying the same model again, or None to move on."""
        if not error.retryable or isinstance(error, UpstreamTimeout) or attempt >= self.attempts_per_model:
            return None
        if error.upstream_status == 429:
            wait = error.retry_after_s if error.retry_after_s is not None else self.backoff_base_s * 2 ** attempt
            return wait if wait <= self.max_retry_after_s else None
        if error.upstream_status is not None and error.upstream_status < 500:
            return None  # 401/403/404: a configuration problem; another provider may do
        # "Full jitter" backoff: spreads retries of many clients hitting one failing upstream.
        return rng.uniform(0, min(self.backoff_max_s, self.backoff_base_s * 2 ** attempt))


class CircuitBreaker:
    """Closed -> open after `threshold` consecutive failures -> half-open after `cooldown_s`
    (one trial call; success closes, failure opens again). Per provider, per process."""

    def __init__(self, threshold: int = 5, cooldown_s: float = 30.0) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.failures = 0
        self.opened_at: float | None = None
        self._trial_running = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if time.monotonic() - self.opened_at >= self.cooldown_s else "open"

    def allow(self) -> bool:
        state = self.state
        if state == "closed":
            return True
        if state == "half-open" and not self._trial_running:
            self._trial_running = True
            return True
        return False

    def record_success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self._trial_running = False

    def record_failure(self) -> None:
        self.failures += 1
        self._trial_running = False
        if self.threshold > 0 and (self.failures >= self.threshold or self.opened_at is not None):
            self.opened_at = time.monotonic()

    def retry_in_s(self) -> float:
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.cooldown_s - (time.monotonic() - self.opened_at))
