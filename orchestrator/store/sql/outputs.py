"""Failure outputs (issue 18): stored with their report, read per device and per rollout."""

# SQL text is built only from constant column lists and "?" marks; values are bound.
# ruff: noqa: S608

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fleetpush_protocol.messages import Report
from orchestrator.evidence import OutputRecord, dump_output
from orchestrator.store.sql.base import SqlBase, marks

__all__ = ["OutputMethods"]

_COLS = (
    "o.device_id, o.counter, o.rollout_id, o.notice_id, o.state, o.reported_at, "
    "o.received_at, o.error_code, o.error_message, "
    "COALESCE(rel.name || '@' || rel.version, ''), o.output"
)
_FROM = (
    "report_outputs o LEFT JOIN rollouts r ON r.id = o.rollout_id "
    "LEFT JOIN releases rel ON rel.id = r.release_id"
)
_CHUNK = 400  # device ids per IN list, below SQLite's oldest variable limit


def _record(row: Sequence[Any]) -> OutputRecord:
    return OutputRecord(
        device_id=row[0], counter=int(row[1]), rollout_id=int(row[2]), notice_id=row[3],
        state=row[4], reported_at=int(row[5]), received_at=float(row[6]),
        error_code=row[7], error_message=row[8], release=row[9], output=row[10],
    )  # fmt: skip


class OutputMethods(SqlBase):
    def _store_outputs(self, reports: Sequence[tuple[Report, int]], now: float) -> None:
        """Keep the output of each new, accepted report ``(report, rollout id)`` that has
        one (already cleaned and bounded by ``orchestrator.evidence.accept_output``)."""
        rows = [
            (r.device_id, r.counter, rollout_id, r.notice_id, r.state.value, r.reported_at,
             now, r.error.code if r.error else "", r.error.message if r.error else "",
             dump_output(r.output))
            for r, rollout_id in reports if r.output
        ]  # fmt: skip
        self._executemany(
            f"INSERT INTO report_outputs VALUES ({marks(10)}) "
            "ON CONFLICT (device_id, counter) DO NOTHING",
            sorted(rows, key=lambda row: (row[0], row[1])),
        )

    def _prune_outputs(self, device_id: str, counter: int, before: float, keep: int) -> int:
        """Delete the device's outputs of reports up to ``counter`` (those pruned), received
        before ``before``, or beyond its newest ``keep``."""
        row = self._execute(
            "SELECT counter FROM report_outputs WHERE device_id = ? ORDER BY counter DESC "
            "LIMIT 1 OFFSET ?",
            (device_id, keep),
        ).fetchone()
        cutoff = max(counter, int(row[0]) if row else 0)
        return self._execute(
            "DELETE FROM report_outputs WHERE device_id = ? AND (counter <= ? OR received_at < ?)",
            (device_id, cutoff, before),
        ).rowcount

    def device_outputs(
        self, device_id: str, rollout_id: int | None = None, limit: int = 20
    ) -> list[OutputRecord]:
        """The device's stored failure outputs, newest first (of one rollout if given)."""
        where = "o.device_id = ?"
        args: list[Any] = [device_id]
        if rollout_id is not None:
            where += " AND o.rollout_id = ?"
            args.append(rollout_id)
        return [
            _record(r)
            for r in self._execute(
                f"SELECT {_COLS} FROM {_FROM} WHERE {where} ORDER BY o.counter DESC LIMIT ?",
                [*args, limit],
            )
        ]

    def rollout_outputs(
        self, rollout_id: int, device_ids: Sequence[str]
    ) -> dict[str, OutputRecord]:
        """The latest stored failure output of each of ``device_ids`` in the rollout."""
        out: dict[str, OutputRecord] = {}
        ids = sorted(set(device_ids))
        for i in range(0, len(ids), _CHUNK):
            chunk = ids[i : i + _CHUNK]
            for r in self._execute(
                f"SELECT {_COLS} FROM {_FROM} WHERE o.rollout_id = ? AND o.device_id IN "
                f"({marks(len(chunk))}) ORDER BY o.device_id, o.counter DESC",
                [rollout_id, *chunk],
            ):
                out.setdefault(r[0], _record(r))
        return out
