"""Which release each device a rollout updated ran before it, for ``rollout revert``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from orchestrator.store import NotFoundError, ReleaseRecord, RolloutRecord, Store

__all__ = ["revert_groups", "version_before"]

HISTORY = 1000  # reports read per device, newest first, to find its first of the rollout


def version_before(history: Sequence[dict[str, Any]], rollout_id: int) -> str | None:
    """The version a device ran when it first reported about ``rollout_id`` (its
    ``notified`` report comes before any install), from its accepted reports, newest
    first. None when none is left."""
    ours = [h for h in history if h["accepted"] and h["rollout_id"] == str(rollout_id)]
    return ours[-1]["current_version"] if ours else None


def _pick(candidates: Sequence[ReleaseRecord], name: str) -> ReleaseRecord | None:
    """The release of that version: the one with the rollout's release name, else the
    only one."""
    same = [c for c in candidates if c.name == name]
    if same:
        return same[0]
    return candidates[0] if len(candidates) == 1 else None


def revert_groups(
    s: Store, r: RolloutRecord
) -> tuple[list[tuple[ReleaseRecord, list[str]]], list[dict[str, str]]]:
    """``(groups, skipped)``: per release the devices ran before ``r``, the devices ``r``
    updated (``succeeded``) that still run its release; and the others, with the reason.
    Call it on the database thread."""
    release = s.get_release(r.release_id)
    by_version: dict[str, list[ReleaseRecord]] = {}
    for rel in s.list_releases():
        by_version.setdefault(rel.version, []).append(rel)
    groups: dict[int, tuple[ReleaseRecord, list[str]]] = {}
    skipped: list[dict[str, str]] = []
    for t in s.list_targets(r.id, "succeeded", limit=10**9):
        try:
            now_runs = s.get_device(t.device_id).current_version
        except NotFoundError:
            skipped.append({"device": t.device_id, "reason": "no longer registered"})
            continue
        if now_runs != release.version:
            why = f"runs {now_runs!r} now, not {release.version!r}"
            skipped.append({"device": t.device_id, "reason": why})
            continue
        before = version_before(s.device_history(t.device_id, HISTORY), r.id)
        if before is None:
            skipped.append({"device": t.device_id, "reason": "no report left from before"})
            continue
        if not before:
            why = "its first fleetpush update: no earlier release to go back to"
            skipped.append({"device": t.device_id, "reason": why})
            continue
        if before == release.version:
            skipped.append({"device": t.device_id, "reason": f"ran {before!r} before too"})
            continue
        pick = _pick(by_version.get(before, []), release.name)
        if pick is None:
            skipped.append({"device": t.device_id,
                            "reason": f"ran {before!r} before; no single stored release "
                                      "has that version"})  # fmt: skip
            continue
        groups.setdefault(pick.id, (pick, []))[1].append(t.device_id)
    return [groups[k] for k in sorted(groups)], skipped
