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
