"""Replicas on one database: rollout leases, notices saved under a lease, live replicas.

Any number of ``fleetpush serve`` processes may share a PostgreSQL database. One of them
drives a given rollout at a time: the one holding its lease (a row with an expiry, renewed
every engine pass). A replica that dies stops renewing; once the lease has expired another
claims it and goes on from the database. What the holder writes is fenced: notices are
stored only while the lease is still held and only for targets still pending, in the
transaction that marks them sent, so two replicas can never both notify a device, even
when one of them stalled past its lease (docs/scaling.md).
"""

# SQL text is built only from constant column lists and "?" marks; values are bound.
# ruff: noqa: S608

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.rules import PENDING
from orchestrator.store.base import StoreError
from orchestrator.store.records import NoticeRecord
from orchestrator.store.sql.base import marks
from orchestrator.store.sql.notices import NoticeMethods

__all__ = ["LeaseLostError", "LeaseMethods", "ReplicaRecord"]

_CHUNK = 400


class LeaseLostError(StoreError):
    """This replica no longer holds the rollout's lease (it expired and another replica
    may have claimed it), or the rollout stopped running: nothing was written."""


@dataclass(frozen=True, slots=True)
class ReplicaRecord:
    """A ``serve`` process on this database, as it last said."""

    replica_id: str
    host: str
    pid: int
    started_at: float
    seen_at: float
    url_key_id: str  # names its URL signing key (``UrlSigner.key_id``); '' if not known

    def to_json(self) -> dict[str, object]:
        return {
            "replica_id": self.replica_id, "host": self.host, "pid": self.pid,
            "started_at": self.started_at, "seen_at": self.seen_at,
            "url_key_id": self.url_key_id,
        }  # fmt: skip

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> ReplicaRecord:
        return cls(row[0], row[1], int(row[2]), float(row[3]), float(row[4]), str(row[5]))


_REPLICA_COLUMNS = "replica_id, host, pid, started_at, seen_at, url_key_id"


