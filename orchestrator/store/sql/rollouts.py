"""Rollouts and their targets: one row per device of a rollout, moved by the engine."""

# SQL text is built only from constant column lists and "?" marks; values are bound.
# ruff: noqa: S608

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from orchestrator.rules import (
    ACTIVE_ROLLOUT_STATES,
    AWAITING_APPROVAL,
    FAILURE_STATES,
    IN_FLIGHT_STATES,
    PENDING,
    TIMED_OUT,
    PhaseCounts,
    RolloutSpec,
)
from orchestrator.store.base import ConflictError, NotFoundError
from orchestrator.store.records import RolloutRecord, TargetRecord
from orchestrator.store.rules import timeout_reason
from orchestrator.store.sql import rows
from orchestrator.store.sql.base import marks
from orchestrator.store.sql.releases import ReleaseMethods

__all__ = ["RolloutMethods"]

logger = logging.getLogger(__name__)

# A rollout's targets counted by phase, state and delivery, under a WHERE of the caller's.
_BY_PHASE = (
    "SELECT phase, state, delivered, COUNT(*) FROM rollout_targets "
    "WHERE {where} GROUP BY phase, state, delivered"
)

_IN_FLIGHT = tuple(sorted(IN_FLIGHT_STATES))
_FAILURES = tuple(sorted(FAILURE_STATES))
_UPDATABLE = frozenset({
    "state", "phase", "phase_started_at", "gate_met_at", "reason", "failure_base",
    "attempt_base", "approval", "decided_by", "decided_at",
})  # fmt: skip


