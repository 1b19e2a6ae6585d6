"""Which devices a rollout covers, resolved and inserted by the database.

A rollout for a million devices must not bring a million records into Python: the
selector becomes a WHERE clause, the device order (``policy.order_key``) a window
function, the phases (``policy.phase_bounds`` of a COUNT) a CASE, and the targets go in with one
``INSERT … SELECT``. ``orchestrator.rollouts.select_targets`` and ``assign_phases`` state
the same rules over records; the contract suite checks that both agree.
"""

# SQL text is built only from constant column lists and "?" marks; values are bound.
# ruff: noqa: S608

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from orchestrator.rules import ACTIVE_ROLLOUT_STATES, RolloutSpec, phase_bounds
from orchestrator.store.records import RolloutRecord, TargetPreview, TargetSelector
from orchestrator.store.sql.base import Dialect, marks
from orchestrator.store.sql.rollouts import RolloutMethods

__all__ = ["MODEL", "TargetingMethods", "in_groups", "selector_where"]

# A device's model: the operator's, else the provisioned one ("" when neither is known).
MODEL = "coalesce(nullif(devices.model, ''), devices.registry_model)"
_ACTIVE = f"r.state IN ({marks(len(ACTIVE_ROLLOUT_STATES))})"


def in_groups(groups: Sequence[str]) -> tuple[str, list[Any]]:
    """True when the device is in one of ``groups`` (its registry groups or the
    operator's), and the values to bind: a probe of the membership table
    (``device_groups``, which the store keeps with both lists), so a group of 10% of a
    million devices reads its 100k rows, not a million JSON arrays. The names are bound
    one by one (a target names a few groups): bound as one JSON list, they hid from
    PostgreSQL's planner how small a group is, and a 100-device group of 100k devices
    was counted by scanning them all (32-103 ms, against 0.5 ms)."""
    return (
        "devices.device_id IN (SELECT m.device_id FROM device_groups m "
        f"WHERE m.group_name IN ({marks(len(groups))}))",
        list(groups),
    )


def selector_where(dialect: Dialect, sel: TargetSelector) -> tuple[str, list[Any]]:
    """The WHERE clause (over ``devices``) of the devices ``sel`` covers, and its values.

    Lists are bound as one JSON value each, so a target naming 50,000 devices stays one
    statement under every driver's limit on bound values.
    """
    args: list[Any] = []
    if sel.all:
        match = "1 = 1"
    else:
        parts = []
        if sel.devices:
            parts.append(
                f"devices.device_id IN (SELECT l.value FROM {dialect.json_array('?', 'l')})"
            )
            args.append(json.dumps(list(sel.devices)))
        if sel.groups:
            sql, values = in_groups(sel.groups)
            parts.append(sql)
            args += values
        match = "(" + " OR ".join(parts) + ")" if parts else "1 = 0"
    if not sel.models:
        return match, args
    fits = f"({MODEL} = '' OR {MODEL} IN (SELECT m.value FROM {dialect.json_array('?', 'm')}))"
    return f"{match} AND {fits}", [*args, json.dumps(sorted(set(sel.models)))]


def _phase_case(bounds: Sequence[int]) -> tuple[str, list[Any]]:
    """The 0-based phase of ``pos`` as ``assign_phases`` gives it: the first phase whose
    cumulative bound (``phase_bounds``, from the count) exceeds the position."""
    if len(bounds) == 1:
        return "0", []
    whens = " ".join(f"WHEN pos < ? THEN {i}" for i in range(len(bounds) - 1))
    return f"CASE {whens} ELSE {len(bounds) - 1} END", list(bounds[:-1])


