"""Plain records the storage layer returns; ``to_json`` gives the API's shape."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchestrator.rules import ACTIVE_ROLLOUT_STATES, RolloutSpec

__all__ = [
    "AuditEntry",
    "DeviceFilter",
    "DeviceRecord",
    "IngestResult",
    "NoticeRecord",
    "ReleaseRecord",
    "RolloutRecord",
    "TargetPreview",
    "TargetRecord",
    "TargetSelector",
    "TokenRecord",
]


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """One device. ``groups`` and ``model`` are facts: they come from the registry (what
    provisioning wrote, ``registry_*``) and the operator (``operator_groups``,
    ``operator_model``), and only they drive targeting. ``claimed_*`` is what the device's
    inventory says about itself: shown, compared, never used for a decision."""

    device_id: str
    registry_groups: tuple[str, ...]
    registry_model: str
    operator_groups: tuple[str, ...]
    operator_model: str
    claimed_groups: tuple[str, ...]
    claimed_model: str
    tags: dict[str, str]
    online: bool
    last_seen: float
    first_seen: float
    current_version: str
    installed: tuple[dict[str, str], ...]
    client_version: str
    free_bytes: int | None
    limited: int = 0  # messages ingestion dropped from it (rate limit, size caps)
    limited_at: float | None = None  # when the last one was dropped
    limited_reason: str = ""

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(sorted({*self.registry_groups, *self.operator_groups}))

    @property
    def model(self) -> str:
        """The operator's model, else the provisioned one; empty when neither is known."""
        return self.operator_model or self.registry_model

    @property
    def claims_mismatch(self) -> bool:
        """The device claims a group it was not given, lacks a provisioned group (its
        configuration differs from the registry), or claims another model."""
        if not self.claimed_model:  # no inventory yet (its model is never empty)
            return False
        claimed = set(self.claimed_groups)
        if claimed - set(self.groups) or set(self.registry_groups) - claimed:
            return True
        return bool(self.model) and self.claimed_model != self.model

    def to_json(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "model": self.model,
            "groups": list(self.groups),
            "registry_groups": list(self.registry_groups),
            "registry_model": self.registry_model,
            "operator_groups": list(self.operator_groups),
            "operator_model": self.operator_model,
            "claimed_groups": list(self.claimed_groups),
            "claimed_model": self.claimed_model,
            "claims_mismatch": self.claims_mismatch,
            "tags": dict(self.tags),
            "online": self.online,
            "last_seen": self.last_seen,
            "first_seen": self.first_seen,
            "current_version": self.current_version,
            "installed": list(self.installed),
            "client_version": self.client_version,
            "free_bytes": self.free_bytes,
            "flagged": self.limited > 0,
            "limited": self.limited,
            "limited_at": self.limited_at,
            "limited_reason": self.limited_reason,
        }


@dataclass(frozen=True, slots=True)
class DeviceFilter:
    """Every given field must match; ``tag`` is ``key=value`` or ``key``."""

    group: str | None = None
    model: str | None = None
    online: bool | None = None
    version: str | None = None
    tag: str | None = None
    limit: int = 1000
    offset: int = 0
    # keyset paging: only devices whose id sorts after this one (the last of the previous
    # page), so a page costs its size wherever it is in the fleet; ``offset`` walks the
    # rows it skips and stays for older clients
    after: str | None = None


@dataclass(frozen=True, slots=True)
class TargetSelector:
    """Which registered devices a rollout covers, resolved by the database.

    A device is chosen when ``all`` is set, it is listed in ``devices``, or it is in one of
    ``groups`` (registry or operator groups); then it is left out when ``models`` is not
    empty, its model is known, and it is not among them (the release's models together
    with the target's). ``orchestrator.rollouts.select_targets`` is the same rule over
    records.
    """

    devices: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    all: bool = False


