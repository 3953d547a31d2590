"""Reading "when" out of what people type: "in 10 minutes", "6pm tomorrow", "every Monday at 9".

One-off times are read by dateparser, in the user's time zone, preferring the future. Recurring
ones ("every ...", "daily ...", "weekdays at ...") are a small grammar of our own that becomes a
cron expression, because dateparser reads a single moment and has no notion of repetition;
croniter then finds each next run, on time-zone-aware datetimes, so that "every day at 9" stays
at 9 local time across daylight-saving changes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import dateparser
from croniter import croniter

# How many leading words `split_when` tries, longest first: more is slower and never needed.
_MAX_WHEN_WORDS = 9
_DAYS = {
    "monday": 1, "mon": 1, "tuesday": 2, "tue": 2, "tues": 2, "wednesday": 3, "wed": 3,
    "thursday": 4, "thu": 4, "thur": 4, "thurs": 4, "friday": 5, "fri": 5,
    "saturday": 6, "sat": 6, "sunday": 0, "sun": 0,
}
_DAY_NAMES = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")
_PARTS_OF_DAY = {"morning": (9, 0), "afternoon": (14, 0), "evening": (18, 0), "night": (21, 0),
                 "noon": (12, 0), "midday": (12, 0), "midnight": (0, 0)}
_DEFAULT_TIME = (9, 0)  # "every Monday" with no time: the start of a working day
_TIME = re.compile(r"^(?:at\s+)?(\d{1,2})(?:[:.h](\d{2}))?\s*(am|pm|a\.m\.|p\.m\.)?$")
_EVERY_N = re.compile(r"^(\d+)\s+(minute|min|hour|hr|day)s?$")
_ORDINAL = re.compile(r"^(?:on\s+)?(?:the\s+)?(\d{1,2})(?:st|nd|rd|th)?$")
_DATEPARSER_LANGUAGES = ["en"]
_FIXED = re.compile(r"\d+(?:,\d+)*")  # a cron field naming fixed values
_BARE_HOUR = re.compile(r"\b(at|by)\s+(\d{1,2})(?:[.h](\d{2}))?(?![\d:]|\s*(?:am\b|pm\b|a\.m\.|p\.m\.))")
_ELAPSED = re.compile(r"^(?:in|after)\s(?!.*\b(?:day|week|month|year)s?\b).*\b(?:sec|second|min|minute|hour|hr)s?\b")


class WhenError(ValueError):
    """The phrase is not a time we can schedule (unreadable, or in the past)."""


@dataclass(frozen=True, slots=True)
class Schedule:
    """When a reminder runs: its first time (UTC) and, if it repeats, a cron rule in the user's zone."""

    first_run: datetime
    recurrence: str | None = None
    description: str = ""

    def next_after(self, after: datetime, time_zone: str) -> datetime | None:
        """The run after `after` (UTC), or None for a one-off."""
        return None if self.recurrence is None else next_run(self.recurrence, time_zone, after)


def zone(name: str) -> ZoneInfo:
    """The IANA zone `name`; a clear error for an unknown one."""
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError) as exc:  # ZoneInfoNotFoundError is a KeyError
        raise WhenError(f"unknown time zone {name!r}; use an IANA name such as Europe/Paris") from exc


def next_run(recurrence: str, time_zone: str, after: datetime) -> datetime:
    """The first time strictly after `after` that the cron rule `recurrence` names, in UTC.

    A rule at fixed times of day ("0 9 * * 1") is read on the local wall clock: at 09:00 local
    whatever the offset; a time that a spring change skips runs when the clock has moved on by
    the skipped hour (02:30 -> 03:30), and one that an autumn change repeats runs once, at the
    first of the two (as cron does). A rule that repeats within the day (every N minutes or
    hours) runs by real time, every hour that passes, across both changes."""
    tz = zone(time_zone)
    minute, hour = recurrence.split()[:2]
    if not (_FIXED.fullmatch(minute) and _FIXED.fullmatch(hour)):
        return croniter(recurrence, after.astimezone(tz)).get_next(datetime).astimezone(timezone.utc)
    wall = croniter(recurrence, after.astimezone(tz).replace(tzinfo=None))
    while True:
        # fold=0: the first of a repeated time; a skipped one keeps the offset from before the change
        at = wall.get_next(datetime).replace(tzinfo=tz).astimezone(timezone.utc)
        if at > after:  # a repeated hour's first time may already be behind `after`
            return at


