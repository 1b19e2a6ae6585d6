"""A security rollout supersedes feature rollouts for the same devices (issue 17).

How: when a rollout of a security release starts (at its create, or at its approval when
it needs one), each of its devices that an active rollout of a *feature* release also
targets, and has not finished there, is taken from that rollout: its target there becomes
``canceled`` with the reason ``superseded by security rollout N``, and a device that had
been notified gets a signed cancel (the next sequence of its scope, replacing the retained
feature notice) before the security rollout's own notice (the sequence after). The feature
rollout goes on for its other devices; its gates do not count the canceled ones. A device
held by another *security* rollout is a conflict as before (409 unless ``force``). A device
already installing the feature update finishes that install (an install is never cut
short), then takes the security notice, the newest of its scope.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from orchestrator.rules import ACTIVE_ROLLOUT_STATES, IN_FLIGHT_STATES, PENDING
from orchestrator.store import RolloutRecord, Store

if TYPE_CHECKING:
    from orchestrator.engine import RolloutEngine

__all__ = ["feature_held", "security_conflicts", "take_over"]

_UNFINISHED = IN_FLIGHT_STATES | {PENDING}


def _security_rollouts(s: Store) -> set[int]:
    return {r.id for r in s.list_rollouts(ACTIVE_ROLLOUT_STATES)
            if s.get_release(r.release_id).security}  # fmt: skip


def security_conflicts(s: Store, conflicts: Mapping[str, int]) -> dict[str, int]:
    """The conflicts a security rollout cannot supersede: devices held by rollouts of
    security releases (the others will be taken from their feature rollouts)."""
    security = _security_rollouts(s)
    return {d: r for d, r in conflicts.items() if r in security}


def security_held(s: Store, held: Mapping[int, int]) -> dict[int, int]:
    """``security_conflicts`` for counts per holding rollout (``TargetPreview.held``)."""
    security = _security_rollouts(s)
    return {r: n for r, n in held.items() if r in security}


def feature_held(s: Store, r: RolloutRecord) -> dict[int, list[str]]:
    """Feature rollout id -> the devices of ``r`` it still holds (unfinished there)."""
    mine = {t.device_id for t in s.list_targets(r.id, limit=10**9)}
    out: dict[int, list[str]] = {}
    for other in s.list_rollouts(ACTIVE_ROLLOUT_STATES):
        if other.id == r.id or s.get_release(other.release_id).security:
            continue
        held = [t.device_id for t in s.list_targets(other.id, limit=10**9)
                if t.device_id in mine and t.state in _UNFINISHED]  # fmt: skip
        if held:
            out[other.id] = held
    return out


async def take_over(engine: RolloutEngine, r: RolloutRecord, now: float) -> dict[int, list[str]]:
    """Take ``r``'s devices from the feature rollouts that hold them; ``r`` is a security
    rollout that is starting. The caller holds ``engine.lock`` from storing or approving
    ``r`` until this returns, so no pass notifies ``r``'s devices before their cancels
    are out (a cancel after the security notice would replace it as the retained one).
    Returns what was taken from which rollout."""
    reason = f"superseded by security rollout {r.id}"
    taken = await engine.db.run(lambda s: feature_held(s, r))
    for rollout_id, devices in taken.items():

        def cancel(s: Store, rid: int = rollout_id, ds: list[str] = devices) -> list[str]:
            return s.cancel_device_targets(rid, ds, now, reason)

        notified = await engine.db.run(cancel)
        await engine.send_cancels(rollout_id, notified, now)
    return taken
