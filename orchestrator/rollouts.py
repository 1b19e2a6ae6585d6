"""Creating rollouts: who is targeted, in which phase, and the status view."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from fleetpush_common.config import ConfigError, decode
from orchestrator.rules import (
    ACTIVE_ROLLOUT_STATES,
    PhaseCounts,
    RolloutSpec,
    assign_phases,
    gate_view,
    phase_bounds,
)
from orchestrator.store import (
    DeviceRecord,
    ReleaseRecord,
    RolloutRecord,
    Store,
    TargetSelector,
)

__all__ = [
    "Plan",
    "TargetSpec",
    "active_owners",
    "phase_key",
    "plan_rollout",
    "resolve_targets",
    "rollout_status",
    "select_targets",
    "selector",
    "status_view",
]


class TargetSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Devices listed, members of groups, or every device; then narrowed by model."""

    devices: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    all: bool = False

    def __post_init__(self) -> None:
        if not (self.devices or self.groups or self.all):
            raise ValueError("give devices, groups, or all=true")

    @classmethod
    def from_json(cls, data: Any) -> TargetSpec:
        """Raises ValueError naming the bad field (``target.devices: ...``)."""
        if not isinstance(data, dict):
            raise ValueError("target: expected an object")  # noqa: TRY004
        try:
            return decode(cls, data, "")
        except ConfigError as e:
            raise ValueError(f"target.{e}" if e.key else f"target: {e.problem}") from None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = msgspec.to_builtins(self)
        return data


def select_targets(
    spec: TargetSpec, devices: Sequence[DeviceRecord], release: ReleaseRecord
) -> tuple[list[str], list[str]]:
    """``(covered, model_mismatch)``: the registered devices the rollout covers, and those
    the target names but leaves out for their model.

    A device whose model is known and not among the release's (or the target's) models is
    left out; one whose model is not known yet is kept, and checks the model itself.
    """
    wanted = set(spec.devices)
    groups = set(spec.groups)
    models = set(spec.models) | set(release.models)
    out, mismatch = [], []
    for d in devices:
        if not (spec.all or d.device_id in wanted or groups.intersection(d.groups)):
            continue
        if models and d.model and d.model not in models:
            mismatch.append(d.device_id)
            continue
        out.append(d.device_id)
    return out, mismatch


def selector(spec: TargetSpec, release: ReleaseRecord) -> TargetSelector:
    """The rule of ``select_targets`` for the database to resolve (``create_rollout_for``,
    ``follow_targets``): the same devices, without reading them."""
    return TargetSelector(
        devices=spec.devices,
        groups=spec.groups,
        models=tuple(sorted(set(spec.models) | set(release.models))),
        all=spec.all,
    )


def resolve_targets(
    spec: TargetSpec, devices: Sequence[DeviceRecord], release: ReleaseRecord
) -> list[str]:
    """The registered devices the rollout covers (see ``select_targets``)."""
    return select_targets(spec, devices, release)[0]


def phase_key(release_id: int, target: TargetSpec) -> str:
    """The seed of a rollout's device order: the release and the target only, so a dry run
    shows the very order the real create will use."""
    return f"{release_id}:{json.dumps(target.to_json(), sort_keys=True)}"


def active_owners(s: Store) -> dict[str, int]:
    """Device -> the oldest active rollout (awaiting approval, scheduled, running or
    paused) that targets it."""
    owners: dict[str, int] = {}
    for r in s.list_rollouts(ACTIVE_ROLLOUT_STATES):
        for t in s.list_targets(r.id, limit=10**9):
            owners.setdefault(t.device_id, r.id)
    return owners


@dataclass(frozen=True, slots=True)
class Plan:
    """What creating a rollout would do: each device's phase, and what holds any back."""

    assignments: list[tuple[str, int, int]]  # (device, position, 0-based phase)
    held: list[dict[str, Any]] = field(default_factory=list)
    conflicts: dict[str, int] = field(default_factory=dict)  # device -> other rollout

    def to_json(self, phases: Sequence[float]) -> dict[str, Any]:
        """The dry-run answer; phases are numbered from 1."""
        by_phase: list[list[str]] = [[] for _ in phases]
        for device_id, _, phase in self.assignments:
            by_phase[phase].append(device_id)
        return {
            "dry_run": True,
            "total": len(self.assignments),
            "phases": [{"phase": i + 1, "percent": pct, "devices": by_phase[i]}
                       for i, pct in enumerate(phases)],
            "held": self.held,
        }  # fmt: skip


