"""The persisted progress of a system update: one record per component, in order.

A system job (issue 18) carries one ``Part`` per component of its notice inside its
``Job`` record, so the one atomic state write that moves the job also says which
components are installed: a restart between two components knows exactly which ones to
roll back, and in which order (device_client/jobs/system.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Self

__all__ = ["Part", "PartState"]


class PartState:
    """The states of one component (``fleetpush_protocol.components.COMPONENT_STATES``)."""

    PENDING = "pending"
    DOWNLOADED = "downloaded"
    INSTALLING = "installing"
    INSTALLED = "installed"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"
    # Installing or installed: what a rollback must undo.
    CHANGED = frozenset({INSTALLING, INSTALLED})


@dataclass(frozen=True, slots=True)
class Part:
    name: str
    state: str = PartState.PENDING
    previous_slot: str | None = None  # directory handler: what `current` pointed at
    new_slot: str | None = None

    def moved(self, state: str, **changes: Any) -> Self:
        return replace(self, state=state, **changes)

    def to_map(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "previous_slot": self.previous_slot or "",
            "new_slot": self.new_slot or "",
        }

    @classmethod
    def from_map(cls, m: dict[str, Any]) -> Part:
        return cls(
            name=str(m["name"]),
            state=str(m["state"]),
            previous_slot=m.get("previous_slot") or None,
            new_slot=m.get("new_slot") or None,
        )
