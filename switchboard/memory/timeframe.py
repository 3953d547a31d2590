"""Time in a question about the past: "what did I do last weekend", "in May", "3 days ago".

`timeframe(query, now, zone)` finds the first expression of a period in the query and returns
it as a range of epoch milliseconds in the user's time zone (weeks start on Monday, a weekend is
Saturday and Sunday), with the words it read, so that search can favour what happened then and
leave those words out of the keyword query. A question with no period gets None: search then
ranks by relevance alone (and the memories' dates, shown with them, answer "when").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

MONTHS = {m: i + 1 for i, m in enumerate(("january", "february", "march", "april", "may", "june", "july", "august",
                                          "september", "october", "november", "december"))}
MONTHS.update({m[:3]: i for m, i in list(MONTHS.items())})
MONTHS["sept"] = 9
WEEKDAYS = {d: i for i, d in enumerate(("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"))}
_NUMBERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
            "nine": 9, "ten": 10, "couple of": 2, "few": 3}
_MONTH = r"(?P<month>" + "|".join(sorted(MONTHS, key=len, reverse=True)) + r")\.?"
_DAY = r"(?P<day>[0-3]?\d)(?:st|nd|rd|th)?"
_YEAR = r"(?P<year>(?:19|20)\d\d)"
_NUM = r"(?P<n>\d+|" + "|".join(_NUMBERS) + ")"

_PATTERNS: list[tuple[str, re.Pattern[str]]] = [(name, re.compile(rx, re.IGNORECASE)) for name, rx in (
    ("iso", r"\b(?P<year>(?:19|20)\d\d)-(?P<mon>[01]?\d)-(?P<day>[0-3]?\d)\b"),
    ("day_month_year", rf"\b{_DAY}\s+(?:of\s+)?{_MONTH},?\s+{_YEAR}\b"),
    ("month_day_year", rf"\b{_MONTH}\s+{_DAY},?\s+{_YEAR}\b"),
    ("month_year", rf"\b{_MONTH}\s+(?:of\s+)?{_YEAR}\b"),
    ("day_month", rf"\b{_DAY}\s+(?:of\s+)?{_MONTH}\b"),
    ("month_day", rf"\b{_MONTH}\s+{_DAY}\b(?!\s*(?:am|pm|:))"),
    ("ago", rf"\b{_NUM}\s+(?P<unit>day|week|month|year)s?\s+ago\b"),
    ("day_before_yesterday", r"\bthe\s+day\s+before\s+yesterday\b"),
    ("yesterday", r"\byesterday\b|\blast\s+night\b"),
    ("today", r"\btoday\b|\btonight\b|\bthis\s+(?:morning|afternoon|evening)\b"),
    ("weekend", r"\b(?P<which>this|last|past)\s+weekend\b"),
    ("week", r"\b(?P<which>this|last|past|previous)\s+week\b"),
    ("month", r"\b(?P<which>this|last|past|previous)\s+month\b"),
    ("year", r"\b(?P<which>this|last|past|previous)\s+year\b"),
    ("weekday", r"\b(?:(?P<which>last|this|on|past)\s+)?(?P<weekday>monday|tuesday|wednesday|thursday|friday|saturday"
                r"|sunday)\b"),
    ("in_month", rf"\b(?:in|during|since)\s+{_MONTH}\b"),
    ("in_year", rf"\b(?:in|during|since)\s+{_YEAR}\b"),
    ("recently", r"\brecently\b|\blately\b|\bthese\s+days\b"),
)]


@dataclass(frozen=True, slots=True)
class TimeFrame:
    start_ms: int
    end_ms: int  # exclusive
    words: str  # the expression as written in the query

    def contains(self, ms: int) -> bool:
        return self.start_ms <= ms < self.end_ms


def timeframe(query: str, now: datetime, zone: str = "UTC") -> TimeFrame | None:
    """The period the query speaks of, or None."""
    try:
        tz = ZoneInfo(zone)
    except (KeyError, ValueError):
        tz = ZoneInfo("UTC")
    today = now.astimezone(tz).date()
    best: tuple[int, TimeFrame] | None = None
    for name, pattern in _PATTERNS:
        match = pattern.search(query)
        if match is None:
            continue
        span = _span(name, match, today)
        if span is None:
            continue
        start, end = span
        frame = TimeFrame(_ms(start, tz), _ms(end, tz), match.group(0))
        if best is None or match.start() < best[0]:
            best = (match.start(), frame)
        break  # patterns are ordered most specific first
    return None if best is None else best[1]


def _ms(day: date, tz: ZoneInfo) -> int:
    return int(datetime.combine(day, time.min, tz).timestamp() * 1000)


def _month_start(year: int, month: int) -> date:
    return date(year + (month - 1) // 12, (month - 1) % 12 + 1, 1)


def _span(name: str, m: re.Match[str], today: date) -> tuple[date, date] | None:
    groups = m.groupdict()
    which = (groups.get("which") or "").lower()
    try:
        if name == "iso":
            day = date(int(m["year"]), int(m["mon"]), int(m["day"]))
            return day, day + timedelta(days=1)
        if name in ("day_month_year", "month_day_year"):
            day = date(int(m["year"]), MONTHS[m["month"].lower()], int(m["day"]))
            return day, day + timedelta(days=1)
        if name == "month_year":
            start = date(int(m["year"]), MONTHS[m["month"].lower()], 1)
            return start, _month_start(start.year, start.month + 1)
        if name in ("day_month", "month_day"):
            day = date(today.year, MONTHS[m["month"].lower()], int(m["day"]))
            if day > today:
                day = day.replace(year=today.year - 1)
            return day, day + timedelta(days=1)
    except ValueError:  # 31 February
        return None
    if name == "ago":
        raw = m["n"].lower()
        n = int(raw) if raw.isdigit() else _NUMBERS[raw]
        unit = m["unit"].lower()
        if unit == "day":
            day = today - timedelta(days=n)
            return day - timedelta(days=1), day + timedelta(days=2)  # people round: a day either side
        if unit == "week":
            day = today - timedelta(weeks=n)
            return day - timedelta(days=4), day + timedelta(days=4)
        if unit == "month":
            start = _month_start(today.year, today.month - n)
            return _month_start(start.year, start.month - 1) + timedelta(days=15), _month_start(start.year, start.month + 1) + timedelta(days=15)
        return date(today.year - n, 1, 1), date(today.year - n + 1, 1, 1)
    if name == "day_before_yesterday":
        day = today - timedelta(days=2)
        return day, day + timedelta(days=1)
    if name == "yesterday":
        return today - timedelta(days=1), today
    if name == "today":
        return today, today + timedelta(days=1)
    if name == "weekend":
        saturday = today - timedelta(days=(today.weekday() - 5) % 7)  # the latest Saturday, today included
        if which in ("last", "past") and today.weekday() >= 5:
            saturday -= timedelta(weeks=1)
        return saturday, saturday + timedelta(days=2)
    if name == "week":
        monday = today - timedelta(days=today.weekday())
        if which != "this":
            monday -= timedelta(weeks=1)
        return monday, monday + timedelta(weeks=1)
    if name == "month":
        start = _month_start(today.year, today.month - (0 if which == "this" else 1))
        return start, _month_start(start.year, start.month + 1)
    if name == "year":
        year = today.year - (0 if which == "this" else 1)
        return date(year, 1, 1), date(year + 1, 1, 1)
    if name == "weekday":
        back = (today.weekday() - WEEKDAYS[m["weekday"].lower()]) % 7
        if back == 0 and which in ("last", "past"):
            back = 7
        day = today - timedelta(days=back)
        return day, day + timedelta(days=1)
    if name == "in_month":
        month = MONTHS[m["month"].lower()]
        year = today.year if month <= today.month else today.year - 1
        return date(year, month, 1), _month_start(year, month + 1)
    if name == "in_year":
        year = int(m["year"])
        return date(year, 1, 1), date(year + 1, 1, 1)
    if name == "recently":
        return today - timedelta(days=14), today + timedelta(days=1)
    return None
