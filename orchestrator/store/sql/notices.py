"""Signed notices: sequence numbers, storage, supersession and publishing state."""

# SQL text is built only from constant column lists and "?" marks; values are bound.
# ruff: noqa: S608

from __future__ import annotations

import json
from collections.abc import Sequence

from orchestrator.rules import PENDING, SENT
from orchestrator.store.records import NoticeRecord
from orchestrator.store.rules import supersedes
from orchestrator.store.sql import rows
from orchestrator.store.sql.base import SqlBase, listed

__all__ = ["NoticeMethods"]


class NoticeMethods(SqlBase):
    _notice_owner: dict[str, tuple[str, int]]

    def reserve_seqs(self, scopes: Sequence[str], floor: int) -> dict[str, int]:
        """Next sequence number of each scope, persisted before anything is signed.

        A scope never seen starts at ``floor`` (the issue time in milliseconds), so a
        reinstalled orchestrator with an empty database still moves forward.
        """
        if not scopes:
            return {}
        # One statement for the batch. "WHERE true": SQLite's grammar needs it between an
        # INSERT's SELECT and its ON CONFLICT. A scope listed twice would be one upsert
        # hitting its row twice (PostgreSQL refuses): each appears once.
        with self._tx():
            returned = self._execute(
                "INSERT INTO scope_seq (scope, seq) SELECT DISTINCT l.value, CAST(? AS BIGINT) "
                f"FROM {self.dialect.json_array('?', 'l')} WHERE true ON CONFLICT (scope) DO "
                "UPDATE SET seq = scope_seq.seq + 1 RETURNING scope, seq",
                (floor, json.dumps(list(scopes))),
            ).fetchall()
        return {r[0]: int(r[1]) for r in returned}

    def _supersede(self, notices: Sequence[NoticeRecord]) -> None:
        """Unpublished notices an incoming one supersedes (``rules.supersedes``) are marked
        published: they must never go out over the newer one. Runs before the insert, so
        it sees only notices of earlier calls (normally none)."""
        newest: dict[str, int] = {}
        for n in notices:
            newest[n.topic] = max(n.seq, newest.get(n.topic, n.seq))
        old = self._execute(
            "SELECT notice_id, topic, seq FROM notices WHERE published = 0 "
            f"AND topic IN ({listed(self.dialect)}) ORDER BY notice_id" + self.dialect.for_update,
            (json.dumps(sorted(newest)),),
        ).fetchall()
        self._published([nid for nid, topic, seq in old if supersedes(newest[topic], int(seq))])

    def _published(self, notice_ids: Sequence[str]) -> int:
        if not notice_ids:
            return 0
        return self._execute(
            f"UPDATE notices SET published = 1 WHERE notice_id IN ({listed(self.dialect)})",
            (json.dumps(list(notice_ids)),),
        ).rowcount

    def _insert_notices(self, notices: Sequence[NoticeRecord]) -> None:
        if not notices:
            return
        self._supersede(notices)
        self._bulk_insert(
            "notices",
            rows.NOTICE_COLS.split(", "),
            [
                (n.notice_id, n.device_id, n.rollout_id, n.kind, n.scope, n.seq, n.topic,
                 n.issued_at, n.expires_at, n.envelope)
                for n in notices
            ],
        )  # fmt: skip
        for n in notices:
            self._notice_owner[n.notice_id] = (n.device_id, n.rollout_id)

    def save_notices(self, notices: Sequence[NoticeRecord], delivered: dict[str, bool]) -> None:
        """Store signed notices; the pending targets of update notices become ``sent``.

        Two statements for the batch, whatever its size (COPY on PostgreSQL, then one
        UPDATE per delivered flag joining the notices just stored)."""
        with self._tx():
            self._insert_notices(notices)
            for flag in (0, 1):
                ids = [
                    n.notice_id for n in notices
                    if n.kind == "notice" and int(delivered.get(n.device_id, False)) == flag
                ]  # fmt: skip
                if not ids:
                    continue
                self._execute(
                    "UPDATE rollout_targets SET state = ?, notice_id = n.notice_id, "
                    "notified_at = n.issued_at, updated_at = n.issued_at, delivered = ?, "
                    "last_counter = 0 FROM notices n WHERE n.notice_id IN "
                    f"({listed(self.dialect)}) AND rollout_targets.rollout_id = n.rollout_id "
                    "AND rollout_targets.device_id = n.device_id AND rollout_targets.state = ?",
                    (SENT, flag, json.dumps(ids), PENDING),
                )

    def waiting_notices(self, rollout_id: int) -> list[tuple[str, float, float]]:
        """``(device_id, issued_at, expires_at)`` of each update notice that still waits
        for its device to come online (sent, never delivered), in rollout order."""
        return [
            (r[0], float(r[1]), float(r[2]))
            for r in self._execute(
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
                if self._execute(
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
            self._published(notice_ids)
            self._bump("notices_published", len(notice_ids))

    def sent_notices(self, limit: int = 100_000) -> list[NoticeRecord]:
        """Published notices whose device has not answered yet (its target still sent)."""
        return [
            rows.notice(r)
            for r in self._execute(
                f"SELECT {rows.NOTICE_COLS} FROM notices WHERE published = 1 AND notice_id IN "
                "(SELECT notice_id FROM rollout_targets WHERE state = ?) "
                "ORDER BY issued_at, notice_id LIMIT ?",
                (SENT, limit),
            )
        ]

    def unpublished_notices(self, limit: int = 10_000) -> list[NoticeRecord]:
        return [
            rows.notice(r)
            for r in self._execute(
                f"SELECT {rows.NOTICE_COLS} FROM notices WHERE published = 0 "
                "ORDER BY issued_at, notice_id LIMIT ?",
                (limit,),
            )
        ]
