"""Which device goes in which phase: a stable pseudo-random order per rollout, cut by
percentages."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence

__all__ = [
    "assign_phases",
    "order_key",
    "phase_bounds",
]


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
