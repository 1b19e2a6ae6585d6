"""Signing and publishing update notices for 10,000 devices, as the rollout engine does.

Steps timed separately: reserve sequence numbers (one transaction), sign one notice per
device (Ed25519), store them, publish them retained at QoS 1 and wait for every PUBACK.
Baseline: publishing the same already-signed bytes (not retained, other topics) with a
second, bare ``MqttLink`` (its own MQTT codec), so the publish step is compared with the link alone.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from fleetpush_protocol.topics import Topics, device_scope
from orchestrator.broker import MosquittoBroker
from orchestrator.config import HttpConfig, MqttConfig
from orchestrator.mqtt.link import MqttLink
from orchestrator.notices import NoticeFactory
from orchestrator.payloads import UrlSigner
from orchestrator.rules import RolloutSpec
from orchestrator.security.keystore import KeyStore
from orchestrator.store import ReleaseRecord, SQLiteStore


async def _run(tmp: Path, n: int) -> dict[str, Any]:
    topics = Topics("bench")
    broker = MosquittoBroker(tmp / "broker", topics=topics)
    broker.add_orchestrator("bench-orch")
    broker.add_orchestrator("bench-bare")
    broker.start()
    try:
        now = int(time.time())
        keys = KeyStore(tmp / "keys")
        keys.init(tmp / "offline", roots=1, threshold=1, validity_s=86400, now=now)
        signing = keys.signing_set(now)
        store = SQLiteStore(tmp / "db.sqlite")
        store.migrate()
        ids = [f"dev-{i:05d}" for i in range(n)]
        store.ensure_devices(ids, now)
        rel = store.add_release(ReleaseRecord(0, "app", "1.0", "ab" * 32, 1 << 20, ("rpi4",),
                                              "directory", {}, {}, now))  # fmt: skip
        r = store.create_rollout(release_id=rel.id, target={"all": True}, spec=RolloutSpec(),
                                 assignments=[(d, i, 0) for i, d in enumerate(ids)], now=now,
                                 actor="bench")  # fmt: skip
        factory = NoticeFactory(topics, HttpConfig(), UrlSigner(b"k" * 32), 86400)
        t0 = time.perf_counter()
        seqs = store.reserve_seqs([device_scope(d) for d in ids], now * 1000)
        t1 = time.perf_counter()
        records = factory.updates(signing, rel, rollout_id=r.id, device_ids=ids, seqs=seqs,
                                  now=now)  # fmt: skip
        t2 = time.perf_counter()
        store.save_notices(records, dict.fromkeys(ids, True))
        t3 = time.perf_counter()

        def link(user: str) -> MqttLink:
            cfg = MqttConfig(
                url=broker.url,
                username=user,
                password=broker.password(user),
                topic_prefix=topics.prefix,
            )
            lk = MqttLink(cfg)
            lk.start()
            return lk

        orch = link("bench-orch")
        t4 = time.perf_counter()
        await orch.publish_many([(n_.topic, n_.envelope, True) for n_ in records], timeout=300)
        t5 = time.perf_counter()
        store.mark_published([n_.notice_id for n_ in records])
        t6 = time.perf_counter()
        orch.stop()
        bare = link("bench-bare")
        b0 = time.perf_counter()
        await bare.publish_many([(n_.topic + "/b", n_.envelope, False) for n_ in records],
                                timeout=300)  # fmt: skip
        b1 = time.perf_counter()
        bare.stop()
        store.close()
    finally:
        broker.stop()
    total = (t3 - t0) + (t6 - t4)
    return {
        "devices": n,
        "notice_bytes": len(records[0].envelope),
        "reserve_seqs_s": round(t1 - t0, 3),
        "sign_s": round(t2 - t1, 3),
        "store_s": round(t3 - t2, 3),
        "publish_and_puback_s": round(t5 - t4, 3),
        "mark_published_s": round(t6 - t5, 3),
        "total_s": round(total, 3),
        "notices_per_s": round(n / total),
        "baseline_publish_same_bytes_s": round(b1 - b0, 3),
    }


def run(quick: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        return asyncio.run(_run(Path(tmp), 2000 if quick else 10_000))
