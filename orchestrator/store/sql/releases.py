"""Releases: what can be rolled out; kept (hidden) while rollouts refer to them."""

# SQL text is built only from constant column lists and "?" marks; values are bound.
# ruff: noqa: S608

from __future__ import annotations

import json
from typing import Any

from orchestrator.rules import ACTIVE_ROLLOUT_STATES
from orchestrator.store.base import ConflictError, NotFoundError
from orchestrator.store.records import ReleaseRecord
from orchestrator.store.sql import rows
from orchestrator.store.sql.base import SqlBase, marks

__all__ = ["ReleaseMethods"]


class ReleaseMethods(SqlBase):
    def add_release(self, rec: ReleaseRecord) -> ReleaseRecord:
        try:
            with self._tx():
                row = self._execute(
                    "INSERT INTO releases (name, version, sha256, size, models, handler, "
                    "handler_args, metadata, created_at, update_class, advisory, components, "
                    "holds) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    (
                        rec.name, rec.version, rec.sha256, rec.size, json.dumps(rec.models),
                        rec.handler, json.dumps(rec.handler_args), json.dumps(rec.metadata),
                        rec.created_at, rec.update_class,
                        json.dumps(rec.advisory, sort_keys=True) if rec.advisory else None,
                        json.dumps(list(rec.components)) if rec.components else None,
                        json.dumps(rec.holds, sort_keys=True) if rec.holds else None,
                    ),
                ).fetchone()  # fmt: skip
        except self.dialect.integrity:
            raise ConflictError(f"release {rec.name} {rec.version} already exists") from None
        return self.get_release(int(row[0]))

    def get_release(self, release_id: int) -> ReleaseRecord:
        row = self._execute(
            f"SELECT {rows.RELEASE_COLS} FROM releases WHERE id = ?", (release_id,)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no release {release_id}")
        return rows.release(row)

    def find_release(self, name: str, version: str) -> ReleaseRecord:
        row = self._execute(
            f"SELECT {rows.RELEASE_COLS} FROM releases WHERE name = ? AND version = ? "
            "AND deleted_at IS NULL",
            (name, version),
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no release {name} {version}")
        return rows.release(row)

    def list_releases(self) -> list[ReleaseRecord]:
        sql = f"SELECT {rows.RELEASE_COLS} FROM releases WHERE deleted_at IS NULL ORDER BY id"
        return [rows.release(r) for r in self._execute(sql)]

    def delete_release(self, release_id: int, now: float) -> ReleaseRecord:
        """Delete a release no active rollout uses; return it.

        Raises:
            NotFoundError: no such release.
            ConflictError: a scheduled, running or paused rollout uses it.
        """
        with self._tx():
            row = self._execute(
                f"SELECT {rows.RELEASE_COLS} FROM releases WHERE id = ?" + self.dialect.for_update,
                (release_id,),
            ).fetchone()
            if row is None:
                raise NotFoundError(f"no release {release_id}")
            rec = rows.release(row)
            users = [
                r[0]
                for r in self._execute(
                    "SELECT id FROM rollouts WHERE release_id = ? "
                    f"AND state IN ({marks(len(ACTIVE_ROLLOUT_STATES))}) ORDER BY id",
                    (release_id, *ACTIVE_ROLLOUT_STATES),
                )
            ]
            if users:
                raise ConflictError(
                    f"release {rec.id} is used by active rollout(s) {users}; cancel them first"
                )
            if self._execute(
                "SELECT 1 FROM rollouts WHERE release_id = ? LIMIT 1", (release_id,)
            ).fetchone():
                # Finished rollouts keep their history: hide the release, keep the row.
                self._execute("UPDATE releases SET deleted_at = ? WHERE id = ?", (now, release_id))
            else:
                self._execute("DELETE FROM release_sboms WHERE release_id = ?", (release_id,))
                self._execute("DELETE FROM releases WHERE id = ?", (release_id,))
        return rec

    def put_sbom(
        self, release_id: int, *, format: str, spec_version: str,
        components: list[dict[str, str]], body: str, now: float,
    ) -> None:  # fmt: skip
        """Store (or replace) the SBOM of a release."""
        with self._tx():
            self.get_release(release_id)
            self._execute("DELETE FROM release_sboms WHERE release_id = ?", (release_id,))
            self._execute(
                "INSERT INTO release_sboms (release_id, format, spec_version, components, body,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (release_id, format, spec_version, json.dumps(components), body, now),
            )

    def get_sbom(self, release_id: int) -> tuple[dict[str, Any], str] | None:
        """``(summary with its components, the document as uploaded)``, or None."""
        row = self._execute(
            "SELECT format, spec_version, components, body, created_at FROM release_sboms "
            "WHERE release_id = ?",
            (release_id,),
        ).fetchone()
        if row is None:
            return None
        components = json.loads(row[2])
        return {"format": row[0], "spec_version": row[1], "components": components,
                "component_count": len(components), "uploaded_at": row[4]}, row[3]  # fmt: skip

    def sha256_in_use(self, sha256: str) -> bool:
        """A release not deleted has this payload, or a component with it."""
        row = self._execute(
            "SELECT 1 FROM releases WHERE (sha256 = ? OR components LIKE ?) "
            "AND deleted_at IS NULL LIMIT 1",
            (sha256, f'%"{sha256}"%'),
        ).fetchone()
        return row is not None
