"""A release's caps on application holds (issue 18), signed into its notices as ``holds``.

An operator marks a release **urgent** (no device application may hold it) or lowers how
long one hold (``max_hold``) and all holds (``max_hold_total``) may put it off; devices
apply the lower of these and their own ``[holds]`` bounds (docs/device.md, "Application
holds"). Stored with the release as ``{"max_each_s": int, "max_total_s": int}``; none: the
devices' own bounds.
"""

from __future__ import annotations

from fleetpush_common.units import parse_duration
from fleetpush_protocol.messages import HoldLimits

__all__ = ["MAX_HOLD_S", "HoldLimitsError", "parse_hold_limits", "to_hold_limits"]

MAX_HOLD_S = 365 * 86400  # the protocol's bound


class HoldLimitsError(ValueError):
    """Hold limits that make no sense (the message says which and why)."""


def _seconds(text: str, what: str) -> int:
    try:
        seconds = parse_duration(text, what)
    except ValueError as e:
        raise HoldLimitsError(str(e)) from None
    if not 0 <= seconds <= MAX_HOLD_S:
        raise HoldLimitsError(f"{what}: 0s..365d")
    return int(seconds)


def parse_hold_limits(
    *, urgent: bool, max_hold: str | None, max_hold_total: str | None
) -> dict[str, int] | None:
    """The limits to store with a release; None when it sets none.

    Raises:
        HoldLimitsError: a bad duration, or ``urgent`` with a hold allowance.
    """
    if urgent:
        if max_hold is not None or max_hold_total is not None:
            raise HoldLimitsError("urgent: allows no hold, so no max_hold or max_hold_total")
        return {"max_each_s": 0, "max_total_s": 0}
    if max_hold is None and max_hold_total is None:
        return None
    each = _seconds(max_hold, "max_hold") if max_hold is not None else MAX_HOLD_S
    total = _seconds(max_hold_total, "max_hold_total") if max_hold_total is not None else MAX_HOLD_S
    return {"max_each_s": each, "max_total_s": total}


def to_hold_limits(limits: dict[str, int]) -> HoldLimits:
    """The stored limits as the notice field."""
    return HoldLimits(max_each_s=int(limits["max_each_s"]), max_total_s=int(limits["max_total_s"]))