class LeaseMethods(NoticeMethods):
    # --- rollout leases ------------------------------------------------------------------

    def claim_rollouts(
        self, holder: str, rollout_ids: Sequence[int], now: float, expires_at: float
    ) -> list[int]:
        """Take or renew the lease of each rollout that is free, expired or already ours;
        return the ids now held by ``holder``. Ids in ascending order, so two replicas
        claiming the same rollouts lock their rows in the same order (no deadlock)."""
        with self._tx():
            got = self._insert_returning(
                "INSERT INTO rollout_leases (rollout_id, holder, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (rollout_id) DO UPDATE SET holder = excluded.holder, "
                "expires_at = excluded.expires_at WHERE rollout_leases.holder = excluded.holder "
                "OR rollout_leases.expires_at < ? RETURNING rollout_id",
                [(rid, holder, expires_at, now) for rid in sorted(set(rollout_ids))],
            )
        return [int(r[0]) for r in got]

    def release_rollouts(self, holder: str, rollout_ids: Sequence[int] | None = None) -> int:
        """Give up ``holder``'s leases (all of them when ``rollout_ids`` is None)."""
        with self._tx():
            if rollout_ids is None:
                return self._execute(
                    "DELETE FROM rollout_leases WHERE holder = ?", (holder,)
                ).rowcount
            return self._executemany(
                "DELETE FROM rollout_leases WHERE holder = ? AND rollout_id = ?",
                [(holder, rid) for rid in rollout_ids],
            )

    def rollout_leases(self) -> dict[int, tuple[str, float]]:
        """rollout id -> (holder, expires_at), expired leases included."""
        return {
            int(r[0]): (r[1], float(r[2]))
            for r in self._execute("SELECT rollout_id, holder, expires_at FROM rollout_leases")
        }

    def save_notices_leased(
        self,
        holder: str,
        rollout_id: int,
        notices: Sequence[NoticeRecord],
        delivered: dict[str, bool],
        now: float,
    ) -> list[NoticeRecord]:
        """``save_notices`` for update notices of one running rollout, fenced by its lease:
        only while ``holder`` holds it at ``now`` and the rollout runs, and only the notices
        whose target is still pending (the others were notified, canceled or finished
        meanwhile) and whose device has no notice stored but not yet published: that one
        (a take-over's cancel, stored by another replica) must reach the broker first, or
        it would replace this one as the retained notice. Those stay pending for the next
        pass. Returns the notices stored: publish those, and only those.

        Raises:
            LeaseLostError: the lease is gone or the rollout no longer runs.
        """
        with self._tx():
            # Locks the lease and the rollout row: a replica claiming the expired lease, or
            # an operator pausing the rollout, waits for this transaction, then sees its
            # targets sent.
            row = self._execute(
                "SELECT r.state FROM rollout_leases l JOIN rollouts r ON r.id = l.rollout_id "
                "WHERE l.rollout_id = ? AND l.holder = ? AND l.expires_at >= ?"
                + self.dialect.for_update,
                (rollout_id, holder, now),
            ).fetchone()
            if row is None:
                raise LeaseLostError(f"rollout {rollout_id}: lease no longer held by {holder}")
            if row[0] != "running":
                raise LeaseLostError(f"rollout {rollout_id} is {row[0]} now")
            ids = sorted({n.device_id for n in notices})
            pending: set[str] = set()
            for i in range(0, len(ids), _CHUNK):
                chunk = ids[i : i + _CHUNK]
                pending.update(
                    r[0]
                    for r in self._execute(
                        "SELECT device_id FROM rollout_targets WHERE rollout_id = ? AND state = ? "
                        f"AND device_id IN ({marks(len(chunk))}) AND NOT EXISTS (SELECT 1 FROM "
                        "notices n WHERE n.device_id = rollout_targets.device_id AND "
                        "n.published = 0) ORDER BY device_id" + self.dialect.for_update,
                        (rollout_id, PENDING, *chunk),
                    )
                )
            keep = [n for n in notices if n.device_id in pending and n.rollout_id == rollout_id]
            self.save_notices(keep, delivered)
            self._executemany(
                "UPDATE notices SET sent_by = ? WHERE notice_id = ?",
                [(holder, n.notice_id) for n in keep],
            )
        return keep

    def notices_by_replica(self, rollout_id: int) -> dict[str, int]:
        """Update notices of the rollout each replica stored (and so sent): replica -> n
        ("" for notices stored outside a lease, e.g. by a fleetpush before replicas)."""
        return {
            r[0]: int(r[1])
            for r in self._execute(
                "SELECT sent_by, COUNT(*) FROM notices WHERE rollout_id = ? AND kind = 'notice' "
                "GROUP BY sent_by ORDER BY sent_by",
                (rollout_id,),
            )
        }

    # --- replicas ------------------------------------------------------------------------

    def register_replica(
        self, replica_id: str, host: str, pid: int, now: float, *, live_after: float,
        url_key_id: str, replacing: int | None = None,
    ) -> ReplicaRecord | None:  # fmt: skip
        """Record this process as ``replica_id``, signing payload URLs with the key named
        ``url_key_id``, unless, among the replicas seen after ``live_after``:

        - another process (another host or pid) is ``replica_id``, but for ``replacing``,
          a pid on this host the caller found dead, or
        - another replica names a different key (a row written before migration 14 names
          none);

        then return that one and write nothing. One transaction under the replicas lock:
        two replicas starting together with different keys cannot both get in."""
        with self._tx():
            if self.dialect.replicas_lock:
                self._execute(self.dialect.replicas_lock)
            live = [
                ReplicaRecord.from_row(row)
                for row in self._execute(
                    f"SELECT {_REPLICA_COLUMNS} FROM replicas WHERE seen_at > ? "
                    "ORDER BY replica_id",
                    (live_after,),
                )
            ]
            for other in live:
                if other.replica_id == replica_id:
                    if (other.host, other.pid) not in ((host, pid), (host, replacing)):
                        return other
                elif other.url_key_id not in ("", url_key_id):
                    return other
            self._execute(
                f"INSERT INTO replicas ({_REPLICA_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (replica_id) DO UPDATE SET host = excluded.host, pid = excluded.pid, "
                "started_at = excluded.started_at, seen_at = excluded.seen_at, "
                "url_key_id = excluded.url_key_id",
                (replica_id, host, pid, now, now, url_key_id),
            )
        return None

    def beat_replica(self, replica_id: str, now: float) -> None:
        with self._tx():
            self._execute("UPDATE replicas SET seen_at = ? WHERE replica_id = ?", (now, replica_id))

    def drop_replica(self, replica_id: str, pid: int) -> None:
        with self._tx():
            self._execute(
                "DELETE FROM replicas WHERE replica_id = ? AND pid = ?", (replica_id, pid)
            )

    def list_replicas(self) -> list[ReplicaRecord]:
        return [
            ReplicaRecord.from_row(r)
            for r in self._execute(f"SELECT {_REPLICA_COLUMNS} FROM replicas ORDER BY replica_id")
        ]