class RolloutMethods(ReleaseMethods):
    def create_rollout(
        self,
        *,
        release_id: int,
        target: dict[str, Any],
        spec: RolloutSpec,
        assignments: Sequence[tuple[str, int, int]],
        now: float,
        actor: str,
        approval: bool = False,
        hold: bool = False,
    ) -> RolloutRecord:
        if approval:
            state = AWAITING_APPROVAL
        elif hold or (spec.start_at is not None and spec.start_at > now):
            # held: its creator starts it in a transaction of its own (a security
            # rollout's take-over, supersede.start); the engine does if the creator died
            state = "scheduled"
        else:
            state = "running"
        with self._tx():
            self.get_release(release_id)
            row = self._execute(
                "INSERT INTO rollouts (release_id, target, spec, state, phase, phase_started_at,"
                " created_at, updated_at, created_by, approval) "
                "VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?, ?) RETURNING id",
                (
                    release_id, json.dumps(target), json.dumps(spec.to_json()), state,
                    now if state == "running" else None, now, now, actor,
                    "pending" if approval else "",
                ),
            ).fetchone()  # fmt: skip
            rid = int(row[0])
            self._executemany(
                "INSERT INTO rollout_targets (rollout_id, device_id, position, phase, "
                "updated_at) VALUES (?, ?, ?, ?, ?)",
                [(rid, d, pos, ph, now) for d, pos, ph in assignments],
            )
            self._grow_phases(rid, Counter(ph for _, _, ph in assignments))
            return self.get_rollout(rid)

    def get_rollout(self, rollout_id: int) -> RolloutRecord:
        row = self._execute(
            f"SELECT {rows.ROLLOUT_COLS} FROM rollouts WHERE id = ?", (rollout_id,)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no rollout {rollout_id}")
        return rows.rollout(row)

    def list_rollouts(self, states: Sequence[str] = ()) -> list[RolloutRecord]:
        sql = f"SELECT {rows.ROLLOUT_COLS} FROM rollouts"
        if states:
            sql += f" WHERE state IN ({marks(len(states))})"
        return [rows.rollout(r) for r in self._execute(sql + " ORDER BY id", tuple(states))]

    def update_rollout(
        self,
        rollout_id: int,
        now: float,
        *,
        expect: tuple[str, int | None] | None = None,
        **fields: Any,
    ) -> RolloutRecord:
        """Set ``fields``; with ``expect`` = (state, phase), only if the rollout is still
        in that state and phase (phase None: any), a compare-and-set: another replica or an
        operator may have moved it since it was read.

        Raises:
            ConflictError: ``expect`` no longer holds; nothing was changed.
        """
        bad = set(fields) - _UPDATABLE
        if bad:
            raise ValueError(f"cannot update rollout fields {sorted(bad)}")
        sets = ", ".join(f"{k} = ?" for k in fields)
        where = "id = ?"
        args: list[Any] = [rollout_id]
        if expect is not None:
            where += " AND state = ?"
            args.append(expect[0])
            if expect[1] is not None:
                where += " AND phase = ?"
                args.append(expect[1])
        with self._tx():
            changed = self._execute(
                f"UPDATE rollouts SET {sets}, updated_at = ? WHERE {where}",
                (*fields.values(), now, *args),
            ).rowcount
            r = self.get_rollout(rollout_id)
            if not changed:
                raise ConflictError(
                    f"rollout {rollout_id} changed meanwhile: it is {r.state} in phase "
                    f"{r.phase + 1} now"
                )
            return r

    def phase_counts(self, rollout_id: int) -> dict[int, PhaseCounts]:
        """Each phase's devices by state. Only the targets that left ``pending`` are read
        (the two ranges of ``rollout_targets_state`` around it); the pending are the
        phase's size less those, so a pass while a million devices wait costs what the
        notified ones cost.
        Two reads, no transaction: targets added between them are pending, so at worst
        they are missing from this pass's counts."""
        sizes = {
            int(phase): int(size)
            for phase, size in self._execute(
                "SELECT phase, size FROM rollout_phase_sizes WHERE rollout_id = ?",
                (rollout_id,),
            )
        }
        # Two ranges of the index, one statement each: as one OR, SQLite walked the
        # rollout's whole key instead.
        moved_on = _BY_PHASE.format(where="rollout_id = ? AND state {} ?")
        counts = {phase: PhaseCounts() for phase in sizes}
        counts |= self._tally(
            f"{moved_on.format('<')} UNION ALL {moved_on.format('>')}",
            (rollout_id, PENDING, rollout_id, PENDING),
        )
        short = False
        for phase, c in counts.items():
            if sizes.get(phase, 0) > c.total:
                c.add(PENDING, False, sizes[phase] - c.total)
            short |= sizes.get(phase, 0) < c.total
        # "No device waits" completes a rollout or judges a phase finished: it is checked
        # against the targets themselves (one index probe), so sizes that fall short (rows
        # written by a fleetpush older than migration 13, or by hand) cannot finish a
        # rollout nobody was notified of. Short sizes are counted again from the rows.
        if short or not any(c.pending for c in counts.values()):
            waiting = self._execute(
                "SELECT 1 FROM rollout_targets WHERE rollout_id = ? AND state = ? LIMIT 1",
                (rollout_id, PENDING),
            ).fetchone()
            if short or waiting is not None:
                logger.warning("rollout %d: phase sizes out of step; recounted", rollout_id)
                return self._resize_phases(rollout_id)
        return {phase: c for phase, c in counts.items() if c.total}

    def _resize_phases(self, rollout_id: int) -> dict[int, PhaseCounts]:
        """Count every target of a rollout (linear) and size its phases from that."""
        with self._tx():
            counts = self._tally(_BY_PHASE.format(where="rollout_id = ?"), (rollout_id,))
            # Set, not added: two replicas recounting at once must not double a size.
            self._execute("DELETE FROM rollout_phase_sizes WHERE rollout_id = ?", (rollout_id,))
            self._executemany(
                "INSERT INTO rollout_phase_sizes (rollout_id, phase, size) VALUES (?, ?, ?) "
                "ON CONFLICT (rollout_id, phase) DO UPDATE SET size = excluded.size",
                [(rollout_id, phase, c.total) for phase, c in sorted(counts.items())],
            )
        return counts

    def _tally(self, sql: str, args: Sequence[Any]) -> dict[int, PhaseCounts]:
        """Phase counts from rows of (phase, state, delivered, count)."""
        counts: dict[int, PhaseCounts] = {}
        for phase, state, delivered, n in self._execute(sql, args):
            counts.setdefault(int(phase), PhaseCounts()).add(state, bool(delivered), int(n))
        return counts

    def _grow_phases(self, rollout_id: int, added: Mapping[int, int]) -> None:
        """Record targets added to a rollout's phases (``rollout_phase_sizes``)."""
        self._executemany(
            "INSERT INTO rollout_phase_sizes (rollout_id, phase, size) VALUES (?, ?, ?) "
            "ON CONFLICT (rollout_id, phase) DO UPDATE "
            "SET size = rollout_phase_sizes.size + excluded.size",
            [(rollout_id, phase, n) for phase, n in sorted(added.items()) if n],
        )

    def state_counts(self, rollout_id: int) -> dict[str, int]:
        return {
            r[0]: int(r[1])
            for r in self._execute(
                "SELECT state, COUNT(*) FROM rollout_targets WHERE rollout_id = ? GROUP BY state",
                (rollout_id,),
            )
        }

    def download_totals(self, rollout_id: int) -> tuple[int, int]:
        """(devices that said what they downloaded, the bytes they downloaded together)."""
        row = self._execute(
            "SELECT COUNT(downloaded_bytes), COALESCE(SUM(downloaded_bytes), 0) "
            "FROM rollout_targets WHERE rollout_id = ?",
            (rollout_id,),
        ).fetchone()
        return int(row[0]), int(row[1])

    def rollout_state_counts(self) -> dict[str, int]:
        return {
            r[0]: int(r[1])
            for r in self._execute("SELECT state, COUNT(*) FROM rollouts GROUP BY state")
        }

    def list_targets(
        self, rollout_id: int, state: str | None = None, limit: int = 1000
    ) -> list[TargetRecord]:
        sql = f"SELECT {rows.TARGET_COLS} FROM rollout_targets WHERE rollout_id = ?"
        args: list[Any] = [rollout_id]
        if state is not None:
            sql += " AND state = ?"
            args.append(state)
        sql += " ORDER BY position LIMIT ?"
        args.append(limit)
        return [rows.target(r) for r in self._execute(sql, args)]

    def pending_targets(
        self, rollout_id: int, max_phase: int, limit: int
    ) -> list[tuple[str, bool]]:
        """Pending devices of phases ``<= max_phase`` in order, with their online flag."""
        return [
            (r[0], bool(r[1]))
            for r in self._execute(
                "SELECT t.device_id, coalesce(d.online, 0) FROM rollout_targets t "
                "LEFT JOIN devices d ON d.device_id = t.device_id "
                "WHERE t.rollout_id = ? AND t.state = ? AND t.phase <= ? "
                "ORDER BY t.position LIMIT ?",
                (rollout_id, PENDING, max_phase, limit),
            )
        ]

    def succeeded_releases(self) -> dict[str, dict[str, int]]:
        """Device -> release name -> the release id of its most recent success (accepted
        reports only: a target's state moves on those). The most recent, not the highest:
        a device reverted to an older release runs that one again."""
        latest: dict[tuple[str, str], tuple[float, int]] = {}
        for device_id, name, release_id, at in self._execute(
            "SELECT t.device_id, rel.name, rel.id, t.updated_at FROM rollout_targets t "
            "JOIN rollouts r ON r.id = t.rollout_id JOIN releases rel ON rel.id = r.release_id "
            "WHERE t.state = 'succeeded'"
        ):
            key, seen = (device_id, name), (float(at), int(release_id))
            if key not in latest or seen > latest[key]:
                latest[key] = seen
        out: dict[str, dict[str, int]] = {}
        for (device_id, name), (_, release_id) in latest.items():
            out.setdefault(device_id, {})[name] = release_id
        return out

    def active_target_ids(self) -> set[str]:
        """Devices targeted by any scheduled, running or paused rollout."""
        found = self._execute(
            "SELECT DISTINCT t.device_id FROM rollout_targets t JOIN rollouts r "
            f"ON r.id = t.rollout_id WHERE r.state IN ({marks(len(ACTIVE_ROLLOUT_STATES))})",
            ACTIVE_ROLLOUT_STATES,
        )
        return {r[0] for r in found}

    def add_targets(
        self, rollout_id: int, device_ids: Sequence[str], phase: int, now: float
    ) -> int:
        """Append devices to a rollout in ``phase``, after its last position; devices it
        already targets are left as they are. Returns how many were added."""
        with self._tx():
            (last,) = self._execute(
                "SELECT coalesce(max(position), -1) FROM rollout_targets WHERE rollout_id = ?",
                (rollout_id,),
            ).fetchone()
            added = self._executemany(
                "INSERT INTO rollout_targets (rollout_id, device_id, position, phase, "
                "updated_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (rollout_id, device_id) DO NOTHING",
                [(rollout_id, d, int(last) + 1 + i, phase, now) for i, d in enumerate(device_ids)],
            )
            self._grow_phases(rollout_id, {phase: added})
            return added

    def time_out_targets(self, rollout_id: int, cutoff: float, now: float) -> int:
        """Delivered, unfinished targets silent since before ``cutoff`` become timed_out,
        with the reason ``rules.timeout_reason`` gives."""
        with self._tx():
            silent = self._execute(
                f"SELECT device_id, state, updated_at FROM rollout_targets{self.dialect.by_state} "
                f"WHERE rollout_id = ? AND delivered = 1 AND state IN ({marks(len(_IN_FLIGHT))}) "
                "AND updated_at < ? "
                # Device order, as the security take-over locks them: two orders could deadlock.
                "ORDER BY device_id" + self.dialect.for_update,
                (rollout_id, *_IN_FLIGHT, cutoff),
            ).fetchall()
            # The state is compared again: a report that landed since the SELECT wins.
            return self._executemany(
                "UPDATE rollout_targets SET reason = ?, state = ?, updated_at = ? "
                "WHERE rollout_id = ? AND device_id = ? AND state = ? AND updated_at = ?",
                [
                    (timeout_reason(state, now - at), TIMED_OUT, now, rollout_id, d, state, at)
                    for d, state, at in silent
                ],
            )

    def retry_failed(self, rollout_id: int, now: float) -> int:
        with self._tx():
            return self._execute(
                "UPDATE rollout_targets SET state = ?, reason = '', attempts = attempts + 1, "
                f"updated_at = ? WHERE rollout_id = ? AND state IN ({marks(len(_FAILURES))})",
                (PENDING, now, rollout_id, *_FAILURES),
            ).rowcount

    def cancel_device_targets(
        self, rollout_id: int, device_ids: Sequence[str], now: float, reason: str
    ) -> list[str]:
        """Cancel the unfinished targets of ``device_ids`` in the rollout (the rest of it
        goes on); return those that had a notice out."""
        notified: list[str] = []
        with self._tx():
            for d in device_ids:
                row = self._execute(
                    "SELECT state FROM rollout_targets WHERE rollout_id = ? AND device_id = ?"
                    + self.dialect.for_update,
                    (rollout_id, d),
                ).fetchone()
                if row is None or (row[0] != PENDING and row[0] not in IN_FLIGHT_STATES):
                    continue
                if row[0] != PENDING:
                    notified.append(d)
                self._execute(
                    "UPDATE rollout_targets SET state = 'canceled', reason = ?, updated_at = ? "
                    "WHERE rollout_id = ? AND device_id = ?",
                    (reason, now, rollout_id, d),
                )
        return notified

    def cancel_targets(self, rollout_id: int, now: float, reason: str) -> list[str]:
        """Cancel every unfinished target; return the devices that had a notice out."""
        with self._tx():
            notified = [
                r[0]
                for r in self._execute(
                    "SELECT device_id FROM rollout_targets WHERE rollout_id = ? "
                    f"AND state IN ({marks(len(_IN_FLIGHT))}) ORDER BY position"
                    + self.dialect.for_update,
                    (rollout_id, *_IN_FLIGHT),
                )
            ]
            self._execute(
                "UPDATE rollout_targets SET state = 'canceled', reason = ?, updated_at = ? "
                f"WHERE rollout_id = ? AND state IN ({marks(len(_IN_FLIGHT) + 1)})",
                (reason, now, rollout_id, PENDING, *_IN_FLIGHT),
            )
        return notified
