"""Maintenance windows, one syntax for both sides: ``"[DAYS ]HH:MM-HH:MM"``.

``DAYS`` is a comma list of days or day ranges, any case: ``"Mon-Fri 02:00-04:00"``,
``"sat,sun 00:00-06:00"``, ``"fri-mon 22:00-02:00"``; without it, every day. A window
whose end is before its start spans midnight and belongs to the day it starts on. Which
time zone a window is in is the reader's to say: rollout windows are UTC, device
maintenance windows device-local time.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, tzinfo

__all__ = ["DAYS", "Window", "in_windows", "parse_window"]

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WINDOW_RE = re.compile(r"^(?:([a-z,\- ]+?)\s+)?(\d\d):(\d\d)-(\d\d):(\d\d)$")
_FORM = "'[DAYS ]HH:MM-HH:MM', e.g. '02:00-04:00' or 'Mon-Fri 22:00-02:00'"


class Window:
    """A daily window, minutes after midnight (``end_min`` up to 1440), on some weekdays.

    A plain class rather than a struct: configuration and API bodies give it as one
    string, which msgspec hands to ``parse_window`` through the decode hook.
    """

    __slots__ = ("days", "end_min", "start_min")

    def __init__(self, start_min: int, end_min: int, days: tuple[int, ...] = ()) -> None:
        self.start_min = start_min
        self.end_min = end_min
        self.days = days  # 0 = Monday; empty = every day

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Window):
            return NotImplemented
        return (self.start_min, self.end_min, self.days) == (
            other.start_min, other.end_min, other.days)  # fmt: skip

    def __hash__(self) -> int:
        return hash((self.start_min, self.end_min, self.days))

    def __repr__(self) -> str:
        return f"Window({str(self)!r})"

    def __str__(self) -> str:
        days = ",".join(DAYS[d] for d in self.days)
        span = f"{_hhmm(self.start_min)}-{_hhmm(self.end_min)}"
        return f"{days} {span}" if days else span

    def contains_at(self, weekday: int, minute: int) -> bool:
        """Whether minute ``minute`` of weekday ``weekday`` (0 = Monday) is inside."""
        if self.start_min <= self.end_min:
            inside = self.start_min <= minute < self.end_min
            start_day = weekday
        else:
            inside = minute >= self.start_min or minute < self.end_min
            start_day = weekday if minute >= self.start_min else (weekday - 1) % 7
        return inside and (not self.days or start_day in self.days)

    def contains(self, unix: float, tz: tzinfo | None = UTC) -> bool:
        """Whether Unix time ``unix`` is inside, read in ``tz`` (None: the system zone)."""
        moment = datetime.fromtimestamp(unix, tz)
        return self.contains_at(moment.weekday(), moment.hour * 60 + moment.minute)

    def next_start(self, unix: float, tz: tzinfo | None = UTC) -> float:
        """The first time after ``unix`` the window opens (within the next eight days)."""
        moment = datetime.fromtimestamp(unix, tz)
        midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        for day in range(9):
            start = midnight + timedelta(days=day, minutes=self.start_min)
            if start.timestamp() > unix and (not self.days or start.weekday() in self.days):
                return start.timestamp()
        raise AssertionError("a window opens at least once a week")  # pragma: no cover


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def _days(text: str, whole: str) -> tuple[int, ...]:
    days: set[int] = set()
    for part in text.replace(" ", "").split(","):
        first, _, last = part.partition("-")
        if first not in DAYS or (last and last not in DAYS):
            raise ValueError(f"window {whole!r}: days are mon..sun (e.g. 'Mon-Fri' or 'sat,sun')")
        a = DAYS.index(first)
        b = DAYS.index(last) if last else a
        days.update((a + i) % 7 for i in range((b - a) % 7 + 1))
    return tuple(sorted(days))


def parse_window(text: str) -> Window:
    """A window from its one syntax (see the module doc).

    Raises:
        ValueError: not a window; the message gives the expected form.
    """
    m = _WINDOW_RE.match(text.strip().lower())
    if m is None:
        raise ValueError(f"window {text!r}: expected {_FORM}")
    days_text, h1, m1, h2, m2 = m.groups()
    start, end = int(h1) * 60 + int(m1), int(h2) * 60 + int(m2)
    if int(h1) > 23 or int(m1) > 59 or int(m2) > 59 or end > 1440:
        raise ValueError(f"window {text!r}: invalid time (00:00..24:00)")
    if start == end:
        raise ValueError(f"window {text!r}: empty")
    return Window(start, end, _days(days_text, text) if days_text else ())


def in_windows(windows: Sequence[Window], unix: float, tz: tzinfo | None = UTC) -> bool:
    """True when there are no windows or ``unix`` falls in one."""
    return not windows or any(w.contains(unix, tz) for w in windows)
