"""Races between replicas on one PostgreSQL database, made deterministic: the other
replica's transaction is held open (``replica_helpers.hold_row``) until this one waits
behind it, or two engines are stepped in a fixed order. Real Mosquitto, real PostgreSQL.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import psycopg
import pytest
from orch_helpers import rollout_in, running, start_devices
from replica_helpers import hold_row

from fleetpush_protocol.topics import Topics
from orchestrator.broker import MosquittoBroker
from orchestrator.config import DatabaseConfig

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def _row(url: str, sql: str, *args: Any) -> tuple[Any, ...]:
    """What the database holds (not what a replica says)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(sql, args).fetchone()
    assert row is not None
    return tuple(row)


async def test_a_retry_that_loses_to_another_replica_changes_nothing(
    tmp_path: Path, broker: MosquittoBroker, topics: Topics, postgres_database: DatabaseConfig
) -> None:
    """Retrying failed devices and re-basing the failure counts are one transaction: when
    another replica cancels the rollout in between (or this one crashes there), the
    devices must not be left pending under the old counts while the answer says 409."""
    url = postgres_database.url
    async with running(tmp_path, broker, topics, database_url=url) as s:
        await start_devices(s, "rt-1", healthy=False)
        rel = await s.api.upload("app", "2.0")
        r = await s.api.rollout(rel["id"], target={"devices": ["rt-1"]}, success_pct=100)
        rid = r["id"]
        await rollout_in(s, rid, "paused")
        bases = "SELECT failure_base, attempt_base FROM rollouts WHERE id = %s"
        before = _row(url, bases, rid)
        failed = {t["device_id"]: t["state"] for t in await s.api.targets(rid)}
        assert failed["rt-1"] in ("failed", "rolled_back"), failed
        sql = "UPDATE rollouts SET state = 'canceled', reason = 'by carol' WHERE id = %s"
        with hold_row(url, sql, (rid,)) as other:
            retry = asyncio.create_task(s.api.call("POST", f"/v1/rollouts/{rid}/retry", expect=409))
            await other.until_waited_on()
            other.commit()
            refused = await retry
        assert "changed meanwhile" in refused["error"]
        assert {t["device_id"]: t["state"] for t in await s.api.targets(rid)} == failed
        assert (await s.api.status(rid))["state"] == "canceled"
        assert _row(url, bases, rid) == before
