"""Notices signed and published per second over a rollout of N devices, rate limit off.

The real ``RolloutEngine`` on PostgreSQL (N registered devices, a rollout for all of them
created by the database, one phase, no rate limit) publishes through the real
``MqttLink`` to a real Mosquitto; its passes run back to back until no target is pending
(each: reserve sequences, sign, store, publish retained at QoS 1, wait for every PUBACK,
mark published). Ceiling, in the same run: a second, bare ``MqttLink`` publishing the same
signed bytes (the codec client's raw rate, other topics, not retained, no database).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import psycopg

from fleetpush_common.clock import SystemClock
from fleetpush_protocol.topics import Topics
from orchestrator.broker import MosquittoBroker
from orchestrator.config import DatabaseConfig, HttpConfig, MqttConfig
from orchestrator.engine import RolloutEngine
from orchestrator.mqtt.link import MqttLink
from orchestrator.notices import NoticeFactory
from orchestrator.payloads import UrlSigner
from orchestrator.rollouts import TargetSpec, phase_key, selector
from orchestrator.rules import RolloutSpec
from orchestrator.security.keystore import KeyStore
from orchestrator.store import Database, ReleaseRecord, Store, open_store

__all__ = ["run"]


async def _run(database: DatabaseConfig, n: int, tmp: Path) -> dict[str, Any]:
    topics = Topics("bench")
    broker = MosquittoBroker(tmp / "broker", topics=topics)
    broker.add_orchestrator("bench-orch")
    broker.add_orchestrator("bench-bare")
    broker.start()
    db = Database(lambda: open_store(database))
    try:
        now = int(time.time())
        keys = KeyStore(tmp / "keys")
        keys.init(tmp / "offline", roots=1, threshold=1, validity_s=86400, now=now)
        signing = keys.signing_set(now)
        ids = [f"dev-{i:07d}" for i in range(n)]

        def prepare(s: Store) -> int:
            s.sync_registry([(d, ("fleet",), "rpi4") for d in ids], now)
            rel = s.add_release(ReleaseRecord(0, "app", "1.0", "ab" * 32, 1 << 20, ("rpi4",),
                                              "directory", {}, {}, now))  # fmt: skip
            target = TargetSpec(all=True)
            return s.create_rollout_for(
                release_id=rel.id, target=target.to_json(), spec=RolloutSpec(),
                selector=selector(target, rel), key=phase_key(rel.id, target), now=now,
                actor="bench",
            ).id  # fmt: skip

        rid = await db.run(prepare)

        def link(user: str) -> MqttLink:
            lk = MqttLink(MqttConfig(url=broker.url, username=user,
                                     password=broker.password(user),
                                     topic_prefix=topics.prefix))  # fmt: skip
            lk.start()
            return lk

        orch = link("bench-orch")
        engine = RolloutEngine(
            db, notices=NoticeFactory(topics, HttpConfig(), UrlSigner(b"k" * 32), 86400),
            publisher=orch, signing=lambda _t: signing, clock=SystemClock(), tick_s=0.01,
        )  # fmt: skip
        passes = 0
        t0 = time.perf_counter()
        while True:
            await engine.tick()
            passes += 1
            left = await db.run(lambda s: len(s.pending_targets(rid, 0, 1)))
            if not left:
                break
        t_engine = time.perf_counter() - t0
        orch.stop()
        with psycopg.connect(database.url) as conn:
            stored = conn.execute("SELECT topic, envelope FROM notices").fetchall()
        items = [(f"{topic}/b", bytes(env), False) for topic, env in stored]
        published = await db.run(lambda s: s.state_counts(rid))
        bare = link("bench-bare")
        b0 = time.perf_counter()
        await bare.publish_many(items, timeout=600)
        t_bare = time.perf_counter() - b0
        bare.stop()
    finally:
        db.close()
        broker.stop()
    return {
        "devices": n,
        "passes": passes,
        "notices": len(items),
        "targets_sent": published.get("sent", 0),
        "engine_s": round(t_engine, 2),
        "engine_notices_per_s": round(len(items) / t_engine),
        "bare_link_s": round(t_bare, 2),
        "bare_link_per_s": round(len(items) / t_bare),
        "ratio": round(t_bare / t_engine, 2),
    }


def run(database: DatabaseConfig, n: int, tmp: Path) -> dict[str, Any]:
    return asyncio.run(_run(database, n, tmp))
