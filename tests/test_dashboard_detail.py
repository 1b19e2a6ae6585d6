"""The rollout page's derived views as pure functions: schedule, timeline, failure groups."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.api.rollout_detail import failure_groups, schedule, timeline
from orchestrator.rules import RolloutSpec
from orchestrator.store import RolloutRecord, TargetRecord


def target(device: str, state: str, notified: float | None, updated: float, reason: str = "", *,
           phase: int = 0) -> TargetRecord:  # fmt: skip
    return TargetRecord(
        rollout_id=1, device_id=device, position=0, phase=phase, state=state,
        delivered=notified is not None, notice_id=None, notified_at=notified,
        updated_at=updated, reason=reason, attempts=1,
    )  # fmt: skip


def rollout(state: str = "running", phase: int = 0, gate_met_at: float | None = None,
            **spec: Any) -> RolloutRecord:  # fmt: skip
    return RolloutRecord(
        id=1, release_id=1, target={"all": True}, spec=RolloutSpec.from_json(spec),
        state=state, phase=phase, phase_started_at=0.0, gate_met_at=gate_met_at, reason="",
        failure_base=0, attempt_base=0, created_at=0.0, updated_at=0.0, created_by="t",
    )  # fmt: skip


def test_timeline_counts_each_device_once_at_every_point() -> None:
    targets = [
        target("a", "succeeded", 10, 20),
        target("b", "rolled_back", 10, 30, "health_check_failed: exit 1"),
        target("c", "downloading", 25, 26),
        target("d", "pending", None, 0),
        target("e", "canceled", None, 35),  # canceled before it was notified
    ]
    points = timeline(targets, 0, 40, points=5)["points"]
    assert [p["at"] for p in points] == [0, 10, 20, 30, 40]
    for p in points:
        parts = ("pending", "in_flight", "succeeded", "failed", "canceled")
        assert sum(p[k] for k in parts) == 5
    assert points[0] == {"at": 0, "pending": 5, "in_flight": 0, "succeeded": 0, "failed": 0,
                         "canceled": 0}  # fmt: skip
    assert (points[1]["in_flight"], points[2]["succeeded"], points[2]["in_flight"]) == (2, 1, 1)
    assert points[4] == {"at": 40, "pending": 1, "in_flight": 1, "succeeded": 1, "failed": 1,
                         "canceled": 1}  # fmt: skip


def test_timeline_is_bounded_and_survives_an_empty_or_instant_rollout() -> None:
    assert len(timeline([], 5, 5)["points"]) == 60
    many = [target(f"d{i}", "succeeded", 1, 2) for i in range(1000)]
    out = timeline(many, 0, 3)
    assert len(out["points"]) == 60
    assert out["points"][-1]["succeeded"] == 1000


def test_failures_are_grouped_by_error_code_with_the_devices_output() -> None:
    groups = failure_groups([
        target("a", "rolled_back", 1, 2, "health_check_failed: health check exit 1\nline 2"),
        target("b", "failed", 1, 2, "download_failed: HTTP 404", phase=1),
        target("c", "rolled_back", 1, 2, "health_check_failed: exit 3"),
        target("d", "timed_out", 1, 2, "no report since sent for 3600s"),
        target("e", "succeeded", 1, 2),
    ])  # fmt: skip
    assert [(g["code"], g["count"]) for g in groups] == [
        ("health_check_failed", 2), ("download_failed", 1), ("timed_out", 1)]  # fmt: skip
    assert groups[0]["devices"][0]["message"] == "health check exit 1\nline 2"
    assert groups[1]["devices"][0]["phase"] == 2
    assert groups[2]["devices"][0]["message"] == "no report since sent for 3600s"


@pytest.mark.parametrize(
    ("record", "soak_ends_at", "next_phase"),
    [
        (rollout(gate_met_at=100.0, soak_s=60, phases=[50, 100]), 160.0, 2),
        (rollout(phase=1, gate_met_at=100.0, soak_s=60, phases=[50, 100]), 160.0, None),
        (rollout(gate_met_at=None, soak_s=60, phases=[50, 100]), None, 2),
        (rollout(state="paused", gate_met_at=100.0, soak_s=60, phases=[50, 100]), None, 2),
    ],
)
def test_schedule_says_when_the_soak_ends_and_what_opens_then(
    record: RolloutRecord, soak_ends_at: float | None, next_phase: int | None
) -> None:
    s = schedule(record, now=120.0)
    assert (s["soak_ends_at"], s["next_phase"]) == (soak_ends_at, next_phase)


def test_schedule_names_the_next_maintenance_window() -> None:
    day = 86400 * 10  # a midnight (UTC)
    r = rollout(windows=["02:00-04:00"])
    assert schedule(r, now=day + 3600)["next_window_at"] == day + 7200
    assert schedule(r, now=day + 3 * 3600)["next_window_at"] is None  # inside it
    assert schedule(r, now=day + 5 * 3600)["next_window_at"] == day + 86400 + 7200
