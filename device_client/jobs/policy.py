"""When an install may happen: hold-until dates and daily maintenance windows.

Pure functions of the configuration and an injected time; windows are in device-local
time (the system time zone, as ``time.localtime`` sees it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from device_client.config import PolicyConfig

__all__ = ["Blocked", "install_blocked"]


@dataclass(frozen=True, slots=True)
class Blocked:
    until: float  # Unix seconds when installing may be allowed (re-check then)
    reason: str


def install_blocked(policy: PolicyConfig, now: float) -> Blocked | None:
    """None when an install may start at ``now``; otherwise until when, and why."""
    if policy.hold_until is not None and now < policy.hold_until:
        when = datetime.fromtimestamp(policy.hold_until, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return Blocked(float(policy.hold_until), f"held until {when}")
    if not policy.maintenance_windows:
        return None
    local = datetime.fromtimestamp(now).astimezone()
    minute = local.hour * 60 + local.minute
    if any(w.contains(minute) for w in policy.maintenance_windows):
        return None
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    starts = []
    for w in policy.maintenance_windows:
        start = midnight + timedelta(minutes=w.start)
        if start.timestamp() <= now:
            start += timedelta(days=1)
        starts.append((start.timestamp(), w))
    until, window = min(starts, key=lambda s: s[0])
    return Blocked(until, f"waiting for maintenance window {window} (device-local time)")
