"""Pure rollout logic: phase sizes, gates, failure thresholds, rate limits, windows.

Nothing here reads a clock or a database; the engine passes ``now`` and counts in.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "ACTIVE_ROLLOUT_STATES",
    "AWAITING_APPROVAL",
    "FAILURE_STATES",
    "IN_FLIGHT_STATES",
    "TERMINAL_STATES",
    "ROLLOUT_STATES",
    "PhaseCounts",
    "RateLimiter",
    "RolloutSpec",
    "Window",
    "assign_phases",
    "failure_tripped",
    "gate_met",
    "gate_view",
    "in_windows",
    "order_key",
    "parse_window",
    "phase_bounds",
    "rate_per_minute",
]

# A rollout not yet over. One awaiting approval holds its devices too (a conflict for
# another rollout, its release cannot be deleted) but notifies nobody until approved.
AWAITING_APPROVAL = "awaiting_approval"
ACTIVE_ROLLOUT_STATES = (AWAITING_APPROVAL, "scheduled", "running", "paused")
ROLLOUT_STATES = (*ACTIVE_ROLLOUT_STATES, "completed", "canceled", "aborted", "rejected")

PENDING = "pending"  # not notified yet
SENT = "sent"  # notice published, no report yet
SUCCEEDED = "succeeded"
CANCELED = "canceled"
TIMED_OUT = "timed_out"
FAILURE_STATES = frozenset({"failed", "rolled_back", "rejected", TIMED_OUT})
TERMINAL_STATES = FAILURE_STATES | {SUCCEEDED, CANCELED}
IN_FLIGHT_STATES = frozenset(
    {SENT, "notified", "deferred", "downloading", "downloaded", "installing", "installed"}
)
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True, slots=True)
class Window:
    """A daily maintenance window in UTC, minutes after midnight; may cross midnight."""

    start_min: int
    end_min: int
    days: tuple[int, ...] = ()  # 0 = Monday; empty = every day

    def contains(self, unix: float) -> bool:
        day = (int(unix // 86400) + 3) % 7  # 1970-01-01 was a Thursday
        minute = int(unix % 86400) // 60
        if self.start_min <= self.end_min:
            inside = self.start_min <= minute < self.end_min
            start_day = day
        else:
            inside = minute >= self.start_min or minute < self.end_min
            start_day = day if minute >= self.start_min else (day - 1) % 7
        return inside and (not self.days or start_day in self.days)

    def __str__(self) -> str:
        days = ",".join(_DAYS[d] for d in self.days)
        span = (
            f"{self.start_min // 60:02d}:{self.start_min % 60:02d}-"
            f"{self.end_min // 60:02d}:{self.end_min % 60:02d}"
        )
        return f"{days} {span}" if days else span


_WINDOW_RE = re.compile(r"^(?:([a-z,]+)\s+)?(\d\d):(\d\d)-(\d\d):(\d\d)$")


def parse_window(text: str) -> Window:
    """``"02:00-04:00"`` or ``"mon,tue 22:00-02:00"`` (UTC).

    Raises:
        ValueError: not a window.
    """
    m = _WINDOW_RE.match(text.strip().lower())
    if m is None:
        raise ValueError(f"window {text!r}: expected '[mon,tue ]HH:MM-HH:MM' (UTC)")
    days_text, h1, m1, h2, m2 = m.groups()
    if int(h1) > 23 or int(h2) > 24 or int(m1) > 59 or int(m2) > 59:
        raise ValueError(f"window {text!r}: invalid time")
    days: tuple[int, ...] = ()
    if days_text:
        try:
            days = tuple(sorted({_DAYS.index(d) for d in days_text.split(",") if d}))
        except ValueError:
            raise ValueError(f"window {text!r}: days are mon..sun") from None
    start, end = int(h1) * 60 + int(m1), int(h2) * 60 + int(m2)
    if start == end:
        raise ValueError(f"window {text!r}: empty")
    return Window(start, end, days)


def in_windows(windows: Sequence[Window], unix: float) -> bool:
    """True when there are no windows or ``unix`` falls in one."""
    return not windows or any(w.contains(unix) for w in windows)


@dataclass(frozen=True, slots=True)
class RolloutSpec:
    """How a rollout proceeds; stored with the rollout as JSON.

    Percentages are 0..100; durations are seconds; rates are devices per minute.
    """

    phases: tuple[float, ...] = (100.0,)  # cumulative % of the targets
    success_pct: float = 100.0  # gate: % of a phase's reachable devices that succeeded
    soak_s: float = 0.0  # gate must hold this long before the next phase
    failure_pct: float = 20.0  # threshold: failures / attempts above this trips
    min_attempts: int = 5  # ... once at least this many devices finished
    on_failure: str = "pause"  # "pause" or "abort"
    rate_per_min: float = 0.0  # online devices notified per minute; 0 = unlimited
    rate_mode: str = "constant"  # "constant" or "exponential"
    rate_factor: float = 2.0  # exponential: multiply the rate by this ...
    rate_every: int = 10  # ... every this many successes
    rate_max_per_min: float = 0.0  # exponential cap; 0 = none
    device_timeout_s: float = 3600.0  # silent for this long after delivery -> timed_out
    start_at: float | None = None  # Unix seconds; None = now
    windows: tuple[Window, ...] = ()
    # Devices that come to match the target later (registered, or moved into a targeted
    # group) join the last phase; the rollout then never completes on its own.
    continuous: bool = False

    def __post_init__(self) -> None:
        if not self.phases or self.phases[-1] != 100.0:
            raise ValueError("phases: the last phase must be 100%")
        if any(b <= a for a, b in zip(self.phases, self.phases[1:], strict=False)):
            raise ValueError("phases: must be strictly increasing")
        for name in ("success_pct", "failure_pct"):
            if not 0.0 <= getattr(self, name) <= 100.0:
                raise ValueError(f"{name}: must be 0..100")
        if self.on_failure not in ("pause", "abort"):
            raise ValueError("on_failure: 'pause' or 'abort'")
        if self.rate_mode not in ("constant", "exponential"):
            raise ValueError("rate_mode: 'constant' or 'exponential'")
        if not 0 <= self.rate_per_min <= 1e7 or not 0 <= self.rate_max_per_min <= 1e7:
            raise ValueError("rate_per_min: must be 0..10,000,000 devices per minute")
        if not 1.0 <= self.rate_factor <= 100.0:
            raise ValueError("rate_factor: must be 1..100")
        if not 1 <= self.rate_every <= 10**9:
            raise ValueError("rate_every: must be at least 1")
        if not 0 <= self.min_attempts <= 10**9:
            raise ValueError("min_attempts: must be 0 or more")
        if not 1.0 <= self.device_timeout_s <= 365 * 86400.0:
            raise ValueError("device_timeout: must be 1s..365d")
        if not 0.0 <= self.soak_s <= 365 * 86400.0:
            raise ValueError("soak: must be 0..365d")
        if not isinstance(self.continuous, bool):
            raise ValueError("continuous: expected true or false")  # noqa: TRY004

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["phases"] = list(self.phases)
        data["windows"] = [str(w) for w in self.windows]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RolloutSpec:
        """Build from the JSON form (API input or stored).

        Raises:
            ValueError: a field is invalid; the message names it.
            TypeError: a field has the wrong type.
        """
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown rollout setting")
        args: dict[str, Any] = dict(data)
        if "phases" in args:
            args["phases"] = tuple(float(p) for p in args["phases"])
        if "windows" in args:
            args["windows"] = tuple(parse_window(str(w)) for w in args["windows"])
        for name in ("success_pct", "soak_s", "failure_pct", "rate_per_min", "rate_factor",
                     "rate_max_per_min", "device_timeout_s"):  # fmt: skip
            if name in args:
                args[name] = _number(args[name], name)
        for name in ("min_attempts", "rate_every"):
            if name in args and (not isinstance(args[name], int) or isinstance(args[name], bool)):
                raise ValueError(f"{name}: expected an integer")
        if args.get("start_at") is not None:
            args["start_at"] = _number(args["start_at"], "start_at")
        return cls(**args)


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name}: expected a number")  # noqa: TRY004
    return float(value)


def phase_bounds(total: int, phases: Sequence[float]) -> list[int]:
    """Cumulative device counts per phase: ``ceil(p% * total)``, the last one ``total``.

    >>> phase_bounds(1000, [1, 10, 50, 100])
    [10, 100, 500, 1000]
    """
    bounds = [min(total, math.ceil(p * total / 100.0 - 1e-9)) for p in phases]
    bounds[-1] = total
    return bounds


def order_key(rollout_key: str, device_id: str) -> bytes:
    """A device's place in a rollout's order; the database computes the same bytes when it
    resolves a target (``Dialect.order_key``)."""
    return hashlib.sha256(f"{rollout_key}\x00{device_id}".encode()).digest()


def assign_phases(
    device_ids: Iterable[str], rollout_key: str, phases: Sequence[float]
) -> list[tuple[str, int, int]]:
    """Order devices pseudo-randomly (stable per rollout) and give each its phase.

    Returns:
        ``(device_id, position, phase_index)`` in notification order.
    """
    ordered = sorted(set(device_ids), key=lambda d: order_key(rollout_key, d))
    bounds = phase_bounds(len(ordered), phases)
    out = []
    phase = 0
    for pos, device_id in enumerate(ordered):
        while pos >= bounds[phase]:
            phase += 1
        out.append((device_id, pos, phase))
    return out


_COUNT_FIELDS = ("total", "pending", "waiting", "in_flight", "succeeded", "failed", "canceled")


@dataclass(slots=True)
class PhaseCounts:
    """How the devices of one phase stand."""

    total: int = 0
    pending: int = 0  # not notified yet
    waiting: int = 0  # notified while offline, not seen since: not counted by gates
    in_flight: int = 0
    succeeded: int = 0
    failed: int = 0  # failed, rolled back, rejected or timed out
    canceled: int = 0

    def add(self, state: str, delivered: bool, n: int = 1) -> None:
        self.total += n
        if state == PENDING:
            self.pending += n
        elif state == SENT and not delivered:
            self.waiting += n
        elif state in IN_FLIGHT_STATES:
            self.in_flight += n
        elif state == SUCCEEDED:
            self.succeeded += n
        elif state == CANCELED:
            self.canceled += n
        else:
            self.failed += n

    def plus(self, other: PhaseCounts) -> PhaseCounts:
        """The counts of both (e.g. a phase judged with the ones before it)."""
        return PhaseCounts(*(getattr(self, f) + getattr(other, f) for f in _COUNT_FIELDS))

    @property
    def reachable(self) -> int:
        """Devices the gate judges: all but offline-notified and canceled ones."""
        return self.total - self.waiting - self.canceled

    @property
    def done(self) -> bool:
        return self.pending + self.waiting + self.in_flight == 0


def gate_met(counts: PhaseCounts, success_pct: float) -> bool:
    """At least ``success_pct`` of the phase's reachable devices succeeded (and still are)."""
    if counts.reachable <= 0:
        return counts.total == 0
    return counts.succeeded * 100.0 >= success_pct * counts.reachable - 1e-9


