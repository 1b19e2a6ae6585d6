"""Parsing of durations, percentages and phase lists as operators write them."""

from __future__ import annotations

import itertools
import re

__all__ = ["parse_duration", "parse_percent", "parse_phases"]

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: str | int | float, what: str = "duration") -> float:
    """Seconds from ``"100ms"``, ``"30s"``, ``"10m"``, ``"2h"``, ``"7d"`` or a number.

    Raises:
        ValueError: not a duration; the message names ``what``.
    """
    if isinstance(value, bool):
        raise ValueError(f"{what}: expected a duration like '30s', got {value!r}")  # noqa: TRY004
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"{what}: must not be negative")
        return float(value)
    m = _DURATION_RE.match(value)
    if m is None:
        raise ValueError(f"{what}: expected a duration like '100ms', '30s', '10m', '2h', '7d'")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_percent(value: str | int | float, what: str = "percentage") -> float:
    """A percentage 0..100 from ``"10%"``, ``"10"`` or a number.

    Raises:
        ValueError: not a number or outside 0..100.
    """
    text = str(value).strip().removesuffix("%")
    try:
        pct = float(text)
    except ValueError:
        raise ValueError(f"{what}: {value!r} is not a percentage") from None
    if not 0.0 <= pct <= 100.0:
        raise ValueError(f"{what}: {value!r} is outside 0..100%")
    return pct


def parse_phases(text: str) -> tuple[float, ...]:
    """Cumulative phase sizes from ``"1%,10%,50%,100%"``.

    Raises:
        ValueError: empty, not increasing, above 100%, or not ending at 100%.
    """
    parts = [p for p in text.replace(" ", "").split(",") if p]
    if not parts:
        raise ValueError("phases: give at least one percentage, e.g. '10%,100%'")
    phases = tuple(parse_percent(p, "phases") for p in parts)
    if any(b <= a for a, b in itertools.pairwise(phases)) or phases[0] <= 0:
        raise ValueError("phases: percentages must be positive and strictly increasing")
    if phases[-1] != 100.0:
        raise ValueError("phases: the last phase must be 100%")
    if len(phases) > 20:
        raise ValueError("phases: at most 20 phases")
    return phases
