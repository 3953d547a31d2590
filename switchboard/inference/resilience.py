"""Surviving provider failures: retries with jittered backoff, and a circuit breaker per provider.

Only failures before any output are retried or sent elsewhere (the client has seen nothing);
`MeteredCall.events` enforces that. The policy here decides *whether and when* to retry the
same model: a 429 is retried after the upstream's Retry-After (if that is short), a 5xx or a
lost connection after a jittered exponential backoff, a time-out never (the next candidate
gets the time instead). A provider that keeps failing is skipped for a cool-down, so requests
fall back at once instead of each waiting for the failure.

The breaker must not let one tenant cause everyone's outage: a user whose requests make the
upstream fail (a prompt that crashes it, say) trips only that user's own attempts. The provider
is skipped for everyone only when its faults come from several distinct users (`BreakerPolicy`).
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Callable, Hashable
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


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When a provider's breaker opens.

    Only provider faults count (connection errors, time-outs, 429 and 5xx; a request the
    upstream refused as bad does not). The breaker opens for everyone when, with no success in
    between and within `window_s`, at least `failures` faults came from at least `min_users`
    distinct users, each user counting for at most ceil(failures / min_users) of them: one
    user's failures, however many, never suffice. A user with `failures` faults of their own in
    the window has only their own attempts skipped, for `cooldown_s`."""

    failures: int = 5  # 0 disables the breaker
    min_users: int = 3
    window_s: float = 60.0
    cooldown_s: float = 30.0
    max_tracked_users: int = 10_000  # users with recent faults remembered (memory bound)

    @property
    def per_user_share(self) -> int:
        return max(1, math.ceil(self.failures / max(1, self.min_users)))


User = Hashable  # a user id (None for work that is no user's)


