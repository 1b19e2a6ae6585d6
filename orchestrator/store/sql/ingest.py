"""Ingestion: device reports, presence and inventory, one transaction per batch."""

# SQL text is built only from constant column lists and "?" marks; values are bound.
# ruff: noqa: S608

from __future__ import annotations

import json
from collections.abc import Sequence

from fleetpush_protocol.messages import Inventory, Presence, Report
from orchestrator.rules import SENT
from orchestrator.store.records import IngestResult
from orchestrator.store.rules import (
    StoredPresence,
    presence_applies,
    report_accepted,
    reported_components,
)
from orchestrator.store.sql.base import marks
from orchestrator.store.sql.outputs import OutputMethods

__all__ = ["IngestMethods"]

# Row values per statement in set-based lookups: below SQLite's oldest variable limit (999).
_CHUNK = 400
# Reports per INSERT: 15 values each, within that oldest limit too.
_INSERT_CHUNK = 60
# Named, not in table order: columns added by later migrations may come in any order.
_REPORT_COLS = (
    "device_id, counter, notice_id, rollout_id, state, current_version, reported_at, "
    "received_at, error_code, error_message, accepted, detail, downloaded, hold_reason, "
    "hold_until"
)
_REPORT_MARKS = f"({marks(15)})"


class IngestMethods(OutputMethods):
    # notice_id -> (device_id, rollout_id); a notice's owner never changes once stored
    _notice_owner: dict[str, tuple[str, int]]
    _rollout_parts: dict[int, tuple[str, ...]]  # rollout id -> its release's component names

    def _owner(self, notice_id: str) -> tuple[str, int] | None:
        owner = self._notice_owner.get(notice_id)
        if owner is None:
            row = self._execute(
                "SELECT device_id, rollout_id FROM notices WHERE notice_id = ?", (notice_id,)
            ).fetchone()
            if row is None:
                return None
            owner = (row[0], int(row[1]))
            if len(self._notice_owner) > 200_000:
                self._notice_owner.clear()
            self._notice_owner[notice_id] = owner
        return owner

    def _release_parts(self, rollout_id: int) -> tuple[str, ...]:
        """The component names of the rollout's release, in order (a rollout's release never
        changes; a single-payload release has none)."""
        parts = self._rollout_parts.get(rollout_id)
        if parts is None:
            row = self._execute(
                "SELECT r.components FROM rollouts o JOIN releases r ON r.id = o.release_id "
                "WHERE o.id = ?",
                (rollout_id,),
            ).fetchone()
            parts = tuple(str(c["name"]) for c in json.loads(row[0])) if row and row[0] else ()
            if len(self._rollout_parts) > 10_000:
                self._rollout_parts.clear()
            self._rollout_parts[rollout_id] = parts
        return parts

    def ingest(self, batch: Sequence[Report | Presence | Inventory], now: float) -> IngestResult:
        """Apply one batch of device messages in one transaction.

        Reports are deduplicated by ``(device_id, counter)``; a report about a notice that
        was not sent to that device is stored with ``accepted = 0`` and changes nothing
        (``rules.report_accepted``).
        """
        result = IngestResult()
        reports: list[Report] = []
        presence: list[Presence] = []
        with self._tx():
            for msg in batch:
                if isinstance(msg, Report):
                    reports.append(msg)
                elif isinstance(msg, Presence):
                    presence.append(msg)
                    result.presence += 1
                else:
                    self._ingest_inventory(msg, now)
                    result.inventory += 1
            if presence:
                self._ingest_presence(presence, now)
            if reports:
                self._ingest_reports(reports, now, result)
            self._bump("reports_ingested", result.accepted)
            self._bump("reports_duplicate", result.duplicates)
            self._bump("reports_rejected", result.rejected)
        return result

    def _ingest_reports(self, reports: list[Report], now: float, result: IngestResult) -> None:
        batch: dict[tuple[str, int], Report] = {}
        stored = result.stored
        for r in reports:
            # stored once this transaction commits, new or not: the broker may be acked
            key = (r.device_id, r.counter)
            stored.setdefault(key[0], []).append(key[1])
            if key in batch:
                result.duplicates += 1  # the same report twice in one batch (redelivery)
            else:
                batch[key] = r
        rows = []
        owners: list[tuple[str, int] | None] = []
        for r in batch.values():
            error = r.error
            owner = self._owner(r.notice_id)
            owners.append(owner if report_accepted(owner, r) else None)
            rows.append((
                r.device_id, r.counter, r.notice_id, r.rollout_id, r.state.value,
                r.current_version, r.reported_at, now, error.code if error else None,
                error.message if error else None, 0 if owners[-1] is None else 1,
                r.detail if isinstance(r.detail, str) else None,
                r.downloaded if isinstance(r.downloaded, int) else None,
                r.hold_reason if isinstance(r.hold_reason, str) else None,
                r.hold_until if isinstance(r.hold_until, int) else None,
            ))  # fmt: skip
        # In key order: replicas inserting overlapping batches lock in one order.
        rows.sort(key=lambda row: (row[0], row[1]))
        # Stored exactly once: what the insert returns is what no one (no earlier batch, no
        # other replica) stored before; only that counts and moves a target. Many rows per
        # statement: the statement, not the row, is what costs on this path.
        inserted: set[tuple[str, int]] = set()
        for i in range(0, len(rows), _INSERT_CHUNK):
            chunk = rows[i : i + _INSERT_CHUNK]
            inserted.update(
                (r[0], int(r[1]))
                for r in self._execute(
                    f"INSERT INTO reports ({_REPORT_COLS}) "
                    f"VALUES {','.join([_REPORT_MARKS] * len(chunk))} "
                    "ON CONFLICT (device_id, counter) DO NOTHING RETURNING device_id, counter",
                    [v for row in chunk for v in row],
                ).fetchall()
            )
        # Per target, only the latest new report matters: reports of one notice may arrive
        # out of order and only a later counter moves it (``last_counter < ?``), so applying
        # the batch's highest counter alone leaves the row as applying each in turn would.
        latest: dict[tuple[int, str, str], Report] = {}
        downloads: dict[tuple[int, str, str], int] = {}  # bytes a device says it downloaded
        seen: dict[str, str] = {}
        outputs: list[tuple[Report, int]] = []  # new accepted reports with a failure output
        for (key, r), owner in zip(batch.items(), owners, strict=True):
            if key not in inserted:
                result.duplicates += 1
                continue
            seen[r.device_id] = r.current_version
            if owner is None:
                result.rejected += 1
                continue
            result.accepted += 1
            if r.output:
                outputs.append((r, owner[1]))
            target = (owner[1], r.device_id, r.notice_id)
            if isinstance(r.downloaded, int):
                downloads[target] = r.downloaded
            prev = latest.get(target)
            if prev is None or prev.counter < r.counter:
                latest[target] = r
        self._store_outputs(outputs, now)
        updates = []
        for (rollout_id, device_id, notice_id), r in sorted(latest.items()):  # one lock order
            error = r.error
            reason = f"{error.code}: {error.message}"[:500] if error else ""
            updates.append(
                (r.state.value, now, r.counter, reason, rollout_id, device_id, notice_id,
                 r.counter)
            )  # fmt: skip
        self._executemany(
            "UPDATE rollout_targets SET state = ?, updated_at = ?, last_counter = ?, "
            "delivered = 1, reason = ? WHERE rollout_id = ? AND device_id = ? "
            "AND notice_id = ? AND last_counter < ?",
            updates,
        )
        # A system update's component states (issue 18), from the report that is now the
        # target's last one (an older report arriving later changes nothing).
        # Never trusted past the release's own list (rules.reported_components).
        parts = [(t, r, reported_components(self._release_parts(t[0]), r.components))
                 for t, r in sorted(latest.items()) if r.components]  # fmt: skip
        self._executemany(
            "UPDATE rollout_targets SET components = ? WHERE rollout_id = ? AND device_id = ? "
            "AND notice_id = ? AND last_counter = ?",
            [(json.dumps(found), *t, r.counter) for t, r, found in parts if found],
        )
        # Apart from the state: the `downloaded` report is rarely a batch's latest.
        self._executemany(
            "UPDATE rollout_targets SET downloaded_bytes = ? "
            "WHERE rollout_id = ? AND device_id = ? AND notice_id = ?",
            [(n, *t) for t, n in sorted(downloads.items())],
        )
        self._count_downloads([(t[0], n) for t, n in sorted(downloads.items())])
        self._executemany(
            "INSERT INTO devices (device_id, first_seen, last_seen, current_version) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET "
            "last_seen = excluded.last_seen, current_version = excluded.current_version",
            [(d, now, now, v) for d, v in sorted(seen.items())],
        )

    def _count_downloads(self, downloads: list[tuple[int, int]]) -> None:
        """Counters of bytes downloaded, and saved against the full payloads (metrics)."""
        if not downloads:
            return
        sizes: dict[int, int] = {}
        for rollout_id in sorted({rid for rid, _ in downloads}):
            row = self._execute(
                "SELECT releases.size FROM rollouts JOIN releases "
                "ON releases.id = rollouts.release_id WHERE rollouts.id = ?",
                (rollout_id,),
            ).fetchone()
            sizes[rollout_id] = int(row[0]) if row else 0
        self._bump("payload_bytes_downloaded", sum(n for _, n in downloads))
        self._bump("payload_bytes_saved", sum(sizes[rid] - n for rid, n in downloads))

    def flag_devices(self, dropped: dict[tuple[str, str], int], now: float) -> None:
        """Record that ingestion dropped ``count`` messages of ``(device, reason)``, and
        count them by reason (``messages_<reason>``)."""
        by_reason: dict[str, int] = {}
        for (_, why), n in dropped.items():
            by_reason[why] = by_reason.get(why, 0) + n
        with self._tx():
            self._executemany(
                "INSERT INTO devices (device_id, first_seen, last_seen, limited, limited_at, "
                "limited_reason) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE "
                "SET limited = devices.limited + excluded.limited, "
                "limited_at = excluded.limited_at, limited_reason = excluded.limited_reason",
                [(d, now, now, n, now, why) for (d, why), n in sorted(dropped.items())],
            )
            for why, n in sorted(by_reason.items()):
                self._bump(f"messages_{why}", n)

    def prune_reports(
        self, *, keep: int, before: float, after_device: str, limit: int, keep_outputs: int = 20
    ) -> tuple[int, str | None]:
        """Delete stored reports beyond the newest ``keep`` of each device, and those
        received before ``before``: at most ``limit`` rows, device by device after
        ``after_device``. Returns (rows deleted, where to continue; None when done).
        The failure outputs of deleted reports go too, and those beyond the device's newest
        ``keep_outputs``.
        """
        deleted = 0
        outputs = 0
        cursor = after_device
        with self._tx():
            devices = self._execute(
                "SELECT device_id FROM devices WHERE device_id > ? ORDER BY device_id LIMIT ?",
                (after_device, limit),
            ).fetchall()
            for (device_id,) in devices:
                row = self._execute(
                    "SELECT counter FROM reports WHERE device_id = ? ORDER BY counter DESC "
                    "LIMIT 1 OFFSET ?",
                    (device_id, keep),
                ).fetchone()
                deleted += self._execute(
                    "DELETE FROM reports WHERE device_id = ? AND counter IN (SELECT counter "
                    "FROM reports WHERE device_id = ? AND (counter <= ? OR received_at < ?) "
                    "ORDER BY counter LIMIT ?)",
                    (device_id, device_id, int(row[0]) if row else 0, before, limit - deleted),
                ).rowcount
                outputs += self._prune_outputs(
                    device_id, int(row[0]) if row else 0, before, keep_outputs
                )
                if deleted >= limit:
                    break  # this device may have more: the next call starts with it again
                cursor = device_id
            self._bump("reports_pruned", deleted)
            self._bump("outputs_pruned", outputs)
        done = deleted < limit and len(devices) < limit
        return deleted, None if done else cursor

    def _stored_presence(self, device_ids: list[str]) -> dict[str, StoredPresence]:
        out: dict[str, StoredPresence] = {}
        for i in range(0, len(device_ids), _CHUNK):
            chunk = device_ids[i : i + _CHUNK]
            for r in self._execute(
                f"SELECT device_id, online, presence_at FROM devices WHERE device_id IN "
                f"({marks(len(chunk))}) ORDER BY device_id" + self.dialect.for_update,
                chunk,
            ):
                out[r[0]] = StoredPresence(bool(r[1]), float(r[2]))
        return out

    def _ingest_presence(self, batch: list[Presence], now: float) -> None:
        stored = self._stored_presence(sorted({p.device_id for p in batch}))
        came_online: list[str] = []
        # Device order (stable: each device's messages keep theirs), so replicas writing
        # overlapping batches lock the rows in one order.
        for p in sorted(batch, key=lambda p: p.device_id):
            current = stored.get(p.device_id)
            if current is None:
                self._execute(
                    "INSERT INTO devices (device_id, first_seen) VALUES (?, ?) "
                    "ON CONFLICT (device_id) DO NOTHING",
                    (p.device_id, now),
                )
            if presence_applies(current, p.at):
                self._execute(
                    "UPDATE devices SET online = ?, presence_at = ?, last_seen = ? "
                    "WHERE device_id = ?",
                    (int(p.online), p.at, now, p.device_id),
                )
                stored[p.device_id] = StoredPresence(p.online, p.at)
            else:
                self._execute(
                    "UPDATE devices SET last_seen = ? WHERE device_id = ?", (now, p.device_id)
                )
            if p.online:
                came_online.append(p.device_id)
        # Notices sent while a device was offline are delivered now: their timeouts start.
        self._executemany(
            "UPDATE rollout_targets SET delivered = 1, updated_at = ? "
            "WHERE device_id = ? AND state = ? AND delivered = 0",
            [(now, d, SENT) for d in came_online],
        )

    def _ingest_inventory(self, inv: Inventory, now: float) -> None:
        installed = [{"name": r.name, "version": r.version} for r in inv.installed]
        version = inv.installed[0].version if inv.installed else ""
        # The groups and model a device states are stored as its claims only: targeting
        # reads the registry's and the operator's (``DeviceRecord``).
        self._execute(
            "INSERT INTO devices (device_id, claimed_model, claimed_groups, installed, "
            "client_version, free_bytes, current_version, first_seen, last_seen) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET "
            "claimed_model = excluded.claimed_model, claimed_groups = excluded.claimed_groups, "
            "installed = excluded.installed, client_version = excluded.client_version, "
            "free_bytes = excluded.free_bytes, current_version = excluded.current_version, "
            "last_seen = excluded.last_seen",
            (
                inv.device_id, inv.model, json.dumps(sorted(inv.groups)), json.dumps(installed),
                inv.client_version, inv.free_bytes, version, now, now,
            ),
        )  # fmt: skip
