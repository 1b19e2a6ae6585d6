"""When a security update may install: automatically by default, outside maintenance
windows if so configured, and postponed (by ``[policy] hold_until``, by windows) at most
until a deadline.

The deadline is the notice's ``issued_at`` plus the smaller of the device's bound
(``[security] max_postpone_s``) and the notice's (``advisory.max_postpone_s``, signed). It
counts from ``issued_at`` rather than from when this device heard of it, so nothing has
to be persisted for it and a device back after a long time off installs an overdue fix
at once. ``[security] automatic = false`` opts out: a security update then waits like any
other. Pure functions of the configuration, the verified notice and an injected time.
"""

from __future__ import annotations

from datetime import UTC, datetime

from msgspec.structs import replace

from device_client.config import DeviceConfig
from device_client.jobs.policy import Blocked, install_blocked
from fleetpush_protocol.messages import Advisory, UpdateNotice

__all__ = ["install_deadline", "update_blocked"]


def _advisory(notice: UpdateNotice) -> Advisory | None:
    return notice.advisory if notice.security and isinstance(notice.advisory, Advisory) else None


def install_deadline(config: DeviceConfig, notice: UpdateNotice) -> float | None:
    """The latest time a security update is installed (Unix seconds); None when the notice
    is a feature update or the device opted out of automatic security updates."""
    advisory = _advisory(notice)
    if advisory is None or not config.security.automatic:
        return None
    bound = min(config.security.max_postpone_s, float(advisory.max_postpone_s))
    return notice.issued_at + bound


def update_blocked(config: DeviceConfig, notice: UpdateNotice, now: float) -> Blocked | None:
    """None when ``notice``'s install may start at ``now``; otherwise until when, and why."""
    deadline = install_deadline(config, notice)
    if deadline is None:
        return install_blocked(config.policy, now)
    if now >= deadline:
        return None
    policy = config.policy
    if config.security.outside_windows:
        policy = replace(policy, maintenance_windows=())
    blocked = install_blocked(policy, now)
    if blocked is None:
        return None
    when = datetime.fromtimestamp(deadline, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    reason = f"{blocked.reason}; security update: installs by {when} at the latest"
    return Blocked(min(blocked.until, deadline), reason)
