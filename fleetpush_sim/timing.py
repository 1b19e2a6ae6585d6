"""Turning observed report times and rollout status polls into a rollout's timeline."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fleetpush_sim.fleet import TERMINAL_REPORTS, Observer

__all__ = ["RolloutClock", "phase_summary", "terminal_times"]


@dataclass
class RolloutClock:
    """``time.perf_counter()`` marks of one rollout: its start and when each phase opened."""

    started: float = field(default_factory=time.perf_counter)
    phase_opened: dict[int, float] = field(default_factory=dict)  # 0-based phase -> time
    finished: float | None = None
    wall_offset: float = field(default_factory=lambda: time.perf_counter() - time.time())

    def seen(self, status: Mapping[str, Any]) -> None:
        """Record what a status poll shows (phases opened, the end).

        A phase's opening time is the orchestrator's own ``phase_started_at`` (wall clock,
        same machine), so it does not depend on how often the status is polled.
        """
        now = time.perf_counter()
        current = int(status["phase"])
        for i in range(current):
            self.phase_opened.setdefault(i, now)
        started_at = status.get("phase_started_at")
        if isinstance(started_at, int | float) and status["state"] != "scheduled":
            self.phase_opened[current] = max(self.started, started_at + self.wall_offset)
        else:
            self.phase_opened.setdefault(current, now)
        if status["state"] in ("completed", "canceled", "aborted") and self.finished is None:
            self.finished = now

    def since_start(self, t: float | None) -> float | None:
        return None if t is None else round(t - self.started, 3)


def _latest(times: Mapping[str, float], devices: Sequence[str]) -> float | None:
    vals = [times[d] for d in devices if d in times]
    return max(vals) if len(vals) == len(devices) and vals else None


def terminal_times(observer: Observer, rollout_id: str) -> dict[str, float]:
    """When each device first reported a terminal state of the rollout."""
    out: dict[str, float] = {}
    for state in TERMINAL_REPORTS:
        for d, t in observer.times(rollout_id, state).items():
            out[d] = min(t, out.get(d, t))
    return out


def phase_summary(
    clock: RolloutClock,
    observer: Observer,
    rollout_id: str,
    status: Mapping[str, Any],
    targets: Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """Per phase: devices, when it opened, and how long until all of its devices had
    verified their notice and finished (seconds after the phase opened)."""
    notified = observer.notified(rollout_id)
    done = terminal_times(observer, rollout_id)
    by_phase: dict[int, list[str]] = {}
    for t in targets:
        by_phase.setdefault(int(t["phase"]), []).append(str(t["device_id"]))
    out = []
    for p in status["phases"]:
        i = int(p["index"]) - 1
        ids = by_phase.get(i, [])
        opened = clock.phase_opened.get(i)
        last_notified = _latest(notified, ids)
        last_done = _latest(done, ids)
        out.append({
            "phase": i + 1,
            "percent": p["percent"],
            "devices": len(ids),
            "opened_s": clock.since_start(opened),
            "notify_s": None if opened is None or last_notified is None
            else round(last_notified - opened, 3),
            "complete_s": None if opened is None or last_done is None
            else round(last_done - opened, 3),
            "succeeded": p["succeeded"],
            "failed": p["failed"],
        })  # fmt: skip
    return out
