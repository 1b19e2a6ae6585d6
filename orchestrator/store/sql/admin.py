"""The audit log and API tokens."""

from __future__ import annotations

import json
from typing import Any

from orchestrator.store.base import ConflictError, NotFoundError
from orchestrator.store.records import AuditEntry, TokenRecord
from orchestrator.store.sql.base import SqlBase

__all__ = ["AdminMethods"]


class AdminMethods(SqlBase):
    def add_audit(
        self, *, at: float, actor: str, action: str, subject: str, detail: dict[str, Any]
    ) -> None:
        with self._tx():
            self._execute(
                "INSERT INTO audit (at, actor, action, subject, detail) VALUES (?, ?, ?, ?, ?)",
                (at, actor, action, subject, json.dumps(detail, sort_keys=True, default=str)),
            )

    def list_audit(self, limit: int = 100, after_id: int = 0) -> list[AuditEntry]:
        return [
            AuditEntry(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]))
            for r in self._execute(
                "SELECT id, at, actor, action, subject, detail FROM audit WHERE id > ? "
                "ORDER BY id DESC LIMIT ?",
                (after_id, limit),
            )
        ]

    def add_token(self, name: str, role: str, sha256: str, now: float) -> None:
        try:
            with self._tx():
                self._execute(
                    "INSERT INTO tokens VALUES (?, ?, ?, ?, 0)", (name, role, sha256, now)
                )
        except self.dialect.integrity:
            raise ConflictError(f"a token named {name!r} already exists") from None

    def find_token(self, sha256: str) -> TokenRecord | None:
        row = self._execute(
            "SELECT name, role, created_at, revoked FROM tokens WHERE sha256 = ?", (sha256,)
        ).fetchone()
        return TokenRecord(row[0], row[1], row[2], bool(row[3])) if row else None

    def list_tokens(self) -> list[TokenRecord]:
        return [
            TokenRecord(r[0], r[1], r[2], bool(r[3]))
            for r in self._execute(
                "SELECT name, role, created_at, revoked FROM tokens ORDER BY name"
            )
        ]

    def revoke_token(self, name: str) -> None:
        with self._tx():
            n = self._execute("UPDATE tokens SET revoked = 1 WHERE name = ?", (name,)).rowcount
        if n == 0:
            raise NotFoundError(f"no token named {name!r}")
