"""Several ``fleetpush serve`` replicas on one PostgreSQL database and one Mosquitto.

The replicas are ``fleetpush_sim.replicas.ReplicaSet``'s (the demo's): real processes, each
with its own broker identity and HTTP port, sharing the data folder and the database. Here
the test also reads the database directly, to check what the replicas wrote.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
from fault_helpers import healthy
from orch_helpers import write_orchestrator

from fleetpush_protocol.topics import Topics
from fleetpush_sim.replicas import Balancer, Replica, ReplicaSet
from orchestrator.broker import MosquittoBroker

__all__ = ["Balancer", "RowHold", "Replicas", "health", "hold_row", "write_replicas"]


async def health(r: Replica, session: aiohttp.ClientSession) -> dict[str, Any] | None:
    """The replica's ``/healthz`` body once it answers 200, else None."""
    if not await healthy(session, r.base):
        return None
    async with session.get(r.base + "/healthz") as resp:
        body: dict[str, Any] = await resp.json()
        return body


@dataclass
class Replicas:
    set: ReplicaSet
    database_url: str

    @property
    def items(self) -> list[Replica]:
        return self.set.items

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Read the shared database directly (what the replicas wrote, not what they say)."""
        with psycopg.connect(self.database_url) as conn:
            return list(conn.execute(sql, args).fetchall())

    def lease_holder(self, rollout_id: int) -> str | None:
        rows = self.query("SELECT holder FROM rollout_leases WHERE rollout_id = %s", (rollout_id,))
        return str(rows[0][0]) if rows else None


def write_replicas(
    root: Path, broker: MosquittoBroker, topics: Topics, *, n: int, database_url: str,
    lease: str = "3s", public_url: str, protocol: str = "5",
) -> Replicas:  # fmt: skip
    """Keys, tokens and a migrated database (``write_orchestrator``), then ``n`` replica
    configurations ``root/r<i>.toml``, each with its own broker identity, speaking MQTT
    ``protocol``."""
    write_orchestrator(root, broker, topics, database_url=database_url, protocol=protocol)
    return Replicas(ReplicaSet(root, broker, n, lease=lease, public_url=public_url), database_url)


@dataclass
class RowHold:
    """Another replica's open transaction, which has changed a row and holds its lock."""

    conn: psycopg.Connection[Any]

    async def until_waited_on(self, within: float = 60.0) -> None:
        """Return once another connection waits for this transaction's lock (the barrier:
        the orchestrator read the row as it was and now tries to change it)."""
        pid = self.conn.info.backend_pid
        deadline = time.monotonic() + within
        with psycopg.connect(self.conn.info.dsn, autocommit=True) as watch:
            while time.monotonic() < deadline:
                row = watch.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                    (pid,),
                ).fetchone()
                if row is not None and row[0]:
                    return
                await asyncio.sleep(0.05)
        raise AssertionError("nobody waited for the held row")

    def commit(self) -> None:
        self.conn.commit()


@contextmanager
def hold_row(database_url: str, sql: str, args: tuple[Any, ...]) -> Iterator[RowHold]:
    """Run ``sql`` (an UPDATE) in a transaction left open: a second replica that changed a
    rollout and has not committed yet. ``RowHold.commit`` ends it."""
    with psycopg.connect(database_url) as conn:
        changed = conn.execute(sql, args).rowcount
        assert changed == 1, (sql, changed)
        yield RowHold(conn)
