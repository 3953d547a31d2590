"""The difficulty estimate the router uses, loaded once per process."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def load_difficulty() -> Callable[[str], float]:
    """The trained estimator's `score`, or (if its weights are missing) a constant 0, which
    routes on task class alone and says so in the log."""
    try:
        from switchboard.router.difficulty import DifficultyModel

        return DifficultyModel.load().score
    except (ImportError, OSError, ValueError) as exc:  # missing or stale weights
        log.warning("difficulty weights unavailable (%s): routing on task class only", exc)
        return lambda text: 0.0
