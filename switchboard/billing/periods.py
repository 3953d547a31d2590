"""Monthly allowance periods, anchored on the day the user joined (like a billing anchor)."""

from __future__ import annotations

import calendar
from datetime import datetime, timezone

DAY_MS = 86_400_000


def _add_months(anchor: datetime, months: int) -> datetime:
    index = anchor.month - 1 + months
    year, month = anchor.year + index // 12, index % 12 + 1
    day = min(anchor.day, calendar.monthrange(year, month)[1])
    return anchor.replace(year=year, month=month, day=day)


def period_bounds(anchor_ms: int, now_ms: int) -> tuple[int, int]:
    """The [start, end) of the monthly period that contains `now_ms`, in epoch ms."""
    anchor = datetime.fromtimestamp(anchor_ms / 1000, tz=timezone.utc)
    now = datetime.fromtimestamp(now_ms / 1000, tz=timezone.utc)
    months = max(0, (now.year - anchor.year) * 12 + now.month - anchor.month)
    start = _add_months(anchor, months)
    if start > now and months > 0:
        months -= 1
        start = _add_months(anchor, months)
    end = _add_months(anchor, months + 1)
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)
