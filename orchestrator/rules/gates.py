"""How a phase stands (``PhaseCounts``), its success gate and the failure threshold."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from orchestrator.rules.spec import RolloutSpec
from orchestrator.rules.states import CANCELED, IN_FLIGHT_STATES, PENDING, SENT, SUCCEEDED

__all__ = [
    "PhaseCounts",
    "failure_tripped",
    "gate_met",
    "gate_view",
]

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
