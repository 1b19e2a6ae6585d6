"""The SQLite (WAL) store: one connection, used from one thread only (see ``Database``)."""

# SQL text is built only from constant column lists and "?" marks; values are bound.
# ruff: noqa: S608

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from fleetpush_protocol.atomic import SECRET_FILE_MODE, make_private_dir
from fleetpush_protocol.messages import Inventory, Presence, Report
from orchestrator.policy import (
    ACTIVE_ROLLOUT_STATES,
    FAILURE_STATES,
    IN_FLIGHT_STATES,
    PENDING,
    SENT,
    PhaseCounts,
    RolloutSpec,
)
from orchestrator.store.base import ConflictError, NotFoundError
from orchestrator.store.records import (
    AuditEntry,
    DeviceFilter,
    DeviceRecord,
    IngestResult,
    NoticeRecord,
    ReleaseRecord,
    RolloutRecord,
    TargetRecord,
    TokenRecord,
)
from orchestrator.store.schema import MIGRATIONS

__all__ = ["SQLiteStore"]

logger = logging.getLogger(__name__)

_IN_FLIGHT = tuple(sorted(IN_FLIGHT_STATES))
_FAILURES = tuple(sorted(FAILURE_STATES))
_DEVICE_COLS = (
    "device_id, registry_groups, registry_model, groups_, model, claimed_groups, claimed_model, "
    "tags, online, last_seen, first_seen, current_version, installed, client_version, free_bytes"
)
_RELEASE_COLS = (
    "id, name, version, sha256, size, models, handler, handler_args, metadata, created_at"
)
_ROLLOUT_COLS = (
    "id, release_id, target, spec, state, phase, phase_started_at, gate_met_at, reason, "
    "failure_base, attempt_base, created_at, updated_at, created_by"
)
_TARGET_COLS = (
    "rollout_id, device_id, position, phase, state, delivered, notice_id, notified_at, "
    "updated_at, reason, attempts"
)
_NOTICE_COLS = (
    "notice_id, device_id, rollout_id, kind, scope, seq, topic, issued_at, expires_at, envelope"
)


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _device(row: sqlite3.Row) -> DeviceRecord:
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
    )


def _release(row: sqlite3.Row) -> ReleaseRecord:
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
    )


def _rollout(row: sqlite3.Row) -> RolloutRecord:
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
    )


def _target(row: sqlite3.Row) -> TargetRecord:
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
    )


def _notice(row: sqlite3.Row) -> NoticeRecord:
    return NoticeRecord(*row)


def _make_private_db(path: Path) -> None:
    """Create the database file 0600 (in a 0700 folder) before SQLite opens it.

    It holds signed payload URLs and token hashes. SQLite creates a missing file with
    0666 minus the umask, and gives ``-wal``/``-shm`` the main file's mode: creating it
    0600 first makes all three private whatever the umask. A file left group- or
    world-accessible by an older version is tightened, with a warning.
    """
    make_private_dir(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, SECRET_FILE_MODE)
    try:
        loose = os.fstat(fd).st_mode & 0o077
        if loose:
            os.fchmod(fd, SECRET_FILE_MODE)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        try:
            if side.stat().st_mode & 0o077:
                os.chmod(side, SECRET_FILE_MODE)
                loose = 1
        except FileNotFoundError:
            continue
    if loose:
        logger.warning("%s was readable by group or others; made it 0600", path)


