"""Who this ``serve`` process is among the replicas, and the one-process rule of SQLite.

A replica's id is its MQTT identity: Mosquitto (``use_username_as_clientid``) makes the
client id the login's username, and one client id has one connection, so two processes
with one login knock each other off the broker in turn. Each replica therefore logs in
with its own broker identity (``fleetpush broker add-orchestrator NAME``, docs/scaling.md),
and that name is its id: in the rollout leases, in the ``replicas`` table, in the logs.

At start a replica records itself in the database. When the row says another process is
that replica and renewed it within the lease time, the start is refused with a message
naming the other process (a dead process on this host is recognised and replaced).

SQLite serves one process on one machine: a second ``serve`` on the same database file is
refused by an exclusive lock on ``<database>.serve.lock`` (released by the kernel when the
holder dies, so a crashed orchestrator never blocks its restart).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
from pathlib import Path

from fleetpush_common.clock import Clock
from fleetpush_common.config import ConfigError
from orchestrator.store import Database

__all__ = ["ReplicaIdentity", "ReplicaInUseError", "ReplicaMismatchError", "SqliteServeLock"]

logger = logging.getLogger(__name__)


class ReplicaInUseError(ConfigError):
    """Another live process already is this replica (same MQTT identity), or already
    serves this SQLite database."""


class ReplicaMismatchError(ConfigError):
    """A live replica is set up differently in a way that breaks the others' work (its
    URL signing key differs)."""


class SqliteServeLock:
    """An exclusive, non-blocking lock next to the SQLite file, held while ``serve`` runs."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.path = db_path.with_name(db_path.name + ".serve.lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Raises:
        ReplicaInUseError: another process holds it (its pid is in the message)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ReplicaInUseError(
                f"{self.db_path}: another `fleetpush serve` "
                f"(pid {other}) already serves this SQLite database. SQLite is one process "
                "on one machine; to run several replicas, put the database on PostgreSQL "
                '([database] url = "postgresql://...", docs/scaling.md)'
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing drops the flock


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ReplicaIdentity:
    """This process as a replica: ``replica_id`` (its MQTT identity), host and pid.

    Args:
        replica_id: the MQTT username (= client id) this process logs in with.
        clock: the injected clock (the ``replicas`` rows use it, like the leases).
        lease_s: a row not renewed for this long belongs to a dead replica.
    """

    def __init__(self, replica_id: str, clock: Clock, lease_s: float) -> None:
        self.replica_id = replica_id
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.clock = clock
        self.lease_s = lease_s

    async def register(self, db: Database, url_key_id: str) -> None:
        """Record this process as the replica, signing payload URLs with the key named
        ``url_key_id``.

        Raises:
            ReplicaInUseError: a live process is this replica already.
            ReplicaMismatchError: a live replica signs payload URLs with another key.
        """
        rid, host, pid, now = self.replica_id, self.host, self.pid, self.clock.now()
        live_after = now - self.lease_s

        other = await db.run(
            lambda s: s.register_replica(
                rid, host, pid, now, live_after=live_after, url_key_id=url_key_id
            )
        )
        if (
            other is not None
            and other.replica_id == rid
            and other.host == host
            and not _alive(other.pid)
        ):
            logger.info("replica %s: pid %d on this host is gone; taking its place", rid, other.pid)
            gone = other.pid
            other = await db.run(
                lambda s: s.register_replica(
                    rid, host, pid, now, live_after=live_after, url_key_id=url_key_id,
                    replacing=gone,
                )
            )  # fmt: skip
        if other is None:
            return
        seen = f"seen {max(0.0, now - other.seen_at):.0f}s ago"
        if other.replica_id != rid:
            raise ReplicaMismatchError(
                f"replica {other.replica_id!r} (pid {other.pid} on {other.host}, {seen}) "
                "signs payload URLs with another url-signing.key than this one: each would "
                "refuse (403) the URLs the other sends devices. Give every replica the same "
                "url-signing.key (copy it from a running replica's data directory; a "
                f"replica that died counts for {self.lease_s:g}s; docs/scaling.md)"
            )
        raise ReplicaInUseError(
            f"replica {rid!r} (MQTT identity {rid!r}) is already running as pid "
            f"{other.pid} on {other.host} ({seen}). "
            "Two processes with one MQTT identity knock each other off the broker: give "
            "each replica its own ([mqtt] username and password_file; `fleetpush broker "
            "add-orchestrator NAME`, docs/scaling.md)"
        )

    async def beat(self, db: Database) -> None:
        rid, now = self.replica_id, self.clock.now()
        await db.run(lambda s: s.beat_replica(rid, now))

    async def leave(self, db: Database) -> None:
        rid, pid = self.replica_id, self.pid
        await db.run(lambda s: s.drop_replica(rid, pid))
