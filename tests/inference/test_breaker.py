"""The circuit breaker: one user's failures trip only that user's attempts; the provider is
skipped for everyone only when several users see it fail."""

from __future__ import annotations

from switchboard.inference.resilience import BreakerPolicy, CircuitBreaker, UserHealth


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(**policy: float) -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    return CircuitBreaker(BreakerPolicy(**policy), clock=clock), clock  # type: ignore[arg-type]


def test_one_users_failures_never_open_the_breaker_for_others() -> None:
    b, _ = breaker(failures=5, min_users=3)
    for _ in range(50):
        b.record_failure(7)
    assert b.state == "closed"
    assert b.allow(8) and b.permits(8)  # everyone else still goes through
    assert not b.allow(7) and not b.permits(7)  # the user's own attempts are skipped
    assert b.reason(7) == "your recent requests to it failed repeatedly"
    assert 0 < b.retry_in_s(7) <= 30 and b.retry_in_s(8) == 0


def test_faults_from_several_users_open_it_for_everyone() -> None:
    b, _ = breaker(failures=5, min_users=3)
    for user in (1, 1, 2, 2, 3):
        assert b.state == "closed"
        b.record_failure(user)
    assert b.state == "open"
    assert not b.allow(99) and b.retry_in_s(99) == 30
    assert b.reason(99) == "it is failing for several users"


def test_each_user_counts_for_a_share_only() -> None:
    """One user's many failures plus one each from two others are not enough evidence."""
    b, _ = breaker(failures=5, min_users=3)
    for _ in range(10):
        b.record_failure(1)
    b.record_failure(2)
    b.record_failure(3)
    assert b.state == "closed"  # 2 (user 1's share) + 1 + 1 < 5
    b.record_failure(2)
    assert b.state == "open"


def test_request_faults_do_not_count() -> None:
    b, _ = breaker(failures=2, min_users=1)
    for user in range(10):
        b.record_failure(user, provider_fault=False)  # e.g. the upstream refused a bad request (400)
    assert b.state == "closed" and all(b.permits(u) for u in range(10))


def test_old_faults_leave_the_window_and_a_success_clears_them() -> None:
    b, clock = breaker(failures=3, min_users=3, window_s=60)
    b.record_failure(1)
    b.record_failure(2)
    clock.now += 61
    b.record_failure(3)
    assert b.state == "closed"  # the first two are outside the window
    b.record_failure(4)
    b.record_success(5)
    b.record_failure(6)
    assert b.state == "closed"  # a success in between: the provider works


def test_half_open_one_trial_success_closes() -> None:
    b, clock = breaker(failures=3, min_users=3, cooldown_s=30)
    for user in (1, 2, 3):
        b.record_failure(user)
    clock.now += 31
    assert b.state == "half-open"
    assert b.allow(10)  # the trial
    assert not b.allow(11)  # one at a time
    b.record_success(10)
    assert b.state == "closed" and b.allow(11)


def test_half_open_one_user_cannot_keep_it_open() -> None:
    b, clock = breaker(failures=3, min_users=3, cooldown_s=30)
    for user in (1, 2, 3):
        b.record_failure(user)
    clock.now += 31
    assert b.allow(66)
    b.record_failure(66)  # the trial failed...
    assert b.state == "half-open"  # ...but one user's failed trial does not re-open it
    assert not b.allow(66)  # that user gets no second trial
    assert b.allow(67)  # another user's request is the next trial
    b.record_failure(67)
    assert b.allow(68)
    b.record_failure(68)
    assert b.state == "open"  # failed trials of three users: still an outage, another cool-down


def test_a_lost_trial_frees_its_slot_after_a_cooldown() -> None:
    b, clock = breaker(failures=1, min_users=1, cooldown_s=30)
    b.record_failure(1)
    clock.now += 31
    assert b.allow(2)  # its client goes away: no outcome is ever recorded
    assert not b.allow(3)
    clock.now += 31
    assert b.allow(3)


def test_a_users_own_breaker_lets_them_try_again_after_the_cooldown() -> None:
    b, clock = breaker(failures=3, min_users=3, cooldown_s=30, window_s=60)
    for _ in range(3):
        b.record_failure(1)
    assert not b.allow(1)
    clock.now += 31
    assert b.allow(1)  # one more try
    b.record_failure(1)
    assert not b.allow(1)  # failed again: skipped again
    clock.now += 31
    assert b.allow(1)
    b.record_success(1)
    assert b.allow(1)


def test_disabled_breaker_always_allows() -> None:
    b, _ = breaker(failures=0)
    for user in range(20):
        b.record_failure(user)
    assert b.state == "closed" and b.allow(1)


def test_memory_is_bounded() -> None:
    b, _ = breaker(failures=2, min_users=1000, max_tracked_users=100)
    for user in range(10_000):
        b.record_failure(user)
        b.record_failure(user)
    assert len(b._faults) <= 100 and len(b._blocked) <= 100


def test_user_health_is_the_routers_view_for_one_user() -> None:
    b, _ = breaker(failures=2, min_users=3)
    b.record_failure(1)
    b.record_failure(1)
    health = UserHealth({"p": b}, 1, lambda model: 12.0)
    assert not health.available("p") and health.retry_in_s("p") > 0
    assert UserHealth({"p": b}, 2, lambda model: None).available("p")
    assert health.available("unknown") and health.latency_ms("m") == 12.0