def gate_view(counts: PhaseCounts, phase: int, success_pct: float) -> dict[str, Any]:
    """The success gate of ``phase`` (numbered from 1; ``counts`` cover it and the phases
    before it), for people: met or not, what it needs, what it has, and, when the phase
    finished below it (the engine pauses such a rollout, again after a resume), what
    would let the rollout go on."""
    met = gate_met(counts, success_pct)
    needed = math.ceil(success_pct * counts.reachable / 100.0 - 1e-9)
    have = (
        f"{counts.succeeded} succeeded, {counts.failed} failed, {counts.in_flight} in flight, "
        f"{counts.pending} pending, {counts.waiting} offline"
    )
    view: dict[str, Any] = {
        "met": met,
        "phase": phase,
        "success_pct": success_pct,
        "needed": f"{needed} of {counts.reachable} reachable device(s) of phases 1-{phase} "
        f"succeeded ({success_pct:g}%)",
        "have": have,
        "stalled": not met and counts.done and counts.total > 0,
        "next": "",
    }
    if view["stalled"]:
        short = needed - counts.succeeded
        view["next"] = (
            f"every device of phases 1-{phase} has finished, {short} short of the gate, so "
            "the engine pauses the rollout again; retry the failed devices (fleetpush "
            "rollout retry), or cancel it and create a rollout with a lower --success"
        )
    elif not met:
        view["next"] = (
            f"it goes on once {needed} have succeeded; {counts.in_flight + counts.pending} "
            "device(s) have not finished yet"
        )
    return view


