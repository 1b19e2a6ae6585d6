"""A security rollout supersedes feature rollouts for the same devices (issue 17).

How: when a rollout of a security release starts (at its create, at its approval when it
needs one, or at its start time), in the transaction that makes it ``running``, each of
its devices that an active rollout of a *feature* release also targets, and has not
finished there, is taken from that rollout: its target there becomes ``canceled`` with
the reason ``superseded by security rollout N``, and a device that had been notified gets
a signed cancel (the next sequence of its scope, replacing the retained feature notice)
before the security rollout's own notice (the sequence after). The feature rollout goes
on for its other devices; its gates do not count the canceled ones. A device held by
another *security* rollout is a conflict as before (409 unless ``force``). A device
already installing the feature update finishes that install (an install is never cut
short), then takes the security notice, the newest of its scope.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fleetpush_protocol.topics import device_scope
from orchestrator.rules import ACTIVE_ROLLOUT_STATES, IN_FLIGHT_STATES, PENDING
from orchestrator.store import NoticeRecord, RolloutRecord, Store

__all__ = ["CancelSigner", "feature_held", "security_conflicts", "start", "take_over"]

# (feature rollout id, devices, their reserved sequences) -> the signed cancels
CancelSigner = Callable[[int, list[str], dict[str, int]], list[NoticeRecord]]

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


def take_over(
    s: Store, r: RolloutRecord, now: float, sign: CancelSigner, actor: str
) -> tuple[dict[int, list[str]], list[NoticeRecord]]:
    """Take ``r``'s devices from the feature rollouts that hold them; ``r`` is a security
    rollout becoming ``running`` in the caller's transaction (``start``). The targets
    there are canceled, the cancels of the notified ones signed and stored, and each
    take-over audited, all in that transaction: a lease holder on another replica sees
    ``r`` running only with its devices' cancels already stored, so their sequences come
    before its notices (and ``save_notices_leased`` waits until they are published).
    Returns (feature rollout id -> the devices taken, the cancels to publish)."""
    reason = f"superseded by security rollout {r.id}"
    taken = feature_held(s, r)
    records: list[NoticeRecord] = []
    for rollout_id, devices in sorted(taken.items()):
        # Device order, as save_notices_leased locks targets: no deadlock between them.
        notified = s.cancel_device_targets(rollout_id, sorted(devices), now, reason)
        if notified:
            seqs = s.reserve_seqs([device_scope(d) for d in notified], int(now * 1000))
            records += sign(rollout_id, notified, seqs)
        detail = {"by": r.id, "devices": len(devices), "device_ids": devices[:100]}
        s.add_audit(at=now, actor=actor, action="rollout.supersede",
                    subject=f"rollout/{rollout_id}", detail=detail)  # fmt: skip
    s.save_notices(records, {})
    return taken, records


def start(
    s: Store, r: RolloutRecord, now: float, fields: Mapping[str, Any], *,
    sign: CancelSigner | None, actor: str,
) -> tuple[RolloutRecord, dict[int, list[str]], list[NoticeRecord]]:  # fmt: skip
    """Compare-and-set ``r`` (its state and phase as read) to ``fields``; a security
    rollout (``sign`` given) that becomes ``running`` takes over its devices in the same
    transaction (call it through ``Store.atomic``). Of two replicas starting one rollout
    (an approval here, the engine's scheduled start there), one wins and takes over; the
    other gets ``ConflictError``."""
    started = s.update_rollout(r.id, now, expect=(r.state, r.phase), **fields)
    if sign is None or started.state != "running":
        return started, {}, []
    taken, records = take_over(s, started, now, sign, actor)
    return started, taken, records
