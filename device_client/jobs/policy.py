"""When an install may happen: hold-until dates and maintenance windows.

Pure functions of the configuration and an injected time; windows are in device-local
time (the system time zone, as ``time.localtime`` sees it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from device_client.config import PolicyConfig
from fleetpush_common.windows import in_windows

__all__ = ["Blocked", "install_blocked"]


@dataclass(frozen=True, slots=True)
class Blocked:
    until: float  # Unix seconds when installing may be allowed (re-check then)
    reason: str
    hold: bool = False  # an application's hold (device_client/holds.py): reported as one


def install_blocked(policy: PolicyConfig, now: float) -> Blocked | None:
    """None when an install may start at ``now``; otherwise until when, and why."""
    if policy.hold_until is not None and now < policy.hold_until:
        when = datetime.fromtimestamp(policy.hold_until, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return Blocked(float(policy.hold_until), f"held until {when}")
    if not policy.maintenance_windows:
        return None
    # tz=None: the system zone, read at each call (a device's zone may change).
    if in_windows(policy.maintenance_windows, now, tz=None):
        return None
    starts = [(w.next_start(now, tz=None), w) for w in policy.maintenance_windows]
    until, window = min(starts, key=lambda s: s[0])
    return Blocked(until, f"waiting for maintenance window {window} (device-local time)")
