"""Per-user token-bucket rate limit, in process memory.

Each server process enforces the limit on its own; with several processes behind a balancer a
user gets up to N times the rate (a shared Redis limiter is the scale-out answer, not built yet).
"""

from __future__ import annotations

import time

from switchboard.core.errors import RateLimited


class TokenBuckets:
    def __init__(self, per_minute: int, burst: int) -> None:
        self.enabled = per_minute > 0
        self.rate = per_minute / 60.0
        self.capacity = float(max(burst, 1))
        self._buckets: dict[int, tuple[float, float]] = {}  # user id -> (tokens, last refill)

    def check(self, user_id: int) -> None:
        """Take one token or raise RateLimited with how long until one is available."""
        if not self.enabled:
            return
        now = time.monotonic()
        tokens, last = self._buckets.get(user_id, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[user_id] = (tokens, now)
            wait = (1.0 - tokens) / self.rate
            raise RateLimited(f"Rate limit reached: {int(self.rate * 60)} requests per minute. Retry in {wait:.1f}s.", wait)
        self._buckets[user_id] = (tokens - 1.0, now)


class FailureLimiter:
    """Failed authentications per client address: `per_minute` of them (a token bucket of that
    size, refilled over a minute), then 429 until the bucket refills. A flood of bad keys then
    costs a dictionary lookup each, not a database query. 0 disables it."""

    def __init__(self, per_minute: int, max_addresses: int = 100_000) -> None:
        self.enabled = per_minute > 0
        self.rate = per_minute / 60.0
        self.capacity = float(max(per_minute, 1))
        self._max = max_addresses
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, last refill)

    def check(self, address: str) -> None:
        """Raise RateLimited if `address` has used up its failures."""
        entry = self._buckets.get(address)
        if entry is None:
            return
        tokens = min(self.capacity, entry[0] + (time.monotonic() - entry[1]) * self.rate)
        if tokens < 1.0:
            wait = (1.0 - tokens) / self.rate
            raise RateLimited(
                f"Too many failed authentications from your address: {int(self.rate * 60)} a minute. "
                f"Retry in {wait:.0f}s with a valid API key.", wait)

    def failed(self, address: str) -> None:
        """Count one failed authentication from `address`."""
        if not self.enabled:
            return
        now = time.monotonic()
        tokens, last = self._buckets.get(address, (self.capacity, now))
        if len(self._buckets) >= self._max:
            self._buckets.clear()  # a flood from very many addresses: start over rather than grow
        self._buckets[address] = (max(0.0, min(self.capacity, tokens + (now - last) * self.rate) - 1.0), now)
