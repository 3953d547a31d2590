"""Requests on their way to the engine: one job each, waiting in a queue that is fair across accounts."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from switchboard.core.errors import UpstreamError


@dataclass(eq=False)
class Job:
    """One request: what to feed, how to sample, where the output goes. Compared by identity."""

    account: int | None
    prompt: list[int]  # every token to feed, the shared prefix included
    max_new_tokens: int
    temperature: float
    top_p: float
    stops: tuple[str, ...]
    openers: tuple[str, ...]
    emit: Callable[[tuple[Any, ...]], bool]  # returns False once the consumer's loop is gone
    seed: int = 0
    cancelled: threading.Event = field(default_factory=threading.Event)
    queued_at: float = field(default_factory=time.perf_counter)


class FairQueue:
    """Waiting jobs, one FIFO per account, handed out round-robin across accounts.

    The engine takes jobs without blocking while it is busy (`take_nowait`) and blocks on `wait`
    only when it has nothing to do; `put` wakes it.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._by_account: OrderedDict[int | None, deque[Job]] = OrderedDict()
        self._closed = False

    def put(self, job: Job) -> None:
        with self._cond:
            if self._closed:
                raise UpstreamError("the local model is shutting down", retryable=True)
            self._by_account.setdefault(job.account, deque()).append(job)
            self._cond.notify()

    def discard(self, job: Job) -> None:
        """Drop a job that has not started (its consumer went away)."""
        with self._cond:
            waiting = self._by_account.get(job.account)
            if waiting is not None and job in waiting:
                waiting.remove(job)
                if not waiting:
                    del self._by_account[job.account]

    def take_nowait(self, fits: Callable[[Job], bool] | None = None) -> Job | None:
        """The next job in turn, or None when none waits (or the queue is closed). A job that
        does not `fit` (yet) stays at the head of the queue: nothing overtakes it."""
        with self._cond:
            while self._by_account and not self._closed:
                account, waiting = next(iter(self._by_account.items()))
                job = waiting[0]
                if not job.cancelled.is_set() and fits is not None and not fits(job):
                    return None
                waiting.popleft()
                if waiting:
                    self._by_account.move_to_end(account)  # its next job waits for the others
                else:
                    del self._by_account[account]
                if not job.cancelled.is_set():
                    return job
            return None

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a job waits or the queue closes; False once closed."""
        with self._cond:
            if not self._by_account and not self._closed:
                self._cond.wait(timeout)
            return not self._closed

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        with self._cond:
            return sum(len(waiting) for waiting in self._by_account.values())

    def close(self) -> list[Job]:
        """Stop handing out jobs; return the ones still waiting."""
        with self._cond:
            self._closed = True
            left = [job for waiting in self._by_account.values() for job in waiting]
            self._by_account.clear()
            self._cond.notify_all()
            return left