def parse_when(phrase: str, time_zone: str, now: datetime) -> Schedule | None:
    """The schedule `phrase` names (recurring or one-off), or None if it names no time.

    A one-off time that is not in the future is an error rather than None: the user did
    name a time, and silently reading more words into it would be wrong."""
    text = " ".join(phrase.lower().split())
    if not text:
        return None
    recurring = _recurring(text)
    if recurring is not None:
        rule, description = recurring
        return Schedule(next_run(rule, time_zone, now), rule, description)
    at = _one_off(text, time_zone, now)
    if at is None:
        return None
    if at <= now:
        raise WhenError(f"{phrase!r} is in the past")
    return Schedule(at, None, "")


def split_when(text: str, time_zone: str, now: datetime) -> tuple[Schedule, str] | None:
    """Split "in 1 minute call mum" into (schedule, "call mum"): the longest leading phrase that
    reads as a time, the rest as the reminder's text (which must not be empty)."""
    words = text.split()
    for n in range(min(len(words) - 1, _MAX_WHEN_WORDS), 0, -1):
        try:
            schedule = parse_when(" ".join(words[:n]), time_zone, now)
        except WhenError:
            schedule = None
        if schedule is not None:
            return schedule, " ".join(words[n:])
    return None


# -- one-off ----------------------------------------------------------------------------------

def _one_off(text: str, time_zone: str, now: datetime) -> datetime | None:
    if not re.search(r"\d|tomorrow|tonight|today|noon|midnight|morning|evening|afternoon|night|week|month|year|"
                     r"monday|tuesday|wednesday|thursday|friday|saturday|sunday|hour|minute|second|next", text):
        return None  # cheap refusal: dateparser reads surprising things into plain words
    tz = zone(time_zone)
    base = now.astimezone(tz).replace(tzinfo=None)
    # dateparser reads the phrase on the local wall clock (naive); the offset is applied here, at
    # the date it names: given TIMEZONE, dateparser applies today's, an hour off across a DST change.
    parsed = dateparser.parse(
        _BARE_HOUR.sub(_hour_with_minutes, text),
        languages=_DATEPARSER_LANGUAGES,
        settings={"PREFER_DATES_FROM": "future", "RELATIVE_BASE": base, "STRICT_PARSING": False},
    )
    if parsed is None:
        return None
    if parsed.tzinfo is not None:  # the phrase named its own zone ("6pm UTC")
        return parsed.astimezone(timezone.utc)
    if _ELAPSED.match(text):  # "in 2 hours": two real hours, even across a change of offset
        return now + (parsed - base)
    if not _names_a_time(text):
        # "tomorrow", "on Friday": dateparser keeps the current clock time; a reminder for a day
        # is more useful at the start of it.
        parsed = parsed.replace(hour=_DEFAULT_TIME[0], minute=_DEFAULT_TIME[1], second=0, microsecond=0)
    return parsed.replace(tzinfo=tz).astimezone(timezone.utc)  # fold=0, as next_run


def _hour_with_minutes(match: re.Match[str]) -> str:
    """ "at 9" -> "at 09:00": dateparser reads a bare number as a day or a month (September)."""
    hour, minute = int(match.group(2)), int(match.group(3) or 0)
    if hour > 23 or minute > 59:
        return match.group(0)
    return f"{match.group(1)} {hour:02d}:{minute:02d}"


def _names_a_time(text: str) -> bool:
    return bool(re.search(r"\d|noon|midnight|morning|evening|afternoon|night|hour|minute|second", text))


# -- recurring --------------------------------------------------------------------------------

