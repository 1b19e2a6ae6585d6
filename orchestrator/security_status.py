"""Which devices miss which security release (issue 17).

A device *has* a security release when the orchestrator's own records show it: its most
recent accepted ``succeeded`` report for that release name is in a rollout of that release,
or of a later release of the same name (uploaded after it, so it carries the fix). A
device reverted to an older release misses it again. It *misses* it when it does not, and the
release is for its model (or for any model). What a device claims to run (its inventory)
is never used: a device could claim a fixed version to hide from this list. A device
freshly imaged with the fix and never updated through fleetpush shows as missing until a
rollout records it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from orchestrator.store import DeviceRecord, ReleaseRecord

__all__ = ["missing_security"]


def missing_security(
    releases: Sequence[ReleaseRecord],
    devices: Sequence[DeviceRecord],
    succeeded: Mapping[str, Mapping[str, int]],
) -> list[dict[str, Any]]:
    """Per security release (oldest first): its advisory and the devices missing it.

    ``succeeded`` maps device -> release name -> the release id of its most recent success.
    """
    out = []
    for rel in sorted((r for r in releases if r.security), key=lambda r: r.id):
        missing = [
            d.device_id for d in devices
            if (not rel.models or d.model in rel.models)
            and succeeded.get(d.device_id, {}).get(rel.name, -1) < rel.id
        ]  # fmt: skip
        out.append({
            "release": {"id": rel.id, "name": rel.name, "version": rel.version},
            "advisory": rel.advisory,
            "missing": sorted(missing),
            "count": len(missing),
        })  # fmt: skip
    return out