def failure_tripped(failures: int, attempts: int, spec: RolloutSpec) -> bool:
    """Failures exceed ``failure_pct`` of finished attempts, once ``min_attempts`` finished."""
    if attempts <= 0 or attempts < spec.min_attempts:
        return False
    return failures * 100.0 > spec.failure_pct * attempts


def rate_per_minute(spec: RolloutSpec, succeeded: int) -> float:
    """The notification rate now: constant, or growing by ``rate_factor`` per ``rate_every``
    successes (AWS IoT Jobs' exponential rollout); 0 means unlimited."""
    if spec.rate_per_min <= 0:
        return 0.0
    if spec.rate_mode == "constant":
        return spec.rate_per_min
    steps = min(succeeded // spec.rate_every, 64)
    rate = spec.rate_per_min * spec.rate_factor**steps
    if spec.rate_max_per_min > 0:
        rate = min(rate, spec.rate_max_per_min)
    return min(rate, 1e7)


class RateLimiter:
    """A token bucket: ``rate`` tokens per minute, at most ``burst_s`` seconds' worth saved.

    The first call grants one token so a slow rollout starts at once.
    """

    def __init__(self, burst_s: float = 1.0) -> None:
        self.burst_s = burst_s
        self.tokens = 1.0
        self.last: float | None = None

    def take(self, rate_per_min: float, now: float, want: int) -> int:
        """Take up to ``want`` tokens; return how many were granted (all when unlimited)."""
        if rate_per_min <= 0:
            return want
        per_s = rate_per_min / 60.0
        if self.last is not None:
            elapsed = max(0.0, now - self.last)
            self.tokens = min(max(1.0, per_s * self.burst_s), self.tokens + elapsed * per_s)
        self.last = now
        granted = min(want, int(self.tokens + 1e-9))
        self.tokens -= granted
        return granted
