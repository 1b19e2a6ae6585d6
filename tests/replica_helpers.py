"""Several ``fleetpush serve`` replicas on one PostgreSQL database and one Mosquitto.

The replicas are ``fleetpush_sim.replicas.ReplicaSet``'s (the demo's): real processes, each
with its own broker identity and HTTP port, sharing the data folder and the database. Here
the test also reads the database directly, to check what the replicas wrote.
"""

from __future__ import annotations

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

__all__ = ["Balancer", "Replicas", "health", "write_replicas"]


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
