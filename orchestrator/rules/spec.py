"""A rollout's settings (``RolloutSpec``): phases, gates, thresholds, rates, windows."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from fleetpush_common.config import DURATION, decode
from fleetpush_common.windows import Window

__all__ = [
    "RolloutSpec",
]

_DAY = 86400.0
Pct = Annotated[float, Meta(ge=0.0, le=100.0)]
PerMinute = Annotated[float, Meta(ge=0.0, le=1e7)]  # devices per minute


class RolloutSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How a rollout proceeds: the settings of a create request, stored with the rollout.

    Percentages are 0..100; durations are seconds (or ``"30m"``); rates are devices per
    minute; windows are UTC (fleetpush_common.windows).
    """

    phases: Annotated[tuple[Pct, ...], Meta(min_length=1, max_length=20)] = (100.0,)
    success_pct: Pct = 100.0  # gate: % of a phase's reachable devices that succeeded
    soak_s: Annotated[float, DURATION, Meta(ge=0.0, le=365 * _DAY)] = 0.0  # gate holds so long
    failure_pct: Pct = 20.0  # threshold: failures / attempts above this trips
    min_attempts: Annotated[int, Meta(ge=0, le=10**9)] = 5  # ... once this many finished
    on_failure: Literal["pause", "abort"] = "pause"
    rate_per_min: PerMinute = 0.0  # online devices notified per minute; 0 = unlimited
    rate_mode: Literal["constant", "exponential"] = "constant"
    rate_factor: Annotated[float, Meta(ge=1.0, le=100.0)] = 2.0  # exponential: x this ...
    rate_every: Annotated[int, Meta(ge=1, le=10**9)] = 10  # ... every this many successes
    rate_max_per_min: PerMinute = 0.0  # exponential cap; 0 = none
    # Silent for this long after delivery -> timed_out.
    device_timeout_s: Annotated[float, DURATION, Meta(ge=1.0, le=365 * _DAY)] = 3600.0
    start_at: float | None = None  # Unix seconds; None = now
    windows: Annotated[tuple[Window, ...], Meta(max_length=64)] = ()
    # Devices that come to match the target later (registered, or moved into a targeted
    # group) join the last phase; the rollout then never completes on its own.
    continuous: bool = False

    def __post_init__(self) -> None:
        if self.phases[-1] != 100.0:
            raise ValueError("phases: the last phase must be 100%")
        if any(b <= a for a, b in itertools.pairwise(self.phases)):
            raise ValueError("phases: must be strictly increasing")

    def start_state(self, now: float) -> str:
        """The state a rollout with these settings starts in: ``scheduled`` while
        ``start_at`` is ahead, else ``running``."""
        return "scheduled" if self.start_at is not None and self.start_at > now else "running"

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = msgspec.to_builtins(self, enc_hook=str)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RolloutSpec:
        """Build from the JSON form (API input or stored).

        Raises:
            ConfigError: a field is unknown or invalid; the message names it.
        """
        return decode(cls, data, "")
