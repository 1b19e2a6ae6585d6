"""The domain rules the store applies, once for every backend.

They used to live in SQLite's SQL (``max()``, ``CASE``, string concatenation); here they are
plain functions, so SQLite and PostgreSQL decide alike and each rule has one test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fleetpush_protocol.components import ComponentState
from fleetpush_protocol.messages import Report

__all__ = [
    "StoredPresence",
    "presence_applies",
    "report_accepted",
    "reported_components",
    "supersedes",
    "timeout_reason",
]


def report_accepted(owner: tuple[str, int] | None, report: Report) -> bool:
    """A report counts only about a notice that was sent to that device, for that rollout:
    anything else is stored as evidence (``accepted = 0``) and changes nothing."""
    return owner is not None and owner[0] == report.device_id and str(owner[1]) == report.rollout_id


def reported_components(
    release: Sequence[str], reported: Sequence[ComponentState]
) -> list[dict[str, str]]:
    """The component states worth storing from a device's report: only the components of
    the target's release (``release``, its names in installation order), each once (the
    first the device gave), in the release's order. A device cannot add a component to a
    system, show one for a single-payload release, or say two things about one."""
    said: dict[str, str] = {}
    for c in reported:
        said.setdefault(c.name, c.state)
    return [{"name": n, "state": said[n]} for n in release if n in said]


@dataclass(frozen=True, slots=True)
class StoredPresence:
    online: bool
    at: float  # the device's own timestamp of the presence message that set ``online``


def presence_applies(stored: StoredPresence | None, at: float) -> bool:
    """Presence messages can arrive out of order (a retained "offline" will after a
    reconnect's "online"): the one with the latest device timestamp wins; a tie goes to
    the newcomer, so a device that reconnects within the same second shows online."""
    return stored is None or at >= stored.at


def timeout_reason(state: str, silent_s: float) -> str:
    """Why a delivered target was given up: its last state and how long it was silent."""
    return f"no report since {state} for {int(silent_s)}s"


def supersedes(new_seq: int, old_seq: int) -> bool:
    """On one retained topic a newer notice replaces an older one not yet published: the
    older must never be published over it (the broker keeps only the last)."""
    return new_seq > old_seq
