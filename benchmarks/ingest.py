"""Report ingestion into SQLite, nothing lost, against a bare MQTT client in the same run.

Every receiver is an MQTT 5 client (receive maximum 65535) subscribed at QoS 1 to the
reports filter of one Mosquitto. A raw-socket publisher sends the same N pre-encoded
reports (from 1,000 devices, each about a notice really sent to it) to each in turn.

* baseline: a bare client on the orchestrator's own MQTT codec (``_mqtt_raw.RawSubscriber``,
  asyncio on its own thread, as the link runs) that only counts messages and PUBACKs each
  read's at once;
* orchestrator: ``MqttLink`` (the same codec) + ``Ingestor`` + SQLite: rate-limit and
  size-check, decode, validate, deduplicate, write in batches, PUBACK after commit, and
  confirm the stored counters to each device (one ``Ack`` per device per ack interval,
  published with ``publish_many``). Done when every report is committed; then the rows are
  counted in the database. It runs twice in the same run, on fresh databases: without the
  acks (``publish=None``) and with them, so the acks' cost is measured back to back.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks._mqtt_raw import RawPublisher, RawSubscriber, publish_packets
from fleetpush_common.clock import SystemClock
from fleetpush_protocol.envelope import encode_message
from fleetpush_protocol.messages import Report, ReportState
from fleetpush_protocol.topics import Topics
from orchestrator.broker import MosquittoBroker
from orchestrator.config import IngestConfig, MqttConfig
from orchestrator.ingest import Ingestor
from orchestrator.mqtt.link import MqttLink
from orchestrator.rules import RolloutSpec
from orchestrator.store import Database, NoticeRecord, ReleaseRecord, SQLiteStore, Store

DEVICES = 1000
CHUNK = 5000  # reports per send


def _reports(topics: Topics, n: int, rollout_id: int) -> list[tuple[str, bytes]]:
    states = [ReportState.NOTIFIED, ReportState.DOWNLOADING, ReportState.DOWNLOADED,
              ReportState.INSTALLING, ReportState.INSTALLED, ReportState.SUCCEEDED]  # fmt: skip
    now = int(time.time())
    out = []
    for i in range(n):
        dev, counter = i % DEVICES, i // DEVICES + 1
        device_id = f"dev-{dev:05d}"
        report = Report(device_id=device_id, notice_id=f"n-{dev:05d}", rollout_id=str(rollout_id),
                        state=states[min(counter - 1, len(states) - 1)], current_version="1.0",
                        counter=counter, reported_at=now)  # fmt: skip
        out.append((topics.report(device_id), encode_message(report)))
    return out


WINDOW = 30_000  # reports the publisher may run ahead of the receiver (broker queue bound)


def _feed(pub: RawPublisher, chunks: list[bytes], chunk_n: int, progress: Any) -> None:
    """Send chunk after chunk, never more than WINDOW ahead of what was received."""
    for i, chunk in enumerate(chunks):
        while i * chunk_n - progress() > WINDOW:
            time.sleep(0.001)
        pub.send(chunk)


def _bare_client(  # noqa: PLR0917 - one run of one receiver
    broker: MosquittoBroker, user: str, topics: Topics, packets: list[bytes], n: int,
          pub: RawPublisher) -> float:  # fmt: skip
    done = threading.Event()
    ready = threading.Event()

    def on_publish(topic: str, payload: bytes) -> bool:
        if len(sub.received) == n - 1:
            done.set()
        return True

    sub = RawSubscriber(user, user, broker.password(user), [topics.reports_filter],
                        on_publish=on_publish, version=5)  # fmt: skip

    async def main() -> None:
        await sub.connect(broker.host, broker.port)
        ready.set()
        await asyncio.to_thread(done.wait, 600)
        await sub.close()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    if not ready.wait(30):
        raise RuntimeError("bare client did not connect")
    t0 = time.perf_counter()
    _feed(pub, packets, CHUNK, lambda: len(sub.received))
    if not done.wait(600):
        raise RuntimeError(f"bare client got {len(sub.received)} of {n}")
    elapsed = time.perf_counter() - t0
    thread.join(10)
    return elapsed


def _orchestrator(  # noqa: PLR0917 - one run of one receiver
    broker: MosquittoBroker, user: str, topics: Topics, packets: list[bytes], n: int,
    pub: RawPublisher, db: Database, acks: bool,
) -> tuple[float, int, int, int, float]:  # fmt: skip
    cfg = MqttConfig(url=broker.url, username=user,
                     password=broker.password(user), topic_prefix=topics.prefix)  # fmt: skip
    link = MqttLink(cfg, [topics.reports_filter])
    ingestor = Ingestor(db, topics=topics, clock=SystemClock(),
                        config=IngestConfig(),
                        ack=link.ack,
                        publish=link.publish_many if acks else None)  # fmt: skip
    link.on_message = ingestor.on_message
    ingestor.start()
    link.start()
    time.sleep(0.3)  # SUBACK
    t0, cpu0 = time.perf_counter(), time.process_time()
    _feed(pub, packets, CHUNK, lambda: ingestor.stats.received)
    deadline = time.monotonic() + 600
    while ingestor.stats.committed < n and time.monotonic() < deadline:
        time.sleep(0.005)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    batches = ingestor.stats.batches
    ingestor.stop()  # publishes the last acks, so the link must still be up
    acks_sent = ingestor.stats.acks_sent
    link.stop()
    # Forget the link's persistent session (a clean-session login with its identity), or
    # the broker keeps queueing every report for it while the next receiver runs.
    RawPublisher(broker.host, broker.port, user, broker.password(user)).close()

    def count(s: Store) -> int:
        assert isinstance(s, SQLiteStore)
        return int(s.db.execute("SELECT COUNT(*) FROM reports WHERE accepted = 1").fetchone()[0])

    return elapsed, db.call(count), batches, acks_sent, cpu


def run(quick: bool) -> dict[str, Any]:
    n = 20_000 if quick else 100_000
    with tempfile.TemporaryDirectory() as tmp:
        topics = Topics("bench")
        broker = MosquittoBroker(Path(tmp) / "broker", topics=topics)
        for user in ("bench-pub", "bench-bare", "bench-orch", "bench-orch-noack"):
            broker.add_orchestrator(user)
        broker.start()
        try:
            items = _reports(topics, n, rollout_id=1)
            packets = [publish_packets(items[i : i + CHUNK]) for i in range(0, n, CHUNK)]
            pub = RawPublisher(broker.host, broker.port, "bench-pub", broker.password("bench-pub"))
            bare_s = _bare_client(broker, "bench-bare", topics, packets, n, pub)
            db = Database(lambda: _prepared_store(Path(tmp) / "noack.sqlite", topics))
            noack_s, _, _, _, noack_cpu = _orchestrator(
                broker, "bench-orch-noack", topics, packets, n, pub, db, acks=False
            )
            db.close()
            db = Database(lambda: _prepared_store(Path(tmp) / "db.sqlite", topics))
            orch_s, stored, batches, acks, orch_cpu = _orchestrator(
                broker, "bench-orch", topics, packets, n, pub, db, acks=True
            )
            pub.close()
            db.close()
        finally:
            broker.stop()
    bare_rate, orch_rate, noack_rate = n / bare_s, n / orch_s, n / noack_s
    return {
        "reports": n,
        "bare_client_reports_per_s": round(bare_rate),
        "orchestrator_without_acks_reports_per_s": round(noack_rate),
        "orchestrator_reports_per_s": round(orch_rate),
        "with_acks_vs_without": round(orch_rate / noack_rate, 3),
        # this process's CPU (all threads, the publisher's too) per report: less sensitive
        # to other jobs on a shared machine than the rates
        "cpu_us_per_report_without_acks": round(noack_cpu / n * 1e6, 1),
        "cpu_us_per_report": round(orch_cpu / n * 1e6, 1),
        "ratio": round(orch_rate / bare_rate, 3),
        "stored": stored,
        "lost": n - stored,
        "batches": batches,
        "acks_sent": acks,
        "goal": ">= 0.6 of the bare client and >= 20,000 reports/s, nothing lost; "
        "acks within 10% of the rate without them",
    }


def _prepared_store(path: Path, topics: Topics) -> Store:
    """A store with one rollout whose notices went to every simulated device."""
    store = SQLiteStore(path)
    store.migrate()
    now = time.time()
    ids = [f"dev-{i:05d}" for i in range(DEVICES)]
    store.ensure_devices(ids, now)
    rel = store.add_release(ReleaseRecord(0, "app", "1.0", "ab" * 32, 1, (), "directory", {},
                                          {}, now))  # fmt: skip
    r = store.create_rollout(release_id=rel.id, target={"all": True}, spec=RolloutSpec(),
                             assignments=[(d, i, 0) for i, d in enumerate(ids)], now=now,
                             actor="bench")  # fmt: skip
    store.save_notices(
        [NoticeRecord(f"n-{i:05d}", d, r.id, "notice", f"device/{d}", 1, topics.device_notice(d),
                      now, now + 3600, b"") for i, d in enumerate(ids)],
        dict.fromkeys(ids, True),
    )  # fmt: skip
    return store
