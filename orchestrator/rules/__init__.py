"""Pure rollout rules: states, settings, phases, gates, failure thresholds and rates.

Nothing here reads a clock or a database; the engine passes ``now`` and counts in.
"""

from __future__ import annotations

from orchestrator.rules.gates import PhaseCounts, failure_tripped, gate_met, gate_view
from orchestrator.rules.phases import assign_phases, order_key, phase_bounds
from orchestrator.rules.rate import RateLimiter, rate_per_minute
from orchestrator.rules.spec import RolloutSpec
from orchestrator.rules.states import (
    ACTIVE_ROLLOUT_STATES,
    AWAITING_APPROVAL,
    CANCELED,
    FAILURE_STATES,
    IN_FLIGHT_STATES,
    PENDING,
    ROLLOUT_STATES,
    SENT,
    SUCCEEDED,
    TERMINAL_STATES,
    TIMED_OUT,
)

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
    "PhaseCounts",
    "RateLimiter",
    "RolloutSpec",
    "assign_phases",
    "failure_tripped",
    "gate_met",
    "gate_view",
    "order_key",
    "phase_bounds",
    "rate_per_minute",
]