class CircuitBreaker:
    """One provider's breaker, per process: closed -> open (the rule of `BreakerPolicy`) ->
    half-open after `cooldown_s`: one trial request at a time, each user at most one failed
    trial; a success closes it, failed trials of `min_users` distinct users open it again.
    Beside it, each user's own breaker (`failures` faults of theirs in the window)."""

    def __init__(self, policy: BreakerPolicy | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy or BreakerPolicy()
        self._clock = clock
        self._faults: dict[User, deque[float]] = {}  # user -> times of recent faults, oldest first
        self._blocked: dict[User, float] = {}  # user -> until when that user's attempts are skipped
        self.opened_at: float | None = None
        self._trial: tuple[User, float] | None = None  # (user, since) of the half-open trial
        self._failed_trials: set[User] = set()

    # -- state ---------------------------------------------------------------------------
    @property
    def state(self) -> str:
        """closed, open or half-open: the provider's state for everyone."""
        if self.opened_at is None:
            return "closed"
        return "half-open" if self._clock() - self.opened_at >= self.policy.cooldown_s else "open"

    def _blocked_until(self, user: User, now: float) -> float | None:
        until = self._blocked.get(user)
        if until is not None and now >= until:
            del self._blocked[user]  # the user's own half-open: one more fault blocks them again
            return None
        return until

    def permits(self, user: User) -> bool:
        """Whether `user`'s requests may be routed here now (takes no trial slot)."""
        if self.policy.failures <= 0:
            return True
        now = self._clock()
        if self._blocked and self._blocked_until(user, now) is not None:
            return False
        if self.opened_at is None:
            return True
        return now - self.opened_at >= self.policy.cooldown_s and user not in self._failed_trials

    def allow(self, user: User = None) -> bool:
        """Whether `user`'s attempt may run now; in half-open state it becomes the trial."""
        if not self.permits(user):
            return False
        if self.opened_at is None:
            return True
        now = self._clock()
        trial = self._trial
        # A trial whose outcome never came (its client left) stops holding the slot after a cool-down.
        if trial is not None and trial[0] != user and now - trial[1] < self.policy.cooldown_s:
            return False
        self._trial = (user, now)
        return True

    def retry_in_s(self, user: User = None) -> float:
        """Seconds until `user` may try this provider again (0: now)."""
        now = self._clock()
        waits = [0.0]
        if self._blocked and (until := self._blocked_until(user, now)) is not None:
            waits.append(until - now)
        if self.opened_at is not None:
            left = self.policy.cooldown_s - (now - self.opened_at)
            busy = user in self._failed_trials or (self._trial is not None and self._trial[0] != user)
            if left > 0:
                waits.append(left)
            elif busy:  # half-open, trial taken or failed for this user: soon closed (or open again)
                waits.append(min(self.policy.cooldown_s, 5.0))
        return max(waits)

    def reason(self, user: User = None) -> str:
        """Why `user`'s attempts are skipped, in words for an error message."""
        if self._blocked and self._blocked_until(user, self._clock()) is not None:
            return "your recent requests to it failed repeatedly"
        return "it is failing for several users"

    # -- outcomes ------------------------------------------------------------------------
    def record_success(self, user: User = None) -> None:
        """The provider answered: its faults so far no longer count (the rule is about faults
        with no success in between), and a half-open breaker closes."""
        if self._faults:
            self._faults.clear()
        if self._blocked:
            self._blocked.pop(user, None)
        if self.opened_at is not None or self._trial is not None:
            self.opened_at = None
            self._trial = None
            self._failed_trials.clear()

    def record_failure(self, user: User = None, *, provider_fault: bool = True) -> None:
        """An attempt of `user`'s failed. Only a provider fault counts; a request the upstream
        refused as bad only gives the trial slot back."""
        now = self._clock()
        trial = self._trial
        if trial is not None and trial[0] == user:
            self._trial = None
            if provider_fault and self.opened_at is not None:
                self._failed_trials.add(user)
                if len(self._failed_trials) >= max(1, self.policy.min_users):
                    self.opened_at = now  # still failing for several users: another cool-down
                    self._failed_trials.clear()
        if not provider_fault or self.policy.failures <= 0:
            return
        policy = self.policy
        faults = self._faults.get(user)
        if faults is None:
            if len(self._faults) >= policy.max_tracked_users:
                self._forget(now)
            faults = self._faults[user] = deque(maxlen=policy.failures)
        faults.append(now)
        if _recent(faults, now - policy.window_s) >= policy.failures:
            self._block(user, now)
        if self.opened_at is None and self._several_users_failing(now):
            self.opened_at = now
            self._trial = None
            self._failed_trials.clear()

    def _block(self, user: User, now: float) -> None:
        """Skip `user`'s own attempts for a cool-down (kept in order of blocking: oldest first)."""
        blocked = self._blocked
        blocked.pop(user, None)
        if len(blocked) >= self.policy.max_tracked_users:
            for old in [u for u, until in blocked.items() if until <= now]:
                del blocked[old]
            while len(blocked) >= self.policy.max_tracked_users:
                del blocked[next(iter(blocked))]  # the one whose block ends first
        blocked[user] = now + self.policy.cooldown_s

    def _several_users_failing(self, now: float) -> bool:
        policy = self.policy
        since, share = now - policy.window_s, policy.per_user_share
        users = counted = 0
        for faults in self._faults.values():
            recent = _recent(faults, since)
            if recent:
                users += 1
                counted += min(recent, share)
        return users >= max(1, policy.min_users) and counted >= policy.failures

    def _forget(self, now: float) -> None:
        """Make room: drop users with no fault in the window, else the longest-known one."""
        since = now - self.policy.window_s
        for user in [u for u, f in self._faults.items() if not f or f[-1] < since]:
            del self._faults[user]
        if len(self._faults) >= self.policy.max_tracked_users:
            del self._faults[next(iter(self._faults))]


def _recent(faults: deque[float], since: float) -> int:
    """How many of `faults` (times, oldest first) are at or after `since`; older ones are dropped."""
    while faults and faults[0] < since:
        faults.popleft()
    return len(faults)


class UserHealth:
    """The router's view of provider health for one user's request (router.Health): a provider
    is available unless its breaker is open for everyone or for this user."""

    __slots__ = ("_breakers", "_user", "latency_ms")

    def __init__(self, breakers: dict[str, CircuitBreaker], user: User,
                 latency_ms: Callable[[str], float | None]) -> None:
        self._breakers = breakers
        self._user = user
        self.latency_ms = latency_ms

    def available(self, provider: str) -> bool:
        breaker = self._breakers.get(provider)
        return breaker is None or breaker.permits(self._user)

    def retry_in_s(self, provider: str) -> float:
        breaker = self._breakers.get(provider)
        return 0.0 if breaker is None else breaker.retry_in_s(self._user)
