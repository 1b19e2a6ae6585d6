"""Devices: the registry's facts, the operator's labels, the devices' claims."""

# SQL text is built only from constant column lists and "?" marks; values are bound.
# ruff: noqa: S608

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from orchestrator.store.base import NotFoundError
from orchestrator.store.records import DeviceFilter, DeviceRecord
from orchestrator.store.sql import rows
from orchestrator.store.sql.base import SqlBase
from orchestrator.store.sql.targeting import MODEL

__all__ = ["DeviceMethods"]


class DeviceMethods(SqlBase):
    def list_devices(self, f: DeviceFilter) -> list[DeviceRecord]:
        """One page of devices in id order, every filter applied in SQL. ``f.after`` pages
        by key (the index walk starts at that id); ``f.offset`` skips rows after it. A
        group's page walks the membership table's key (group, device) from the cursor,
        so it reads the rows it returns however small the group is."""
        where: list[str] = []
        args: list[Any] = []
        source, key = "devices", "device_id"
        if f.group is not None:
            source, key = "device_groups m JOIN devices USING (device_id)", "m.device_id"
            where.append("m.group_name = ?")
            args.append(f.group)
        if f.after is not None:
            where.append(f"{key} > ?")
            args.append(f.after)
            if f.group is not None:
                # Both sides from the cursor: PostgreSQL merges the two keys in order and
                # does not carry a range across the join, so it walked every device from
                # the first (115 ms at 1M, mid-fleet) to reach the cursor.
                where.append("devices.device_id > ?")
                args.append(f.after)
        if f.model is not None:
            where.append(f"{MODEL} = ?")
            args.append(f.model)
        if f.online is not None:
            where.append("online = ?")
            args.append(int(f.online))
        if f.version is not None:
            where.append("current_version = ?")
            args.append(f.version)
        if f.tag is not None:
            tag_key, sep, value = f.tag.partition("=")
            tag = f"SELECT 1 FROM {self.dialect.json_object('devices.tags', 't')} WHERE t.key = ?"
            args.append(tag_key)
            if sep:
                tag += " AND t.value = ?"
                args.append(value)
            where.append(f"EXISTS ({tag})")
        sql = f"SELECT {rows.DEVICE_COLS} FROM {source}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY {key} LIMIT ? OFFSET ?"
        return [rows.device(r) for r in self._execute(sql, [*args, f.limit, f.offset])]

    def get_device(self, device_id: str) -> DeviceRecord:
        row = self._execute(
            f"SELECT {rows.DEVICE_COLS} FROM devices WHERE device_id = ?", (device_id,)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no device {device_id!r}")
        return rows.device(row)

    def ensure_devices(self, device_ids: Iterable[str], now: float) -> None:
        """Register devices known from provisioning before they ever connect."""
        with self._tx():
            self._executemany(
                "INSERT INTO devices (device_id, first_seen) VALUES (?, ?) "
                "ON CONFLICT (device_id) DO NOTHING",
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
                self._execute(
                    "UPDATE devices SET model = ? WHERE device_id = ?", (model, device_id)
                )
            if groups is not None:
                self._execute(
                    "UPDATE devices SET groups_ = ? WHERE device_id = ?",
                    (json.dumps(sorted(set(groups))), device_id),
                )
                # Rebuilt from the row, after the UPDATE that locks it: a concurrent edit
                # or registry import of this device waits, and this reads what it wrote.
                self._execute("DELETE FROM device_groups WHERE device_id = ?", (device_id,))
                self._execute(
                    "INSERT INTO device_groups (group_name, device_id) "
                    f"SELECT g.value, device_id FROM devices, {self._json('registry_groups')} "
                    f"WHERE device_id = ? UNION SELECT g.value, device_id FROM devices, "
                    f"{self._json('groups_')} WHERE device_id = ?",
                    (device_id, device_id),
                )
            if tags is not None:
                self._execute(
                    "UPDATE devices SET tags = ? WHERE device_id = ?",
                    (json.dumps(tags, sort_keys=True), device_id),
                )
            return self.get_device(device_id)

    def sync_registry(
        self, identities: Sequence[tuple[str, Sequence[str], str]], now: float
    ) -> int:
        """Make the provisioned groups and model of every device those of ``identities``
        (``(device_id, groups, model)``, the whole registry); a device no longer in it
        keeps its row but loses them. Returns how many devices changed.

        The registry's rows are read once (ids, groups, model) and only the devices that
        differ are written, with one bulk upsert (COPY on PostgreSQL): a first import
        writes every device in one statement, a re-import of a million devices with one
        change writes one row (re-upserting them all took 40 s at 1M on the loaded VM)."""
        wanted = {d: (json.dumps(sorted(set(g))), m) for d, g, m in identities}
        with self._tx():
            if self.dialect.registry_lock:
                self._execute(self.dialect.registry_lock)
            before = {
                r[0]: (r[1], r[2])
                for r in self._execute(
                    "SELECT device_id, registry_groups, registry_model FROM devices "
                    "WHERE in_registry = 1"
                )
            }
            gone = [(d,) for d in sorted(before) if d not in wanted]
            self._executemany(
                "UPDATE devices SET registry_groups = '[]', registry_model = '', "
                "in_registry = 0 WHERE device_id = ?",
                gone,
            )
            changed_ids = [d for d, gm in sorted(wanted.items()) if before.get(d) != gm]
            changed = self._bulk_insert(
                "devices",
                ("device_id", "registry_groups", "registry_model", "in_registry", "first_seen"),
                # Device order, as ingestion writes them: concurrent upserts lock in one order.
                [(d, *wanted[d], 1, now) for d in changed_ids],
                "ON CONFLICT (device_id) DO UPDATE SET "
                "registry_groups = excluded.registry_groups, "
                "registry_model = excluded.registry_model, in_registry = 1 "
                "WHERE devices.registry_groups <> excluded.registry_groups "
                "OR devices.registry_model <> excluded.registry_model "
                "OR devices.in_registry <> 1",
            )
            self._analyzed("devices", changed)
            old = {d: before[d][0] for (d,) in gone}
            old.update((d, before[d][0] if d in before else "[]") for d in changed_ids)
            self._regroup(old, {d: wanted[d][0] if d in wanted else "[]" for d in old})
        return len(gone) + changed

    def _regroup(self, old: dict[str, str], new: dict[str, str]) -> None:
        """Bring the membership table from each device's ``old`` registry groups to its
        ``new`` ones (JSON lists). A group dropped from the registry stays while the
        operator's list holds it; the devices' rows are written first, so a concurrent
        label edit of one of them has either committed or waits for this one."""
        added: list[tuple[str, str]] = []
        removed: list[tuple[str, str, str]] = []
        for device_id, before in old.items():
            was, now = set(json.loads(before)), set(json.loads(new[device_id]))
            added += [(g, device_id) for g in sorted(now - was)]
            removed += [(g, device_id, g) for g in sorted(was - now)]
        self._executemany(
            "DELETE FROM device_groups WHERE group_name = ? AND device_id = ? AND NOT EXISTS "
            f"(SELECT 1 FROM devices, {self._json('groups_')} WHERE "
            "devices.device_id = device_groups.device_id AND g.value = ?)",
            removed,
        )
        changed = self._bulk_insert(
            "device_groups",
            ("group_name", "device_id"),
            sorted(added),
            "ON CONFLICT (group_name, device_id) DO NOTHING",
        )
        self._analyzed("device_groups", changed)

    def _json(self, column: str) -> str:
        """The elements of a device's JSON list of groups, as rows ``g.value``."""
        return self.dialect.json_array(f"devices.{column}", "g")

    def claims_mismatch_count(self) -> int:
        """Devices whose inventory claims differ from the registry (see ``DeviceRecord``)."""
        sql = f"SELECT {rows.DEVICE_COLS} FROM devices WHERE claimed_model != ''"
        return sum(rows.device(r).claims_mismatch for r in self._execute(sql))

    def device_history(self, device_id: str, limit: int = 50) -> list[dict[str, Any]]:
        found = self._execute(
            "SELECT counter, notice_id, rollout_id, state, current_version, reported_at, "
            "received_at, error_code, error_message, accepted, detail, downloaded, hold_reason, "
            "hold_until FROM reports "
            "WHERE device_id = ? ORDER BY counter DESC LIMIT ?",
            (device_id, limit),
        ).fetchall()
        keys = (
            "counter", "notice_id", "rollout_id", "state", "current_version",
            "reported_at", "received_at", "error_code", "error_message", "accepted", "detail",
            "downloaded", "hold_reason", "hold_until",
        )  # fmt: skip
        return [dict(zip(keys, r, strict=True)) for r in found]

    def device_components(self, device_id: str, limit: int = 5) -> list[dict[str, Any]]:
        """The device's latest system updates (issue 18), newest first: each rollout's
        state and its components' states as the device last reported them."""
        found = self._execute(
            "SELECT rollout_id, notice_id, state, updated_at, components FROM rollout_targets "
            "WHERE device_id = ? AND components IS NOT NULL ORDER BY updated_at DESC LIMIT ?",
            (device_id, limit),
        ).fetchall()
        return [{"rollout_id": r[0], "notice_id": r[1], "state": r[2], "updated_at": r[3],
                 "components": json.loads(r[4])} for r in found]  # fmt: skip

    def version_counts(self) -> dict[str, int]:
        """How many devices run each release version (an empty version is left out)."""
        return {
            str(v): int(n)
            for v, n in self._execute(
                "SELECT current_version, COUNT(*) FROM devices WHERE current_version <> '' "
                "GROUP BY current_version"
            )
        }

    def online_count(self) -> int:
        row = self._execute("SELECT COUNT(*) FROM devices WHERE online = 1").fetchone()
        return int(row[0])
