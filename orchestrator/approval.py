"""Four-eyes approval of rollouts: who may approve or reject one, and what it becomes.

A rollout that needs approval is created ``awaiting_approval``: it holds its devices but
notifies none. A different principal than its creator, with the operator role or above,
approves it (it then starts, or waits for its ``start_at``) or rejects it (it ends,
``rejected``). Nobody approves their own rollout, not even an admin: that is the point
of a second pair of eyes. Identity is the token's name (``Principal.name``), so two
tokens of one person must not share a name.

What was approved is the target as the approver saw it. A continuous rollout that was
approved and whose target grows (devices registered or moved into its groups later) takes
the newcomers in as pending targets and goes back to ``awaiting_approval`` in the same
transaction (``follow``): nothing more is notified until a second operator approves the
larger target (it runs on) or rejects it (the rollout ends, as any rejection). Otherwise
moving devices into an approved group, by whoever can edit the registry, would update
them without a second look; e.g. an approved rollout to an empty group would later take
the whole fleet.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from orchestrator.rules import AWAITING_APPROVAL
from orchestrator.security.auth import Principal, role_allows
from orchestrator.store import RolloutRecord, Store, TargetSelector

if TYPE_CHECKING:
    from orchestrator.engine import RolloutEngine

__all__ = [
    "ApprovalRefusedError",
    "check_decider",
    "decide",
    "follow",
    "needs_approval",
    "state_after_approval",
]


class ApprovalRefusedError(Exception):
    """The caller may not decide on the rollout; ``status`` is the HTTP code to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def needs_approval(installation: bool, requested: bool | None) -> bool:
    """Whether a new rollout waits for approval: the installation's setting
    (``[rollouts] require_approval``) or the rollout's own ``require_approval``.

    Raises:
        ValueError: the rollout asks to skip an approval the installation requires.
    """
    if installation and requested is False:
        raise ValueError(
            "require_approval: this installation requires approval of every rollout "
            "([rollouts] require_approval); it cannot be turned off for one"
        )
    return installation or bool(requested)


def check_decider(r: RolloutRecord, who: Principal, action: str) -> None:
    """Raise ``ApprovalRefusedError`` unless ``who`` may ``action`` (approve, reject) ``r``."""
    if not role_allows(who.role, "operator"):
        raise ApprovalRefusedError(
            403, f"{action}: needs the operator role; {who.name!r} is {who.role}"
        )
    if r.state != AWAITING_APPROVAL:
        raise ApprovalRefusedError(
            409, f"rollout {r.id} is {r.state}, not awaiting approval; nothing to {action}"
        )
    if who.name == r.created_by:
        raise ApprovalRefusedError(
            403,
            f"rollout {r.id} was created by {who.name!r}: the creator cannot {action} their "
            "own rollout; another operator or an admin must (cancel withdraws it)",
        )


def state_after_approval(r: RolloutRecord, now: float) -> str:
    """``scheduled`` when its start time is still ahead, else ``running``."""
    return r.spec.start_state(now)


async def decide(
    engine: RolloutEngine, rollout_id: int, check: Callable[[RolloutRecord], None], *,
    approve: bool, actor: str, reason: str,
) -> tuple[RolloutRecord, dict[int, list[str]]]:  # fmt: skip
    """Approve (it starts, or waits for its start time) or reject (it ends, its devices
    free) a rollout awaiting approval. ``check`` sees the rollout as stored, under the
    engine's lock, and raises to refuse: of two deciders at once, the second finds it
    decided. An approved security rollout takes its devices from feature rollouts in the
    transaction that approves it (``supersede.start``): returned, feature rollout id ->
    devices."""
    async with engine.lock:
        now = engine.clock.now()
        r = await engine.db.run(lambda s: s.get_rollout(rollout_id))
        check(r)
        taken: dict[int, list[str]] = {}
        if approve:
            state = state_after_approval(r, now)
            fields: dict[str, Any] = {
                "state": state, "approval": "approved", "decided_by": actor, "decided_at": now,
                "phase_started_at": now if state == "running" else None,
            }  # fmt: skip
            # Compare-and-set: of two replicas approving at once, the second gets a 409.
            # One approved for a later start takes its devices when it starts (the engine).
            r, taken = await engine.start_rollout(r, now, fields, actor=actor)
        else:
            await engine.cancel(r, now, state="rejected", reason=reason)
            r = await engine.db.run(
                lambda s: s.update_rollout(
                    rollout_id, now, approval="rejected", decided_by=actor, decided_at=now
                )
            )
    engine.wake()
    return r, taken


def follow(
    s: Store, r: RolloutRecord, sel: TargetSelector, skip_version: str, *, phase: int,
    now: float,
) -> int:  # fmt: skip
    """A continuous rollout takes in the devices that came to match it (``follow_targets``);
    one that was approved goes back to awaiting approval with them (call it through
    ``Store.atomic``: both or neither). Returns how many joined.

    Raises:
        ConflictError: ``r`` moved since it was read; nobody joined.
    """
    added = s.follow_targets(r.id, sel, skip_version, phase, now)
    if added and r.approval == "approved":
        s.update_rollout(
            r.id, now, expect=(r.state, r.phase), state=AWAITING_APPROVAL, approval="pending",
            reason=f"{added} device(s) joined its target after it was approved: approve it "
            "again to go on (or reject it)",
        )  # fmt: skip
    return added
