"""Column lists and the records built from their rows (the same on every backend)."""

from __future__ import annotations

import json
from typing import Any

from orchestrator.rules import RolloutSpec
from orchestrator.store.records import (
    DeviceRecord,
    NoticeRecord,
    ReleaseRecord,
    RolloutRecord,
    TargetRecord,
)

__all__ = [
    "DEVICE_COLS",
    "NOTICE_COLS",
    "RELEASE_COLS",
    "ROLLOUT_COLS",
    "TARGET_COLS",
    "device",
    "notice",
    "release",
    "rollout",
    "target",
]

DEVICE_COLS = (
    "device_id, registry_groups, registry_model, groups_, model, claimed_groups, claimed_model, "
    "tags, online, last_seen, first_seen, current_version, installed, client_version, free_bytes, "
    "limited, limited_at, limited_reason"
)
RELEASE_COLS = (
    "id, name, version, sha256, size, models, handler, handler_args, metadata, created_at, "
    "update_class, advisory, components, holds"
)
ROLLOUT_COLS = (
    "id, release_id, target, spec, state, phase, phase_started_at, gate_met_at, reason, "
    "failure_base, attempt_base, created_at, updated_at, created_by, approval, decided_by, "
    "decided_at"
)
TARGET_COLS = (
    "rollout_id, device_id, position, phase, state, delivered, notice_id, notified_at, "
    "updated_at, reason, attempts, components"
)
NOTICE_COLS = (
    "notice_id, device_id, rollout_id, kind, scope, seq, topic, issued_at, expires_at, envelope"
)


def device(row: Any) -> DeviceRecord:
    return DeviceRecord(
        device_id=row[0],
        registry_groups=tuple(json.loads(row[1])),
        registry_model=row[2],
        operator_groups=tuple(json.loads(row[3])),
        operator_model=row[4],
        claimed_groups=tuple(json.loads(row[5])),
        claimed_model=row[6],
        tags=json.loads(row[7]),
        online=bool(row[8]),
        last_seen=row[9],
        first_seen=row[10],
        current_version=row[11],
        installed=tuple(json.loads(row[12])),
        client_version=row[13],
        free_bytes=row[14],
        limited=row[15],
        limited_at=row[16],
        limited_reason=row[17],
    )


def release(row: Any) -> ReleaseRecord:
    return ReleaseRecord(
        id=row[0],
        name=row[1],
        version=row[2],
        sha256=row[3],
        size=row[4],
        models=tuple(json.loads(row[5])),
        handler=row[6],
        handler_args=json.loads(row[7]),
        metadata=json.loads(row[8]),
        created_at=row[9],
        update_class=row[10],
        advisory=json.loads(row[11]) if row[11] else None,
        components=tuple(json.loads(row[12])) if row[12] else (),
        holds=json.loads(row[13]) if row[13] else None,
    )


def rollout(row: Any) -> RolloutRecord:
    return RolloutRecord(
        id=row[0],
        release_id=row[1],
        target=json.loads(row[2]),
        spec=RolloutSpec.from_json(json.loads(row[3])),
        state=row[4],
        phase=row[5],
        phase_started_at=row[6],
        gate_met_at=row[7],
        reason=row[8],
        failure_base=row[9],
        attempt_base=row[10],
        created_at=row[11],
        updated_at=row[12],
        created_by=row[13],
        approval=row[14],
        decided_by=row[15],
        decided_at=row[16],
    )


def target(row: Any) -> TargetRecord:
    return TargetRecord(
        rollout_id=row[0],
        device_id=row[1],
        position=row[2],
        phase=row[3],
        state=row[4],
        delivered=bool(row[5]),
        notice_id=row[6],
        notified_at=row[7],
        updated_at=row[8],
        reason=row[9],
        attempts=row[10],
        components=json.loads(row[11]) if row[11] else None,
    )


def notice(row: Any) -> NoticeRecord:
    # bytes() as PostgreSQL's driver may hand a bytea back as a memoryview
    return NoticeRecord(
        notice_id=row[0],
        device_id=row[1],
        rollout_id=row[2],
        kind=row[3],
        scope=row[4],
        seq=row[5],
        topic=row[6],
        issued_at=row[7],
        expires_at=row[8],
        envelope=bytes(row[9]),
    )
