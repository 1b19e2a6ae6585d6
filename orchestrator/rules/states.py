"""The states of rollouts and of their targets, and how they group."""

from __future__ import annotations

__all__ = [
    "ACTIVE_ROLLOUT_STATES",
    "AWAITING_APPROVAL",
    "CANCELED",
    "FAILURE_STATES",
    "IN_FLIGHT_STATES",
    "PENDING",
    "ROLLOUT_STATES",
    "SENT",
    "SUCCEEDED",
    "TERMINAL_STATES",
    "TIMED_OUT",
]

# A rollout not yet over. One awaiting approval holds its devices too (a conflict for
# another rollout, its release cannot be deleted) but notifies nobody until approved.
AWAITING_APPROVAL = "awaiting_approval"
ACTIVE_ROLLOUT_STATES = (AWAITING_APPROVAL, "scheduled", "running", "paused")
ROLLOUT_STATES = (*ACTIVE_ROLLOUT_STATES, "completed", "canceled", "aborted", "rejected")

PENDING = "pending"  # not notified yet
SENT = "sent"  # notice published, no report yet
SUCCEEDED = "succeeded"
CANCELED = "canceled"
TIMED_OUT = "timed_out"
FAILURE_STATES = frozenset({"failed", "rolled_back", "rejected", TIMED_OUT})
TERMINAL_STATES = FAILURE_STATES | {SUCCEEDED, CANCELED}
IN_FLIGHT_STATES = frozenset(
    {SENT, "notified", "deferred", "downloading", "downloaded", "installing", "installed"}
)