class SQLiteStore:
    """Implements ``Store`` on one SQLite file in WAL mode.

    Args:
        path: the database file; created with its folder if missing.
        synchronous: ``NORMAL`` (default: durable across process kills, WAL) or ``FULL``
            (durable across power loss too).
    """

    def __init__(self, path: Path, *, synchronous: str = "NORMAL") -> None:
        _make_private_db(path)
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, timeout=30.0)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'FULL' else 'NORMAL'}")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.execute("PRAGMA busy_timeout=30000")
        # Ingestion commits a batch every ~100 ms: a larger page cache and fewer, larger
        # checkpoints (16 MiB of WAL instead of 4 MiB) keep COMMIT off the hot path.
        self.db.execute("PRAGMA cache_size=-65536")
        self.db.execute("PRAGMA temp_store=MEMORY")
        self.db.execute("PRAGMA wal_autocheckpoint=4096")
        self._notice_owner: dict[str, tuple[str, int]] = {}

    # --- lifecycle -----------------------------------------------------------------------

    def migrate(self) -> int:
        """Apply the migrations this file has not seen; return the schema version."""
        db = self.db
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = db.execute("SELECT version FROM schema_version").fetchone()
        version = row[0] if row else 0
        if version > len(MIGRATIONS):
            raise RuntimeError(
                f"{self.path}: schema version {version} is newer than this fleetpush "
                f"({len(MIGRATIONS)}); upgrade fleetpush"
            )
        for number, sql in enumerate(MIGRATIONS[version:], start=version + 1):
            logger.info("applying schema migration %d", number)
            db.execute("BEGIN IMMEDIATE")
            try:
                for statement in sql.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute("DELETE FROM schema_version")
                db.execute("INSERT INTO schema_version VALUES (?)", (number,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return len(MIGRATIONS)

    def close(self) -> None:
        self.db.close()

    def _tx(self) -> _Tx:
        return _Tx(self.db)

    # --- counters ------------------------------------------------------------------------

    def _bump(self, name: str, n: int) -> None:
        if n:
            self.db.execute(
                "INSERT INTO counters VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                (name, n),
            )

    def counters(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT name, value FROM counters").fetchall())

    # --- devices -------------------------------------------------------------------------

    def list_devices(self, f: DeviceFilter) -> list[DeviceRecord]:
        where: list[str] = []
        args: list[Any] = []
        if f.model is not None:
            where.append("coalesce(nullif(model, ''), registry_model) = ?")
            args.append(f.model)
        if f.online is not None:
            where.append("online = ?")
            args.append(int(f.online))
        if f.version is not None:
            where.append("current_version = ?")
            args.append(f.version)
        sql = f"SELECT {_DEVICE_COLS} FROM devices"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY device_id"
        devices = [_device(r) for r in self.db.execute(sql, args)]
        if f.group is not None:
            devices = [d for d in devices if f.group in d.groups]
        if f.tag is not None:
            key, sep, value = f.tag.partition("=")
            devices = [d for d in devices if key in d.tags and (not sep or d.tags[key] == value)]
        return devices[f.offset : f.offset + f.limit]

    def get_device(self, device_id: str) -> DeviceRecord:
        row = self.db.execute(
            f"SELECT {_DEVICE_COLS} FROM devices WHERE device_id = ?", (device_id,)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no device {device_id!r}")
        return _device(row)

    def ensure_devices(self, device_ids: Iterable[str], now: float) -> None:
        """Register devices known from provisioning before they ever connect."""
        with self._tx():
            self.db.executemany(
                "INSERT OR IGNORE INTO devices (device_id, first_seen) VALUES (?, ?)",
                [(d, now) for d in device_ids],
            )

    def set_device_labels(
        self,
        device_id: str,
        groups: Sequence[str] | None,
        tags: dict[str, str] | None,
        model: str | None = None,
    ) -> DeviceRecord:
        """Set the operator's groups, tags and model (``""`` clears it: the provisioned
        model applies again); ``None`` leaves a field as it is."""
        with self._tx():
            self.get_device(device_id)
            if model is not None:
                self.db.execute(
                    "UPDATE devices SET model = ? WHERE device_id = ?", (model, device_id)
                )
            if groups is not None:
                self.db.execute(
                    "UPDATE devices SET groups_ = ? WHERE device_id = ?",
                    (json.dumps(sorted(set(groups))), device_id),
                )
            if tags is not None:
                self.db.execute(
                    "UPDATE devices SET tags = ? WHERE device_id = ?",
                    (json.dumps(tags, sort_keys=True), device_id),
                )
        return self.get_device(device_id)

    def sync_registry(
        self, identities: Sequence[tuple[str, Sequence[str], str]], now: float
    ) -> int:
        """Make the provisioned groups and model of every device those of ``identities``
        (``(device_id, groups, model)``, the whole registry); a device no longer in it
        keeps its row but loses them. Returns how many devices changed."""
        with self._tx():
            before = {
                r[0]: (r[1], r[2])
                for r in self.db.execute(
                    "SELECT device_id, registry_groups, registry_model FROM devices "
                    "WHERE in_registry = 1"
                )
            }
            rows = {d: (json.dumps(sorted(set(g))), m) for d, g, m in identities}
            gone = [(d,) for d in before if d not in rows]
            self.db.executemany(
                "UPDATE devices SET registry_groups = '[]', registry_model = '', "
                "in_registry = 0 WHERE device_id = ?",
                gone,
            )
            changed = [(d, g, m, now) for d, (g, m) in rows.items() if before.get(d) != (g, m)]
            self.db.executemany(
                "INSERT INTO devices (device_id, registry_groups, registry_model, in_registry, "
                "first_seen) VALUES (?, ?, ?, 1, ?) ON CONFLICT (device_id) DO UPDATE SET "
                "registry_groups = excluded.registry_groups, "
                "registry_model = excluded.registry_model, in_registry = 1",
                changed,
            )
        return len(gone) + len(changed)

    def claims_mismatch_count(self) -> int:
        """Devices whose inventory claims differ from the registry (see ``DeviceRecord``)."""
        sql = f"SELECT {_DEVICE_COLS} FROM devices WHERE claimed_model != ''"
        return sum(_device(r).claims_mismatch for r in self.db.execute(sql))

    def device_history(self, device_id: str, limit: int = 50) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT counter, notice_id, rollout_id, state, current_version, reported_at, "
            "received_at, error_code, error_message, accepted FROM reports "
            "WHERE device_id = ? ORDER BY counter DESC LIMIT ?",
            (device_id, limit),
        ).fetchall()
        keys = (
            "counter", "notice_id", "rollout_id", "state", "current_version",
            "reported_at", "received_at", "error_code", "error_message", "accepted",
        )  # fmt: skip
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def online_count(self) -> int:
        row = self.db.execute("SELECT COUNT(*) FROM devices WHERE online = 1").fetchone()
        return int(row[0])

    # --- ingestion -----------------------------------------------------------------------

    def _owner(self, notice_id: str) -> tuple[str, int] | None:
        owner = self._notice_owner.get(notice_id)
        if owner is None:
            row = self.db.execute(
                "SELECT device_id, rollout_id FROM notices WHERE notice_id = ?", (notice_id,)
            ).fetchone()
            if row is None:
                return None
            owner = (row[0], row[1])
            if len(self._notice_owner) > 200_000:
                self._notice_owner.clear()
            self._notice_owner[notice_id] = owner
        return owner

    def ingest(self, batch: Sequence[Report | Presence | Inventory], now: float) -> IngestResult:
        """Apply one batch of device messages in one transaction.

        Reports are deduplicated by ``(device_id, counter)``; a report about a notice that
        was not sent to that device is stored with ``accepted = 0`` and changes nothing.
        """
        result = IngestResult()
        reports: list[Report] = []
        with self._tx():
            for msg in batch:
                if isinstance(msg, Report):
                    reports.append(msg)
                elif isinstance(msg, Presence):
                    self._ingest_presence(msg, now)
                    result.presence += 1
                else:
                    self._ingest_inventory(msg, now)
                    result.inventory += 1
            if reports:
                self._ingest_reports(reports, now, result)
            self._bump("reports_ingested", result.accepted)
            self._bump("reports_duplicate", result.duplicates)
            self._bump("reports_rejected", result.rejected)
        return result

    def _existing(self, keys: list[tuple[str, int]]) -> set[tuple[str, int]]:
        """Which of ``keys`` are stored already: one set-based lookup per batch."""
        db = self.db
        db.execute(
            "CREATE TEMP TABLE IF NOT EXISTS stage (device_id TEXT NOT NULL, "
            "counter INTEGER NOT NULL)"
        )
        db.execute("DELETE FROM temp.stage")
        db.executemany("INSERT INTO temp.stage VALUES (?, ?)", keys)
        return set(
            db.execute(
                "SELECT s.device_id, s.counter FROM temp.stage s WHERE EXISTS (SELECT 1 FROM "
                "reports r WHERE r.device_id = s.device_id AND r.counter = s.counter)"
            ).fetchall()
        )

    def _ingest_reports(self, reports: list[Report], now: float, result: IngestResult) -> None:
        keys = [(r.device_id, r.counter) for r in reports]
        skip = self._existing(keys)
        rows, updates = [], []
        seen: dict[str, tuple[float, str]] = {}
        for r in reports:
            key = (r.device_id, r.counter)
            if key in skip:
                result.duplicates += 1
                continue
            skip.add(key)
            owner = self._owner(r.notice_id)
            accepted = (
                owner is not None and owner[0] == r.device_id and str(owner[1]) == r.rollout_id
            )
            error = r.error
            rows.append((
                r.device_id, r.counter, r.notice_id, r.rollout_id, r.state.value,
                r.current_version, r.reported_at, now, error.code if error else None,
                error.message if error else None, int(accepted),
            ))  # fmt: skip
            seen[r.device_id] = (now, r.current_version)
            if not accepted or owner is None:
                result.rejected += 1
                continue
            result.accepted += 1
            reason = f"{error.code}: {error.message}"[:500] if error else ""
            updates.append(
                (r.state.value, now, r.counter, reason, owner[1], r.device_id, r.notice_id,
                 r.counter)
            )  # fmt: skip
        db = self.db
        db.executemany("INSERT INTO reports VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        db.executemany(
            "UPDATE rollout_targets SET state = ?, updated_at = ?, last_counter = ?, "
            "delivered = 1, reason = ? WHERE rollout_id = ? AND device_id = ? "
            "AND notice_id = ? AND last_counter < ?",
            updates,
        )
        db.executemany(
            "INSERT INTO devices (device_id, first_seen, last_seen, current_version) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET "
            "last_seen = excluded.last_seen, current_version = excluded.current_version",
            [(d, t, t, v) for d, (t, v) in seen.items()],
        )

    def _ingest_presence(self, p: Presence, now: float) -> None:
        self.db.execute(
            "INSERT INTO devices (device_id, online, presence_at, first_seen, last_seen) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET "
            "online = CASE WHEN excluded.presence_at >= presence_at THEN excluded.online "
            "ELSE online END, presence_at = max(presence_at, excluded.presence_at), "
            "last_seen = excluded.last_seen",
            (p.device_id, int(p.online), p.at, now, now),
        )
        if p.online:
            # Notices sent while it was offline are delivered now: their timeouts start.
            self.db.execute(
                "UPDATE rollout_targets SET delivered = 1, updated_at = ? "
                "WHERE device_id = ? AND state = ? AND delivered = 0",
                (now, p.device_id, SENT),
            )

    def _ingest_inventory(self, inv: Inventory, now: float) -> None:
        installed = [{"name": r.name, "version": r.version} for r in inv.installed]
        version = inv.installed[0].version if inv.installed else ""
        # The groups and model a device states are stored as its claims only: targeting
        # reads the registry's and the operator's (``DeviceRecord``).
        self.db.execute(
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

    # --- releases ------------------------------------------------------------------------

    def add_release(self, rec: ReleaseRecord) -> ReleaseRecord:
        try:
            with self._tx():
                cur = self.db.execute(
                    "INSERT INTO releases (name, version, sha256, size, models, handler, "
                    "handler_args, metadata, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        rec.name, rec.version, rec.sha256, rec.size, json.dumps(rec.models),
                        rec.handler, json.dumps(rec.handler_args), json.dumps(rec.metadata),
                        rec.created_at,
                    ),
                )  # fmt: skip
        except sqlite3.IntegrityError:
            raise ConflictError(f"release {rec.name} {rec.version} already exists") from None
        assert cur.lastrowid is not None  # noqa: S101 - an INSERT always sets it
        return self.get_release(cur.lastrowid)

    def get_release(self, release_id: int) -> ReleaseRecord:
        row = self.db.execute(
            f"SELECT {_RELEASE_COLS} FROM releases WHERE id = ?", (release_id,)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no release {release_id}")
        return _release(row)

    def find_release(self, name: str, version: str) -> ReleaseRecord:
        row = self.db.execute(
            f"SELECT {_RELEASE_COLS} FROM releases WHERE name = ? AND version = ? "
            "AND deleted_at IS NULL",
            (name, version),
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no release {name} {version}")
        return _release(row)

    def list_releases(self) -> list[ReleaseRecord]:
        sql = f"SELECT {_RELEASE_COLS} FROM releases WHERE deleted_at IS NULL ORDER BY id"
        return [_release(r) for r in self.db.execute(sql)]

    def delete_release(self, release_id: int, now: float) -> ReleaseRecord:
        """Delete a release no active rollout uses; return it.

        Raises:
            NotFoundError: no such release.
            ConflictError: a scheduled, running or paused rollout uses it.
        """
        with self._tx():
            rec = self.get_release(release_id)
            users = [
                r[0]
                for r in self.db.execute(
                    "SELECT id FROM rollouts WHERE release_id = ? "
                    f"AND state IN ({_marks(len(ACTIVE_ROLLOUT_STATES))})",
                    (release_id, *ACTIVE_ROLLOUT_STATES),
                )
            ]
            if users:
                raise ConflictError(
                    f"release {rec.id} is used by active rollout(s) {users}; cancel them first"
                )
            if self.db.execute(
                "SELECT 1 FROM rollouts WHERE release_id = ? LIMIT 1", (release_id,)
            ).fetchone():
                # Finished rollouts keep their history: hide the release, keep the row.
                self.db.execute(
                    "UPDATE releases SET deleted_at = ? WHERE id = ?", (now, release_id)
                )
            else:
                self.db.execute("DELETE FROM releases WHERE id = ?", (release_id,))
        return rec

    def sha256_in_use(self, sha256: str) -> bool:
        row = self.db.execute(
            "SELECT 1 FROM releases WHERE sha256 = ? AND deleted_at IS NULL LIMIT 1",
            (sha256,),
        ).fetchone()
        return row is not None

    # --- rollouts ------------------------------------------------------------------------

    def create_rollout(
        self,
        *,
        release_id: int,
        target: dict[str, Any],
        spec: RolloutSpec,
        assignments: Sequence[tuple[str, int, int]],
        now: float,
        actor: str,
    ) -> RolloutRecord:
        state = "scheduled" if spec.start_at is not None and spec.start_at > now else "running"
        with self._tx():
            self.get_release(release_id)
            cur = self.db.execute(
                "INSERT INTO rollouts (release_id, target, spec, state, phase, phase_started_at,"
                " created_at, updated_at, created_by) VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?)",
                (
                    release_id, json.dumps(target), json.dumps(spec.to_json()), state,
                    now if state == "running" else None, now, now, actor,
                ),
            )  # fmt: skip
            rid = cur.lastrowid
            assert rid is not None  # noqa: S101 - an INSERT always sets it
            self.db.executemany(
                "INSERT INTO rollout_targets (rollout_id, device_id, position, phase, "
                "updated_at) VALUES (?, ?, ?, ?, ?)",
                [(rid, d, pos, ph, now) for d, pos, ph in assignments],
            )
        return self.get_rollout(rid)

    def get_rollout(self, rollout_id: int) -> RolloutRecord:
        row = self.db.execute(
            f"SELECT {_ROLLOUT_COLS} FROM rollouts WHERE id = ?", (rollout_id,)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no rollout {rollout_id}")
        return _rollout(row)

    def list_rollouts(self, states: Sequence[str] = ()) -> list[RolloutRecord]:
        sql = f"SELECT {_ROLLOUT_COLS} FROM rollouts"
        if states:
            sql += f" WHERE state IN ({_marks(len(states))})"
        return [_rollout(r) for r in self.db.execute(sql + " ORDER BY id", tuple(states))]

    def update_rollout(self, rollout_id: int, now: float, **fields: Any) -> RolloutRecord:
        allowed = {"state", "phase", "phase_started_at", "gate_met_at", "reason",
                   "failure_base", "attempt_base"}  # fmt: skip
        bad = set(fields) - allowed
        if bad:
            raise ValueError(f"cannot update rollout fields {sorted(bad)}")
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._tx():
            self.db.execute(
                f"UPDATE rollouts SET {sets}, updated_at = ? WHERE id = ?",
                (*fields.values(), now, rollout_id),
            )
        return self.get_rollout(rollout_id)

    def phase_counts(self, rollout_id: int) -> dict[int, PhaseCounts]:
        counts: dict[int, PhaseCounts] = {}
        for phase, state, delivered, n in self.db.execute(
            "SELECT phase, state, delivered, COUNT(*) FROM rollout_targets "
            "WHERE rollout_id = ? GROUP BY phase, state, delivered",
            (rollout_id,),
        ):
            counts.setdefault(phase, PhaseCounts()).add(state, bool(delivered), n)
        return counts

    def state_counts(self, rollout_id: int) -> dict[str, int]:
        return dict(
            self.db.execute(
                "SELECT state, COUNT(*) FROM rollout_targets WHERE rollout_id = ? GROUP BY state",
                (rollout_id,),
            ).fetchall()
        )

    def rollout_state_counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT state, COUNT(*) FROM rollouts GROUP BY state"))

    def list_targets(
        self, rollout_id: int, state: str | None = None, limit: int = 1000
    ) -> list[TargetRecord]:
        sql = f"SELECT {_TARGET_COLS} FROM rollout_targets WHERE rollout_id = ?"
        args: list[Any] = [rollout_id]
        if state is not None:
            sql += " AND state = ?"
            args.append(state)
        sql += " ORDER BY position LIMIT ?"
        args.append(limit)
        return [_target(r) for r in self.db.execute(sql, args)]

    def pending_targets(
        self, rollout_id: int, max_phase: int, limit: int
    ) -> list[tuple[str, bool]]:
        """Pending devices of phases ``<= max_phase`` in order, with their online flag."""
        return [
            (r[0], bool(r[1]))
            for r in self.db.execute(
                "SELECT t.device_id, coalesce(d.online, 0) FROM rollout_targets t "
                "LEFT JOIN devices d ON d.device_id = t.device_id "
                "WHERE t.rollout_id = ? AND t.state = ? AND t.phase <= ? "
                "ORDER BY t.position LIMIT ?",
                (rollout_id, PENDING, max_phase, limit),
            )
        ]

    def active_target_ids(self) -> set[str]:
        """Devices targeted by any scheduled, running or paused rollout."""
        rows = self.db.execute(
            "SELECT DISTINCT t.device_id FROM rollout_targets t JOIN rollouts r "
            f"ON r.id = t.rollout_id WHERE r.state IN ({_marks(len(ACTIVE_ROLLOUT_STATES))})",
            ACTIVE_ROLLOUT_STATES,
        )
        return {r[0] for r in rows}

    def add_targets(
        self, rollout_id: int, device_ids: Sequence[str], phase: int, now: float
    ) -> int:
        """Append devices to a rollout in ``phase``, after its last position; devices it
        already targets are left as they are. Returns how many were added."""
        with self._tx():
            (last,) = self.db.execute(
                "SELECT coalesce(max(position), -1) FROM rollout_targets WHERE rollout_id = ?",
                (rollout_id,),
            ).fetchone()
            cur = self.db.executemany(
                "INSERT OR IGNORE INTO rollout_targets (rollout_id, device_id, position, phase, "
                "updated_at) VALUES (?, ?, ?, ?, ?)",
                [(rollout_id, d, last + 1 + i, phase, now) for i, d in enumerate(device_ids)],
            )
        return cur.rowcount

    def time_out_targets(self, rollout_id: int, cutoff: float, now: float) -> int:
        """Delivered, unfinished targets silent since before ``cutoff`` become timed_out."""
        with self._tx():
            cur = self.db.execute(
                "UPDATE rollout_targets SET reason = 'no report since ' || state || ' for ' "
                f"|| CAST(? - updated_at AS INTEGER) || 's', state = 'timed_out', "
                "updated_at = ? WHERE rollout_id = ? AND delivered = 1 "
                f"AND state IN ({_marks(len(_IN_FLIGHT))}) AND updated_at < ?",
                (now, now, rollout_id, *_IN_FLIGHT, cutoff),
            )
        return cur.rowcount

    def retry_failed(self, rollout_id: int, now: float) -> int:
        with self._tx():
            cur = self.db.execute(
                "UPDATE rollout_targets SET state = ?, reason = '', attempts = attempts + 1, "
                f"updated_at = ? WHERE rollout_id = ? AND state IN ({_marks(len(_FAILURES))})",
                (PENDING, now, rollout_id, *_FAILURES),
            )
        return cur.rowcount

    def cancel_targets(self, rollout_id: int, now: float, reason: str) -> list[str]:
        """Cancel every unfinished target; return the devices that had a notice out."""
        with self._tx():
            notified = [
                r[0]
                for r in self.db.execute(
                    "SELECT device_id FROM rollout_targets WHERE rollout_id = ? "
                    f"AND state IN ({_marks(len(_IN_FLIGHT))})",
                    (rollout_id, *_IN_FLIGHT),
                )
            ]
            self.db.execute(
                "UPDATE rollout_targets SET state = 'canceled', reason = ?, updated_at = ? "
                f"WHERE rollout_id = ? AND state IN ({_marks(len(_IN_FLIGHT) + 1)})",
                (reason, now, rollout_id, PENDING, *_IN_FLIGHT),
            )
        return notified

    # --- notices -------------------------------------------------------------------------

    def reserve_seqs(self, scopes: Sequence[str], floor: int) -> dict[str, int]:
        """Next sequence number of each scope, persisted before anything is signed.

        A scope never seen starts at ``floor`` (the issue time in milliseconds), so a
        reinstalled orchestrator with an empty database still moves forward.
        """
        out: dict[str, int] = {}
        with self._tx():
            for scope in scopes:
                row = self.db.execute(
                    "INSERT INTO scope_seq VALUES (?, ?) ON CONFLICT (scope) DO UPDATE "
                    "SET seq = seq + 1 RETURNING seq",
                    (scope, floor),
                ).fetchone()
                out[scope] = int(row[0])
        return out

    def _insert_notices(self, notices: Sequence[NoticeRecord]) -> None:
        # A newer notice on a device's topic replaces the retained one: an older notice not
        # yet acknowledged must never be published again over it. Superseded before the
        # insert, so the partial index holds only notices of earlier calls (normally none).
        self.db.executemany(
            "UPDATE notices SET published = 1 WHERE published = 0 AND topic = ? AND seq < ?",
            [(n.topic, n.seq) for n in notices],
        )
        self.db.executemany(
            f"INSERT INTO notices ({_NOTICE_COLS}) VALUES ({_marks(10)})",
            [
                (n.notice_id, n.device_id, n.rollout_id, n.kind, n.scope, n.seq, n.topic,
                 n.issued_at, n.expires_at, n.envelope)
                for n in notices
            ],
        )  # fmt: skip
        for n in notices:
            self._notice_owner[n.notice_id] = (n.device_id, n.rollout_id)

    def save_notices(self, notices: Sequence[NoticeRecord], delivered: dict[str, bool]) -> None:
        """Store signed notices; their targets become ``sent`` (or canceled for cancels)."""
        with self._tx():
            self._insert_notices(notices)
            self.db.executemany(
                "UPDATE rollout_targets SET state = ?, notice_id = ?, notified_at = ?, "
                "updated_at = ?, delivered = ?, last_counter = 0 "
                "WHERE rollout_id = ? AND device_id = ? AND state = ?",
                [
                    (SENT, n.notice_id, n.issued_at, n.issued_at,
                     int(delivered.get(n.device_id, False)), n.rollout_id, n.device_id, PENDING)
                    for n in notices
                    if n.kind == "notice"
                ],
            )  # fmt: skip

    def waiting_notices(self, rollout_id: int) -> list[tuple[str, float, float]]:
        """``(device_id, issued_at, expires_at)`` of each update notice that still waits
        for its device to come online (sent, never delivered), in rollout order."""
        return [
            (r[0], float(r[1]), float(r[2]))
            for r in self.db.execute(
                "SELECT t.device_id, n.issued_at, n.expires_at FROM rollout_targets t "
                "JOIN notices n ON n.notice_id = t.notice_id WHERE t.rollout_id = ? "
                "AND t.state = ? AND t.delivered = 0 ORDER BY t.position",
                (rollout_id, SENT),
            )
        ]

    def replace_notices(self, notices: Sequence[NoticeRecord]) -> set[str]:
        """Make each update notice the one its target waits on, if that target still waits
        offline; store only those. Returns the devices whose notice was replaced."""
        with self._tx():
            replaced = [
                n for n in notices
                if self.db.execute(
                    "UPDATE rollout_targets SET notice_id = ?, notified_at = ?, updated_at = ? "
                    "WHERE rollout_id = ? AND device_id = ? AND state = ? AND delivered = 0 "
                    "AND NOT EXISTS (SELECT 1 FROM devices d WHERE "
                    "d.device_id = rollout_targets.device_id AND d.online = 1)",
                    (n.notice_id, n.issued_at, n.issued_at, n.rollout_id, n.device_id, SENT),
                ).rowcount
            ]  # fmt: skip
            self._insert_notices(replaced)
        return {n.device_id for n in replaced}

    def mark_published(self, notice_ids: Sequence[str]) -> None:
        with self._tx():
            self.db.executemany(
                "UPDATE notices SET published = 1 WHERE notice_id = ?",
                [(n,) for n in notice_ids],
            )
            self._bump("notices_published", len(notice_ids))

    def unpublished_notices(self, limit: int = 10_000) -> list[NoticeRecord]:
        return [
            _notice(r)
            for r in self.db.execute(
                f"SELECT {_NOTICE_COLS} FROM notices WHERE published = 0 LIMIT ?", (limit,)
            )
        ]

    # --- audit and tokens ----------------------------------------------------------------

    def add_audit(
        self, *, at: float, actor: str, action: str, subject: str, detail: dict[str, Any]
    ) -> None:
        with self._tx():
            self.db.execute(
                "INSERT INTO audit (at, actor, action, subject, detail) VALUES (?, ?, ?, ?, ?)",
                (at, actor, action, subject, json.dumps(detail, sort_keys=True, default=str)),
            )

    def list_audit(self, limit: int = 100, after_id: int = 0) -> list[AuditEntry]:
        return [
            AuditEntry(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]))
            for r in self.db.execute(
                "SELECT id, at, actor, action, subject, detail FROM audit WHERE id > ? "
                "ORDER BY id DESC LIMIT ?",
                (after_id, limit),
            )
        ]

    def add_token(self, name: str, role: str, sha256: str, now: float) -> None:
        try:
            with self._tx():
                self.db.execute(
                    "INSERT INTO tokens VALUES (?, ?, ?, ?, 0)", (name, role, sha256, now)
                )
        except sqlite3.IntegrityError:
            raise ConflictError(f"a token named {name!r} already exists") from None

    def find_token(self, sha256: str) -> TokenRecord | None:
        row = self.db.execute(
            "SELECT name, role, created_at, revoked FROM tokens WHERE sha256 = ?", (sha256,)
        ).fetchone()
        return TokenRecord(row[0], row[1], row[2], bool(row[3])) if row else None

    def list_tokens(self) -> list[TokenRecord]:
        return [
            TokenRecord(r[0], r[1], r[2], bool(r[3]))
            for r in self.db.execute("SELECT name, role, created_at, revoked FROM tokens")
        ]

    def revoke_token(self, name: str) -> None:
        with self._tx():
            cur = self.db.execute("UPDATE tokens SET revoked = 1 WHERE name = ?", (name,))
        if cur.rowcount == 0:
            raise NotFoundError(f"no token named {name!r}")


class _Tx:
    """``BEGIN IMMEDIATE`` .. ``COMMIT``; nested uses join the outer transaction."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.outer = False

    def __enter__(self) -> None:
        if not self.db.in_transaction:
            self.db.execute("BEGIN IMMEDIATE")
            self.outer = True

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if not self.outer:
            return
        if exc_type is None:
            self.db.execute("COMMIT")
        else:
            self.db.execute("ROLLBACK")