class TargetingMethods(RolloutMethods):
    def missing_devices(self, device_ids: Sequence[str]) -> list[str]:
        """Those of ``device_ids`` that are not registered, sorted."""
        if not device_ids:
            return []
        found = self._execute(
            f"SELECT l.value FROM {self.dialect.json_array('?', 'l')} WHERE NOT EXISTS "
            "(SELECT 1 FROM devices WHERE devices.device_id = l.value)",
            (json.dumps(list(device_ids)),),
        )
        return sorted({r[0] for r in found})

    def preview_targets(self, sel: TargetSelector) -> TargetPreview:
        """How many devices ``sel`` covers, and how many of them other active rollouts hold
        (each device counted for the oldest one), without reading them into Python."""
        with self._tx():
            self._fleet_wide()
            where, args = selector_where(self.dialect, sel)
            (total,) = self._execute(f"SELECT COUNT(*) FROM devices WHERE {where}", args).fetchone()
            active = self._execute(
                f"SELECT 1 FROM rollouts r WHERE {_ACTIVE} LIMIT 1", ACTIVE_ROLLOUT_STATES
            ).fetchone()
            if active is None:  # nothing can hold a device: the common case, no second pass
                return TargetPreview(int(total))
            # Driven from the selected devices, one index probe each (rollout_targets_device),
            # not by joining every target of every active rollout. The free devices come
            # back as owner NULL: a WHERE on the owner was pushed under the group's join by
            # PostgreSQL, and probed all 1,000,000 devices for a group of 100,000 (3.5 s).
            held = self._execute(
                "SELECT owner, COUNT(*) FROM (SELECT (SELECT MIN(t.rollout_id) FROM "
                "rollout_targets t JOIN rollouts r ON r.id = t.rollout_id WHERE "
                f"t.device_id = devices.device_id AND {_ACTIVE}) AS owner FROM devices "
                f"WHERE {where}) AS o GROUP BY owner",
                (*ACTIVE_ROLLOUT_STATES, *args),
            )
            owners = {int(r[0]): int(r[1]) for r in held if r[0] is not None}
            return TargetPreview(int(total), owners)

    def create_rollout_for(
        self,
        *,
        release_id: int,
        target: dict[str, Any],
        spec: RolloutSpec,
        selector: TargetSelector,
        key: str,
        now: float,
        actor: str,
        approval: bool = False,
        hold: bool = False,
    ) -> RolloutRecord:
        """``create_rollout`` with the targets resolved by the database: the devices
        ``selector`` covers, ordered by ``policy.order_key(key, device)`` and split into
        ``spec.phases`` as ``policy.assign_phases`` does, in one ``INSERT … SELECT``.

        The phase bounds come from a COUNT in the same snapshot (``Dialect.snapshot``):
        a window count over the whole fleet cost as much as the rest of the create (a
        million rows kept aside to be counted). Opens its own transaction."""
        with self._tx():
            if self.dialect.snapshot:
                self._execute(self.dialect.snapshot)
            r = self.create_rollout(
                release_id=release_id, target=target, spec=spec, assignments=(), now=now,
                actor=actor, approval=approval, hold=hold,
            )  # fmt: skip
            where, args = selector_where(self.dialect, selector)
            (total,) = self._execute(f"SELECT COUNT(*) FROM devices WHERE {where}", args).fetchone()
            bounds = phase_bounds(int(total), spec.phases)
            case, case_args = _phase_case(bounds)
            self._fleet_wide()
            added = self._execute(
                "INSERT INTO rollout_targets (rollout_id, device_id, position, phase, "
                f"updated_at) SELECT ?, device_id, pos, {case}, ? FROM (SELECT device_id, "
                "row_number() OVER (ORDER BY k) - 1 AS pos FROM "
                f"(SELECT devices.device_id, {self.dialect.order_key('?', 'devices.device_id')}"
                f" AS k FROM devices WHERE {where}) AS s) AS o",
                (r.id, *case_args, now, key, *args),
            ).rowcount
            self._analyzed("rollout_targets", added)
            if added == total:  # the snapshot makes them equal; were they not, count them
                self._grow_phases(
                    r.id,
                    {i: b - a for i, (a, b) in enumerate(zip([0, *bounds], bounds, strict=False))},
                )
            else:
                self._resize_phases(r.id)
            return r

    def follow_targets(
        self, rollout_id: int, selector: TargetSelector, skip_version: str, phase: int,
        now: float,
    ) -> int:  # fmt: skip
        """Add to a continuous rollout, in ``phase`` after its last position (in device
        order), the devices ``selector`` covers now that run another version than
        ``skip_version`` and that no active rollout targets. Returns how many joined."""
        where, args = selector_where(self.dialect, selector)
        with self._tx():
            self._fleet_wide()
            (last,) = self._execute(
                "SELECT coalesce(max(position), -1) FROM rollout_targets WHERE rollout_id = ?",
                (rollout_id,),
            ).fetchone()
            added: int = self._execute(
                "INSERT INTO rollout_targets (rollout_id, device_id, position, phase, "
                "updated_at) SELECT ?, device_id, ? + row_number() OVER (ORDER BY device_id), "
                "?, ? FROM devices WHERE devices.current_version <> ? AND NOT EXISTS (SELECT "
                "1 FROM rollout_targets t JOIN rollouts r ON r.id = t.rollout_id WHERE "
                f"t.device_id = devices.device_id AND {_ACTIVE}) AND {where}",
                (rollout_id, int(last), phase, now, skip_version, *ACTIVE_ROLLOUT_STATES,
                 *args),
            ).rowcount  # fmt: skip
            self._grow_phases(rollout_id, {phase: added})
            return added