@dataclass(frozen=True, slots=True)
class TargetPreview:
    """What creating a rollout for a selector would take: how many devices it covers, and
    per other active rollout (the oldest that targets a device) how many of them it holds."""

    total: int
    held: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ReleaseRecord:
    id: int
    name: str
    version: str
    sha256: str  # hex
    size: int  # bytes
    models: tuple[str, ...]
    handler: str
    handler_args: dict[str, str]
    metadata: dict[str, str]
    created_at: float
    update_class: str = "feature"  # or "security" (issue 17)
    advisory: dict[str, Any] | None = None  # a security release's, as its notices carry it
    # A system release's (handler "system", issue 18): name, handler, sha256, size each.
    components: tuple[dict[str, Any], ...] = ()
    holds: dict[str, int] | None = None  # caps on device holds (issue 18); 0: urgent

    @property
    def security(self) -> bool:
        return self.update_class == "security"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "size": self.size,
            "models": list(self.models),
            "handler": self.handler,
            "handler_args": dict(self.handler_args),
            "metadata": dict(self.metadata),
            "created_at": self.created_at,
            "update_class": self.update_class,
            "advisory": self.advisory,
            "components": [dict(c) for c in self.components],
            "holds": self.holds,
        }


@dataclass(frozen=True, slots=True)
class RolloutRecord:
    id: int
    release_id: int
    target: dict[str, Any]
    spec: RolloutSpec
    state: str  # policy.ROLLOUT_STATES
    phase: int
    phase_started_at: float | None
    gate_met_at: float | None
    reason: str
    failure_base: int
    attempt_base: int
    created_at: float
    updated_at: float
    created_by: str
    # Four-eyes approval: "" (not required), "pending", "approved" or "rejected"; who
    # approved or rejected it, and when.
    approval: str = ""
    decided_by: str = ""
    decided_at: float | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_ROLLOUT_STATES

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "release_id": self.release_id,
            "target": self.target,
            "spec": self.spec.to_json(),
            "state": self.state,
            "phase": self.phase,
            "phase_started_at": self.phase_started_at,
            "gate_met_at": self.gate_met_at,
            "reason": self.reason,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "created_by": self.created_by,
            "approval": {
                "required": bool(self.approval),
                "state": self.approval,
                "decided_by": self.decided_by,
                "decided_at": self.decided_at,
            },
        }


@dataclass(frozen=True, slots=True)
class TargetRecord:
    rollout_id: int
    device_id: str
    position: int
    phase: int
    state: str
    delivered: bool
    notice_id: str | None
    notified_at: float | None
    updated_at: float
    reason: str
    attempts: int
    components: list[dict[str, str]] | None = None  # a system update's, as last reported

    def to_json(self) -> dict[str, Any]:
        extra = {"components": self.components} if self.components is not None else {}
        return {
            **extra,
            "device_id": self.device_id,
            "phase": self.phase,
            "state": self.state,
            "delivered": self.delivered,
            "notice_id": self.notice_id,
            "notified_at": self.notified_at,
            "updated_at": self.updated_at,
            "reason": self.reason,
            "attempts": self.attempts,
        }


@dataclass(frozen=True, slots=True)
class NoticeRecord:
    notice_id: str
    device_id: str
    rollout_id: int
    kind: str  # "notice" or "cancel"
    scope: str
    seq: int
    topic: str
    issued_at: float
    expires_at: float
    envelope: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: float
    actor: str
    action: str
    subject: str
    detail: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at,
            "actor": self.actor,
            "action": self.action,
            "subject": self.subject,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class TokenRecord:
    name: str
    role: str
    created_at: float
    revoked: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "created_at": self.created_at,
            "revoked": self.revoked,
        }


@dataclass(slots=True)
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0  # stored, but about a notice that is not this device's
    presence: int = 0
    inventory: int = 0
    # counters of each device's reports now stored (new or duplicate), to acknowledge
    stored: dict[str, list[int]] = field(default_factory=dict)