def _recurring(text: str) -> tuple[str, str] | None:
    """(cron rule, description) for "every ..." / "daily ..." / "weekdays ..." phrases."""
    for prefix, replacement in (("daily", "every day"), ("hourly", "every hour"), ("weekly", "every week"),
                                ("monthly", "every month"), ("weekdays", "every weekday"), ("weekends", "every weekend")):
        if text == prefix or text.startswith(prefix + " "):
            text = replacement + text[len(prefix):]
            break
    if not text.startswith("every "):
        return None
    rest = text[len("every "):]
    period, _, when = rest.partition(" at ")
    period = period.strip()
    # "every monday 9am" (no "at"): the trailing words may be the time.
    if not when:
        words = period.split()
        for cut in range(1, len(words)):
            if _clock(" ".join(words[cut:])) is not None:
                period, when = " ".join(words[:cut]), " ".join(words[cut:])
                break
    every_n = _EVERY_N.match(period)
    if every_n or period in ("minute", "hour"):
        if when:
            return None
        n = int(every_n.group(1)) if every_n else 1
        unit = (every_n.group(2) if every_n else period)[:3]
        if n < 1:
            return None
        if unit == "min":
            return ("* * * * *" if n == 1 else f"*/{n} * * * *"), f"every {n} minute{'s' * (n > 1)}"
        if unit in ("hou", "hr"):
            return ("0 * * * *" if n == 1 else f"0 */{n} * * *"), f"every {n} hour{'s' * (n > 1)}"
        period = "day" if n == 1 else ""
        if not period:
            return None
    clock = _clock(when) if when else None
    if when and clock is None:
        return None
    day_part = _PARTS_OF_DAY.get(period)
    if day_part is not None:  # "every morning"
        hour, minute = clock or day_part
        return f"{minute} {hour} * * *", f"every day at {hour:02d}:{minute:02d}"
    hour, minute = clock or _DEFAULT_TIME
    at = f"{hour:02d}:{minute:02d}"
    if period in ("day", "night"):
        return f"{minute} {hour} * * *", f"every day at {at}"
    if period == "weekday":
        return f"{minute} {hour} * * 1-5", f"every weekday at {at}"
    if period == "weekend":
        return f"{minute} {hour} * * 0,6", f"every weekend day at {at}"
    if period == "week":
        return f"{minute} {hour} * * 1", f"every Monday at {at}"
    if period.startswith("month"):
        tail = period[len("month"):].strip()
        day = 1
        if tail:
            ordinal = _ORDINAL.match(tail)
            if ordinal is None or not 1 <= int(ordinal.group(1)) <= 31:
                return None
            day = int(ordinal.group(1))
        return f"{minute} {hour} {day} * *", f"every month on day {day} at {at}"
    days = _weekdays(period)
    if days:
        names = " and ".join(_DAY_NAMES[d] for d in days)
        return f"{minute} {hour} * * {','.join(str(d) for d in days)}", f"every {names} at {at}"
    return None


def _weekdays(text: str) -> list[int]:
    """[1, 5] for "monday and friday" / "mon, fri" / "mondays"; [] if any word is not a day."""
    days: list[int] = []
    for word in re.split(r"\s*(?:,|\band\b|&)\s*", text):
        word = word.strip().removesuffix("s") if word.strip() not in _DAYS else word.strip()
        if word not in _DAYS:
            return []
        if _DAYS[word] not in days:
            days.append(_DAYS[word])
    return sorted(days)


def _clock(text: str) -> tuple[int, int] | None:
    """(hour, minute) for "9", "9am", "9:30", "18:00", "6 pm", "noon"; None if not a clock time."""
    text = text.strip()
    if text in _PARTS_OF_DAY:
        return _PARTS_OF_DAY[text]
    match = _TIME.match(text)
    if match is None:
        return None
    hour, minute = int(match.group(1)), int(match.group(2) or 0)
    meridiem = (match.group(3) or "").replace(".", "")
    if meridiem:
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if meridiem == "pm" else 0)
    if hour > 23 or minute > 59:
        return None
    return hour, minute


def humanize_delay(delta: timedelta) -> str:
    """ "in 5 minutes", "in 2 hours", "in 3 days": for confirmations."""
    seconds = max(0, round(delta.total_seconds()))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = round(seconds / size)
            return f"in {n} {unit}{'s' * (n != 1)}"
    return "in less than a minute"