def plan_rollout(
    target: TargetSpec,
    spec: RolloutSpec,
    release: ReleaseRecord,
    devices: Sequence[DeviceRecord],
    owners: Mapping[str, int],
) -> Plan:
    """The assignment a create makes (``assign_phases`` seeded by ``phase_key``), and the
    devices held back: ``offline`` (notified when they connect), ``other_rollout`` (an
    active rollout targets them), ``model_mismatch`` (left out: phase ``None``)."""
    chosen, mismatch = select_targets(target, devices, release)
    assignments = assign_phases(chosen, phase_key(release.id, target), spec.phases)
    online = {d.device_id for d in devices if d.online}
    held: list[dict[str, Any]] = []
    conflicts: dict[str, int] = {}
    for device_id, _, phase in assignments:
        reasons = []
        if device_id not in online:
            reasons.append("offline")
        if device_id in owners:
            reasons.append("other_rollout")
            conflicts[device_id] = owners[device_id]
        if reasons:
            held.append({"device": device_id, "phase": phase + 1, "reasons": reasons,
                         "rollout_id": owners.get(device_id)})  # fmt: skip
    for device_id in sorted(mismatch):
        held.append({"device": device_id, "phase": None, "reasons": ["model_mismatch"],
                     "rollout_id": owners.get(device_id)})  # fmt: skip
    return Plan(assignments, held, conflicts)


def status_view(
    r: RolloutRecord,
    release: ReleaseRecord,
    counts: dict[int, PhaseCounts],
    states: dict[str, int],
    downloads: tuple[int, int] = (0, 0),
) -> dict[str, Any]:
    """The rollout with per-phase progress and per-state counts (API and CLI)."""
    total = sum(c.total for c in counts.values())
    bounds = phase_bounds(total, r.spec.phases)
    phases = []
    upto = PhaseCounts()  # the gate judges a phase with the ones before it
    for i, pct in enumerate(r.spec.phases):
        c = counts.get(i, PhaseCounts())
        if i <= r.phase:
            upto = upto.plus(c)
        phases.append({
            "phase": i + 1,
            "index": i + 1,  # the same number; kept for older clients
            "status": _phase_status(r, i),
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
        "current_phase": r.phase + 1,
        "release": {"id": release.id, "name": release.name, "version": release.version},
        "devices": total,
        "states": states,
        "phases": phases,
        "gate": gate_view(upto, r.phase + 1, r.spec.success_pct),
        "bytes": bytes_view(release.size, *downloads),
    }


def bytes_view(payload_size: int, devices: int, downloaded: int) -> dict[str, int]:
    """What the devices that reported it downloaded, against the full payload each."""
    full = devices * payload_size
    return {
        "payload_size": payload_size,
        "devices": devices,
        "downloaded": downloaded,
        "full": full,
        "saved": full - downloaded,
    }


def _phase_status(r: RolloutRecord, i: int) -> str:
    """``done`` (its gate held and the next phase opened, or the rollout completed),
    ``open`` (devices are being notified), ``stopped`` (the rollout was canceled or
    aborted in it), ``waiting`` (not opened yet), ``skipped`` (never opened: canceled or
    aborted before)."""
    if i < r.phase or (i == r.phase and r.state == "completed"):
        return "done"
    ended = ("canceled", "aborted", "rejected")
    if i > r.phase or r.state == "awaiting_approval":
        return "skipped" if r.state in ended else "waiting"
    return "stopped" if r.state in ended else "open"


def rollout_status(s: Store, r: RolloutRecord) -> dict[str, Any]:
    """``status_view`` of ``r``, read from the store in one go (call it on the DB thread)."""
    return status_view(
        r, s.get_release(r.release_id), s.phase_counts(r.id), s.state_counts(r.id),
        s.download_totals(r.id),
    )  # fmt: skip
