"""Report ingestion with 1, 2 and 3 replicas on one PostgreSQL and one Mosquitto.

Each replica is its own process, as ``fleetpush serve`` replicas are: the orchestrator's
``MqttLink`` on a shared subscription (``$share/<group>/<prefix>/d/+/report``, its own
broker identity) + ``Ingestor`` + a ``PostgresStore`` pool. A raw-socket publisher sends
the same pre-encoded QoS 1 reports (1,000 devices, each about a notice really sent to it)
to each set of replicas in turn, never more than 30,000 ahead of what they received; done
when every report is committed, then the rows are counted in the database (stored once:
``(device_id, counter)`` is the key). Each run has a fresh database.

The ceiling, in the same run: a bare client on the same codec that only counts and
PUBACKs (``benchmarks/ingest.py``'s), alone on the plain subscription: what one broker
hands to one connection. PostgreSQL, Mosquitto, the publisher and every replica share the
machine's cores, so on a 2-core machine the replicas compete with their own database.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
import time
import uuid
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

from benchmarks._cpu import CpuWatch
from benchmarks._mqtt_raw import RawPublisher, publish_packets
from benchmarks.ingest import CHUNK, DEVICES, _bare_client, _feed, _reports
from fleetpush_common.clock import SystemClock
from fleetpush_protocol.topics import Topics
from orchestrator.broker import MosquittoBroker
from orchestrator.config import DatabaseConfig, IngestConfig, MqttConfig
from orchestrator.ingest import Ingestor
from orchestrator.mqtt.link import MqttLink
from orchestrator.rules import RolloutSpec
from orchestrator.store import Database, NoticeRecord, ReleaseRecord, open_store
from orchestrator.store.postgres.local import LocalPostgres

REPLICAS = (1, 2, 3)


def _replica(  # noqa: PLR0917 - one child process's whole setting
    mqtt: MqttConfig, url: str, share: str, received: Synchronized[int],
    committed: Synchronized[int], stop: Any, ready: Any,
) -> None:  # fmt: skip
    """One replica: link + ingestor + PostgreSQL pool, until ``stop`` is set."""
    topics = mqtt.topics
    db = Database(lambda: open_store(DatabaseConfig(url=url, pool_min=2, pool_max=4)))
    link = MqttLink(mqtt, [f"$share/{share}/{topics.reports_filter}"])
    ingestor = Ingestor(db, topics=topics, clock=SystemClock(), config=IngestConfig(),
                        ack=link.ack, publish=link.publish_many)  # fmt: skip
    link.on_message = ingestor.on_message
    ingestor.start()
    link.start()
    time.sleep(0.3)  # SUBACK
    ready.set()
    while not stop.is_set():
        received.value = ingestor.stats.received
        committed.value = ingestor.stats.committed
        time.sleep(0.005)
    received.value = ingestor.stats.received
    committed.value = ingestor.stats.committed
    ingestor.stop()
    link.stop()
    db.close()


def _prepare(url: str, topics: Topics) -> None:
    """One rollout whose notices went to every simulated device."""
    store = open_store(DatabaseConfig(url=url))
    try:
        now = time.time()
        ids = [f"dev-{i:05d}" for i in range(DEVICES)]
        store.ensure_devices(ids, now)
        rel = store.add_release(ReleaseRecord(0, "app", "1.0", "ab" * 32, 1, (), "directory",
                                              {}, {}, now))  # fmt: skip
        r = store.create_rollout(release_id=rel.id, target={"all": True}, spec=RolloutSpec(),
                                 assignments=[(d, i, 0) for i, d in enumerate(ids)], now=now,
                                 actor="bench")  # fmt: skip
        store.save_notices(
            [NoticeRecord(f"n-{i:05d}", d, r.id, "notice", f"device/{d}", 1,
                          topics.device_notice(d), now, now + 3600, b"")
             for i, d in enumerate(ids)],
            dict.fromkeys(ids, True),
        )  # fmt: skip
    finally:
        store.close()


def _stored(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT COUNT(*) FROM reports WHERE accepted = 1").fetchone()
        return int(row[0]) if row else 0


def _run_replicas(  # noqa: PLR0917 - one measured run
    broker: MosquittoBroker, pg: LocalPostgres, topics: Topics, packets: list[bytes], n: int,
    pub: RawPublisher, k: int,
) -> dict[str, Any]:  # fmt: skip
    url = pg.create_database(f"rep{k}_{uuid.uuid4().hex[:8]}")
    _prepare(url, topics)
    ctx = mp.get_context("spawn")
    share = f"g{k}{uuid.uuid4().hex[:6]}"
    users = [f"bench-rep{k}-{i}-{share}" for i in range(k)]
    for u in users:
        broker.add_orchestrator(u)
    broker.reload()
    received = [ctx.Value("q", 0) for _ in users]
    committed = [ctx.Value("q", 0) for _ in users]
    stop, readies = ctx.Event(), [ctx.Event() for _ in users]
    procs = []
    for i, u in enumerate(users):
        cfg = MqttConfig(url=broker.url, username=u,
                         password=broker.password(u), topic_prefix=topics.prefix)  # fmt: skip
        p = ctx.Process(target=_replica, args=(cfg, url, share, received[i], committed[i],
                                               stop, readies[i]), daemon=True)  # fmt: skip
        p.start()
        procs.append(p)
    for r in readies:
        if not r.wait(60):
            raise RuntimeError("a replica did not start")
    watch = CpuWatch(lambda: {
        "replicas": [p.pid for p in procs if p.pid is not None],
        "postgresql": [pg.postmaster_pid()],
        "mosquitto": [pid] if (pid := broker.process.find_pid()) else [],
        "publisher": [os.getpid()],
    })  # fmt: skip
    cpu0 = watch.sample()
    t0 = time.perf_counter()
    _feed(pub, packets, CHUNK, lambda: sum(v.value for v in received))
    deadline = time.monotonic() + 600
    while sum(v.value for v in committed) < n and time.monotonic() < deadline:
        time.sleep(0.005)
    elapsed = time.perf_counter() - t0
    cpu = CpuWatch.between(cpu0, watch.sample())
    stop.set()
    for p in procs:
        p.join(30)
    shares = [v.value for v in committed]
    # Forget the sessions (a clean login with each identity), or the broker keeps queueing
    # for the group while the next run goes on.
    for u in users:
        RawPublisher(broker.host, broker.port, u, broker.password(u)).close()
    stored = _stored(url)
    pg.drop_database(url.rsplit("/", 1)[-1].split("?")[0])
    return {"replicas": k, "reports_per_s": round(n / elapsed), "per_replica": shares,
            "stored": stored, "lost": n - stored, "cpu_cores": cpu}  # fmt: skip


def run(quick: bool) -> dict[str, Any]:
    n = 20_000 if quick else 100_000
    with tempfile.TemporaryDirectory() as tmp, LocalPostgres() as pg:
        topics = Topics("bench")
        broker = MosquittoBroker(Path(tmp) / "broker", topics=topics)
        for user in ("bench-pub", "bench-bare"):
            broker.add_orchestrator(user)
        broker.start()
        try:
            items = _reports(topics, n, rollout_id=1)
            packets = [publish_packets(items[i : i + CHUNK]) for i in range(0, n, CHUNK)]
            pub = RawPublisher(broker.host, broker.port, "bench-pub", broker.password("bench-pub"))
            bare_s = _bare_client(broker, "bench-bare", topics, packets, n, pub)
            runs = [_run_replicas(broker, pg, topics, packets, n, pub, k) for k in REPLICAS]
            pub.close()
        finally:
            broker.stop()
    one = runs[0]["reports_per_s"]
    return {
        "reports": n,
        "bare_client_reports_per_s": round(n / bare_s),
        "runs": runs,
        "speedup": {str(r["replicas"]): round(r["reports_per_s"] / one, 2) for r in runs},
        "vs_ceiling": {str(r["replicas"]): round(r["reports_per_s"] * bare_s / n, 3) for r in runs},
        "goal": "2 replicas >= 1.6x one; every report stored once",
    }
