"""The update state machine: states, the persisted job record and the allowed transitions.

One job per accepted notice, modelled on Mender's client (persist the next state *before*
entering it, resume from the persisted state after a crash), in one small module:

    notified ─┬─> downloading ─> downloaded ─┬─> installing ─> installed ─> health_check
              └─> deferred ───────^          └─> deferred ───────^                │
                                                       succeeded <────────────────┤
                                                       rolled_back / failed <─────┘
    any state before installing ─> canceled; any state ─> failed

``health_check`` is local only (reported as ``installed``); every other state is also a
``ReportState`` and is reported when entered.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Self

from device_client.jobs.parts import Part
from fleetpush_protocol.messages import ReportState

__all__ = [
    "CANCELABLE",
    "Job",
    "JobState",
    "TransitionError",
    "check_transition",
]


class JobState(StrEnum):
    NOTIFIED = "notified"
    DEFERRED = "deferred"
    DOWNLOADING = "downloading"
    DOWNLOADED = "downloaded"
    INSTALLING = "installing"
    INSTALLED = "installed"
    HEALTH_CHECK = "health_check"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    CANCELED = "canceled"

    @property
    def report_state(self) -> ReportState | None:
        """The state reported on entry, or None for local-only states."""
        if self is JobState.HEALTH_CHECK:
            return None
        return ReportState(self.value)


# States whose job may still be canceled: nothing on the device has changed yet.
CANCELABLE = frozenset(
    {JobState.NOTIFIED, JobState.DEFERRED, JobState.DOWNLOADING, JobState.DOWNLOADED}
)

_S = JobState
_ALLOWED: dict[JobState, frozenset[JobState]] = {
    _S.NOTIFIED: frozenset({_S.DEFERRED, _S.DOWNLOADING, _S.FAILED, _S.CANCELED}),
    _S.DEFERRED: frozenset({_S.DOWNLOADING, _S.INSTALLING, _S.DEFERRED, _S.FAILED, _S.CANCELED}),
    # -> deferred: a metered link holds a full download (issue 15)
    _S.DOWNLOADING: frozenset({_S.DOWNLOADED, _S.DEFERRED, _S.FAILED, _S.CANCELED}),
    _S.DOWNLOADED: frozenset({_S.DEFERRED, _S.DOWNLOADING, _S.INSTALLING, _S.FAILED, _S.CANCELED}),
    _S.INSTALLING: frozenset({_S.INSTALLED, _S.FAILED, _S.ROLLED_BACK}),
    _S.INSTALLED: frozenset({_S.HEALTH_CHECK, _S.SUCCEEDED, _S.FAILED, _S.ROLLED_BACK}),
    _S.HEALTH_CHECK: frozenset({_S.HEALTH_CHECK, _S.SUCCEEDED, _S.FAILED, _S.ROLLED_BACK}),
}


class TransitionError(RuntimeError):
    """A programming error: the agent tried a transition the machine does not allow."""


def check_transition(old: JobState, new: JobState) -> None:
    """Raise ``TransitionError`` unless ``old -> new`` is an edge of the machine."""
    if new not in _ALLOWED.get(old, frozenset()):
        raise TransitionError(f"no transition {old.value} -> {new.value}")


@dataclass(frozen=True, slots=True)
class Job:
    """Everything needed to resume one update after a crash; persisted before each step.

    ``notice`` holds the notice's bytes exactly as verified, so a restarted agent can rebuild
    the notice without trusting anything else on disk more than the state file itself.
    """

    notice_id: str
    rollout_id: str
    notice: bytes  # the verified envelope bytes
    state: JobState
    reply_topic: str
    previous_slot: str | None = None  # directory handler: what `current` pointed at
    previous_version: str = ""  # the version running before this job
    new_slot: str | None = None
    reboot_pending: bool = False
    health_attempts: int = 0  # health checks started (a restart mid-check counts one)
    error_code: str = ""
    error_message: str = ""
    parts: tuple[Part, ...] = ()  # a system update's components, in order (issue 18)

    def advance(self, state: JobState, **changes: Any) -> Self:
        """A copy in ``state``; raises ``TransitionError`` on an edge the machine lacks."""
        check_transition(self.state, state)
        return replace(self, state=state, **changes)

    def to_map(self) -> dict[str, Any]:
        return {
            "notice_id": self.notice_id,
            "rollout_id": self.rollout_id,
            "notice": self.notice,
            "state": self.state.value,
            "reply_topic": self.reply_topic,
            "previous_slot": self.previous_slot or "",
            "previous_version": self.previous_version,
            "new_slot": self.new_slot or "",
            "reboot_pending": self.reboot_pending,
            "health_attempts": self.health_attempts,
            "error_code": self.error_code,
            "error_message": self.error_message,
            **({"parts": [p.to_map() for p in self.parts]} if self.parts else {}),
        }

    @classmethod
    def from_map(cls, m: dict[str, Any]) -> Job:
        return cls(
            notice_id=str(m["notice_id"]),
            rollout_id=str(m["rollout_id"]),
            notice=bytes(m["notice"]),
            state=JobState(m["state"]),
            reply_topic=str(m["reply_topic"]),
            previous_slot=m.get("previous_slot") or None,
            previous_version=str(m.get("previous_version", "")),
            new_slot=m.get("new_slot") or None,
            reboot_pending=bool(m.get("reboot_pending", False)),
            health_attempts=int(m.get("health_attempts", 0)),
            error_code=str(m.get("error_code", "")),
            error_message=str(m.get("error_message", "")),
            parts=tuple(Part.from_map(p) for p in m.get("parts", ())),
        )
