"""Measurement prototype, not product code: ingestion with gmqtt instead of paho.

``python -m benchmarks._gmqtt_ingest_probe [N] [--coalesce]`` feeds N reports like
``benchmarks/ingest.py`` to a gmqtt client (MQTT 5, receive maximum 65535, manual acks:
``optimistic_acknowledgement=False`` and an async ``on_message`` that returns only once the
batch holding its message is committed, so gmqtt sends the PUBACK after the commit). It
reuses ``Ingestor._validate`` and ``SQLiteStore.ingest`` on the database thread; one writer
thread takes everything queued (at least 500 rows or 20 ms) and resolves one future per
batch. ``--coalesce`` patches gmqtt to gather the writes of one loop iteration (the PUBACKs
released by one commit) into one ``transport.write``. It exists to size the migration
described in docs/performance-orchestrator.md; the orchestrator still uses paho.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import gmqtt  # type: ignore[import-untyped]
from gmqtt.mqtt import protocol as gmqtt_protocol  # type: ignore[import-untyped]

from benchmarks import ingest as bench
from benchmarks._mqtt_raw import RawPublisher, publish_packets
from fleetpush_protocol.messages import Inventory, Presence, Report
from fleetpush_protocol.topics import Topics
from orchestrator.broker import MosquittoBroker
from orchestrator.clock import SystemClock
from orchestrator.config import IngestConfig
from orchestrator.ingest import Ingestor
from orchestrator.store import Database, Store

_Item = Report | Presence | Inventory
_pending_writes: dict[int, bytearray] = {}


def _write_data(self: Any, data: bytes) -> None:
    self._connection._last_data_out = time.monotonic()
    buf = _pending_writes.get(id(self))
    if buf is None:
        buf = _pending_writes[id(self)] = bytearray()
        asyncio.get_running_loop().call_soon(_flush, self)
    buf += data


def _flush(self: Any) -> None:
    buf = _pending_writes.pop(id(self), None)
    if buf and self._transport and not self._transport.is_closing():
        self._transport.write(bytes(buf))


def measure(n: int) -> dict[str, Any]:

    with tempfile.TemporaryDirectory() as tmp:
        topics = Topics("bench")
        broker = MosquittoBroker(Path(tmp) / "broker", topics=topics)
        for user in ("bench-pub", "bench-g"):
            broker.add_orchestrator(user)
        broker.start()
        try:
            db = Database(lambda: bench._prepared_store(Path(tmp) / "db.sqlite", topics))
            items = bench._reports(topics, n, rollout_id=1)
            chunks = [publish_packets(items[i : i + bench.CHUNK]) for i in range(0, n, bench.CHUNK)]
            pub = RawPublisher(broker.host, broker.port, "bench-pub", broker.password("bench-pub"))
            validator = Ingestor(db, topics=topics, clock=SystemClock(), config=IngestConfig(),
                                 ack=lambda mid, qos: None)  # fmt: skip
            stats = {"received": 0, "committed": 0, "batches": 0}
            cond = threading.Condition()
            pending: list[_Item] = []
            current: list[asyncio.Future[None] | None] = [None]
            loop_box: list[asyncio.AbstractEventLoop] = []
            ready, done = threading.Event(), threading.Event()

            def writer() -> None:
                while not done.is_set():
                    with cond:
                        while not pending:
                            cond.wait(1.0)
                        end = time.monotonic() + 0.02
                        while len(pending) < 500 and time.monotonic() < end:
                            cond.wait(0.005)
                        batch = pending[:]
                        pending.clear()
                        fut, current[0] = current[0], None

                    def write(s: Store, batch: list[_Item] = batch) -> None:
                        s.ingest(batch, time.time())

                    db.call(write)
                    stats["committed"] += len(batch)
                    stats["batches"] += 1
                    if fut is not None:
                        loop_box[0].call_soon_threadsafe(fut.set_result, None)
                    if stats["committed"] >= n:
                        done.set()

            async def main() -> None:
                loop = asyncio.get_running_loop()
                loop_box.append(loop)
                c = gmqtt.Client("bench-g", receive_maximum=65535, clean_session=False,
                                 optimistic_acknowledgement=False,
                                 session_expiry_interval=3600)  # fmt: skip

                async def on_message(client: Any, topic: str, payload: bytes, qos: int,
                                     props: Any) -> int:  # fmt: skip
                    stats["received"] += 1
                    item = validator._validate(topic, payload)
                    if item is None:
                        return 0
                    with cond:
                        pending.append(item)
                        fut = current[0]
                        if fut is None:
                            fut = current[0] = loop.create_future()
                            cond.notify()
                    await fut
                    return 0

                c.on_message = on_message
                c.set_auth_credentials("bench-g", broker.password("bench-g"))
                await c.connect(broker.host, broker.port)
                c.subscribe(topics.reports_filter, qos=1)
                await asyncio.sleep(0.3)
                ready.set()
                await asyncio.to_thread(done.wait, 600)
                await asyncio.sleep(0.2)  # the last PUBACKs
                await c.disconnect()

            threading.Thread(target=writer, daemon=True).start()
            thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
            thread.start()
            ready.wait(30)
            t0 = time.perf_counter()
            bench._feed(pub, chunks, bench.CHUNK, lambda: stats["received"])
            done.wait(600)
            elapsed = time.perf_counter() - t0
            thread.join(10)

            def count(s: Store) -> int:
                return int(s.db.execute(  # type: ignore[attr-defined]
                    "SELECT COUNT(*) FROM reports WHERE accepted = 1").fetchone()[0])  # fmt: skip

            stored = db.call(count)
            pub.close()
            db.close()
        finally:
            broker.stop()
    return {"reports": n, "reports_per_s": round(n / elapsed), "stored": stored, **stats}


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if "--coalesce" in sys.argv:
        gmqtt_protocol.BaseMQTTProtocol.write_data = _write_data
    print(measure(int(args[0]) if args else 50_000))
