"""Creating rollouts: who is targeted, in which phase, and the status view."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.policy import PhaseCounts, RolloutSpec, phase_bounds
from orchestrator.store import DeviceRecord, ReleaseRecord, RolloutRecord, Store

__all__ = ["TargetSpec", "resolve_targets", "rollout_status", "status_view"]


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """Devices listed, members of groups, or every device; then narrowed by model."""

    devices: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    all: bool = False

    @classmethod
    def from_json(cls, data: Any) -> TargetSpec:
        """Raises ValueError naming the bad field."""
        if not isinstance(data, dict):
            raise ValueError("target: expected an object")  # noqa: TRY004
        unknown = set(data) - {"devices", "groups", "models", "all"}
        if unknown:
            raise ValueError(f"target.{sorted(unknown)[0]}: unknown field")
        lists = {}
        for key in ("devices", "groups", "models"):
            value = data.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"target.{key}: expected a list of strings")
            lists[key] = tuple(value)
        everything = data.get("all", False)
        if not isinstance(everything, bool):
            raise ValueError("target.all: expected true or false")  # noqa: TRY004
        spec = cls(devices=lists["devices"], groups=lists["groups"], models=lists["models"],
                   all=everything)  # fmt: skip
        if not (spec.devices or spec.groups or spec.all):
            raise ValueError("target: give devices, groups, or all=true")
        return spec

    def to_json(self) -> dict[str, Any]:
        return {"devices": list(self.devices), "groups": list(self.groups),
                "models": list(self.models), "all": self.all}  # fmt: skip


def resolve_targets(
    spec: TargetSpec, devices: Sequence[DeviceRecord], release: ReleaseRecord
) -> list[str]:
    """The registered devices the rollout covers.

    A device whose model is known and not among the release's (or the target's) models is
    left out; one whose model is not known yet is kept, and checks the model itself.
    """
    wanted = set(spec.devices)
    groups = set(spec.groups)
    models = set(spec.models) | set(release.models)
    out = []
    for d in devices:
        if not (spec.all or d.device_id in wanted or groups.intersection(d.groups)):
            continue
        if models and d.model and d.model not in models:
            continue
        out.append(d.device_id)
    return out


def status_view(
    r: RolloutRecord,
    release: ReleaseRecord,
    counts: dict[int, PhaseCounts],
    states: dict[str, int],
) -> dict[str, Any]:
    """The rollout with per-phase progress and per-state counts (API and CLI)."""
    total = sum(c.total for c in counts.values())
    bounds = phase_bounds(total, r.spec.phases)
    phases = []
    for i, pct in enumerate(r.spec.phases):
        c = counts.get(i, PhaseCounts())
        phases.append({
            "index": i + 1,
            "percent": pct,
            "devices": c.total,
            "cumulative_devices": bounds[i] if bounds else 0,
            "pending": c.pending,
            "waiting_offline": c.waiting,
            "in_flight": c.in_flight,
            "succeeded": c.succeeded,
            "failed": c.failed,
            "canceled": c.canceled,
            "open": i <= r.phase,
        })  # fmt: skip
    return {
        **r.to_json(),
        "release": {"id": release.id, "name": release.name, "version": release.version},
        "devices": total,
        "states": states,
        "phases": phases,
    }


def spec_from_request(body: dict[str, Any]) -> RolloutSpec:
    """The rollout settings in a create request (everything but release and target)."""
    settings = {k: v for k, v in body.items() if k not in ("release", "target")}
    return RolloutSpec.from_json(settings)


def rollout_status(s: Store, r: RolloutRecord) -> dict[str, Any]:
    """``status_view`` of ``r``, read from the store in one go (call it on the DB thread)."""
    return status_view(r, s.get_release(r.release_id), s.phase_counts(r.id), s.state_counts(r.id))
