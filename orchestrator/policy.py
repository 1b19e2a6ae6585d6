"""Pure rollout logic: the rollout settings, phase sizes, gates, failure thresholds, rate limits.

Nothing here reads a clock or a database; the engine passes ``now`` and counts in.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from fleetpush_common.config import DURATION, decode
from fleetpush_common.windows import Window

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
    "assign_phases",
    "failure_tripped",
    "gate_met",
    "gate_view",
    "order_key",
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
_DAY = 86400.0
Pct = Annotated[float, Meta(ge=0.0, le=100.0)]
PerMinute = Annotated[float, Meta(ge=0.0, le=1e7)]  # devices per minute


class RolloutSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How a rollout proceeds: the settings of a create request, stored with the rollout.

    Percentages are 0..100; durations are seconds (or ``"30m"``); rates are devices per
    minute; windows are UTC (fleetpush_common.windows).
    """

    phases: Annotated[tuple[Pct, ...], Meta(min_length=1, max_length=20)] = (100.0,)
    success_pct: Pct = 100.0  # gate: % of a phase's reachable devices that succeeded
    soak_s: Annotated[float, DURATION, Meta(ge=0.0, le=365 * _DAY)] = 0.0  # gate holds so long
    failure_pct: Pct = 20.0  # threshold: failures / attempts above this trips
    min_attempts: Annotated[int, Meta(ge=0, le=10**9)] = 5  # ... once this many finished
    on_failure: Literal["pause", "abort"] = "pause"
    rate_per_min: PerMinute = 0.0  # online devices notified per minute; 0 = unlimited
    rate_mode: Literal["constant", "exponential"] = "constant"
    rate_factor: Annotated[float, Meta(ge=1.0, le=100.0)] = 2.0  # exponential: x this ...
    rate_every: Annotated[int, Meta(ge=1, le=10**9)] = 10  # ... every this many successes
    rate_max_per_min: PerMinute = 0.0  # exponential cap; 0 = none
    # Silent for this long after delivery -> timed_out.
    device_timeout_s: Annotated[float, DURATION, Meta(ge=1.0, le=365 * _DAY)] = 3600.0
    start_at: float | None = None  # Unix seconds; None = now
    windows: Annotated[tuple[Window, ...], Meta(max_length=64)] = ()
    # Devices that come to match the target later (registered, or moved into a targeted
    # group) join the last phase; the rollout then never completes on its own.
    continuous: bool = False

    def __post_init__(self) -> None:
        if self.phases[-1] != 100.0:
            raise ValueError("phases: the last phase must be 100%")
        if any(b <= a for a, b in itertools.pairwise(self.phases)):
            raise ValueError("phases: must be strictly increasing")

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = msgspec.to_builtins(self, enc_hook=str)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RolloutSpec:
        """Build from the JSON form (API input or stored).

        Raises:
            ConfigError: a field is unknown or invalid; the message names it.
        """
        return decode(cls, data, "")


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
