"""Fan-out: time for one signed notice to reach and be verified by N connected devices.

Against the ceiling measured in the same run, on the same broker: a fleet of minimal
raw-socket MQTT subscribers (``benchmarks/_mqtt_raw.py``) that only receive. Two shapes:

- group: one notice on a group (channel) topic every device subscribes to, one publish;
- per-device: one notice per device on its own topic, N publishes.

The notices are published at QoS 1 through the orchestrator's own MQTT link
(``orchestrator.mqtt_link.MqttLink``), not retained. "Verified" means a real
``DeviceAgent`` checked the signatures, keyring, expiry, sequence and target, and queued
its ``notified`` report (the devices hold updates by policy, so nothing is downloaded).
Agents run in worker processes of 2,500 each (one process holding 10,000 aiomqtt
clients is CPU-bound on this 2-core machine; see docs/performance.md).

Goal (issue 6): 10,000 devices notified and verified within 2x the raw-subscriber time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._fleet import REPO, BenchSigner, WorkerFleet
from benchmarks._mqtt_raw import RawSubscriber, connect_all
from fleetpush_protocol.topics import Topics
from orchestrator.broker import MosquittoBroker
from orchestrator.config import MqttConfig
from orchestrator.mqtt_link import MqttLink
from orchestrator.sim.fleet import provision_passwords
from orchestrator.sim.limits import freeze_heap, raise_open_files

GROUP = "bench"


class VerifyingFleet:
    """Verifying raw clients in ``os.cpu_count()`` worker processes (benchmarks._verifyproc)."""

    def __init__(
        self, broker: MosquittoBroker, topics: Topics, signer: BenchSigner, ids: list[str],
        passwords: dict[str, str],
    ) -> None:  # fmt: skip
        self.procs: list[asyncio.subprocess.Process] = []
        workers = max(1, os.cpu_count() or 1)
        self.configs = [
            {"host": broker.host, "port": broker.port, "group": GROUP,
             "keyring": signer.keyring().hex(), "root": signer.root_hex,
             "devices": [(d, passwords[d]) for d in ids[w::workers]],
             "topics": {d: [topics.group_notice(GROUP), topics.device_notice(d)]
                        for d in ids[w::workers]}}
            for w in range(workers)
        ]  # fmt: skip

    async def _ask(self, proc: asyncio.subprocess.Process, obj: dict[str, Any]) -> Any:
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write((json.dumps(obj) + "\n").encode())
        await proc.stdin.drain()
        return json.loads(await proc.stdout.readline())

    async def start(self) -> None:
        for _ in self.configs:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "benchmarks._verifyproc", cwd=REPO,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                limit=1 << 24,
            )  # fmt: skip
            self.procs.append(proc)
        await asyncio.gather(
            *(self._ask(p, {"config": c}) for p, c in zip(self.procs, self.configs, strict=True))
        )

    async def wait(self, k: int, within_s: float) -> float | None:
        """perf_counter time by which every client had verified ``k`` notices."""
        answers = await asyncio.gather(
            *(self._ask(p, {"wait": k, "timeout": within_s}) for p in self.procs)
        )
        expected = sum(len(c["devices"]) for c in self.configs)
        if sum(a["count"] for a in answers) < expected:
            return None
        return max(float(a["last"]) for a in answers)

    async def stop(self) -> None:
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.write(b'{"stop": true}\n')
            await p.stdin.drain()
        for p in self.procs:
            await p.wait()


async def _wait_raw(subs: list[RawSubscriber], count: int, timeout_s: float) -> float | None:
    deadline = time.monotonic() + timeout_s
    while any(len(s.received) < count for s in subs):
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(0.002)
    return max(s.received[count - 1] for s in subs)


def _s(t: float | None, t0: float) -> float | None:
    return None if t is None else round(t - t0, 3)


async def _one(n: int, root: Path) -> dict[str, Any]:
    topics = Topics()
    broker = MosquittoBroker(root / "broker", topics=topics)
    ids = [f"dev-{i:05d}" for i in range(n)]
    passwords = provision_passwords(broker, ids, (GROUP,))
    broker.start()
    signer = BenchSigner()
    link = MqttLink(
        MqttConfig(host=broker.host, port=broker.port, username=broker.ORCHESTRATOR_USER,
                   password=broker.orchestrator_password, topic_prefix=topics.prefix), [],
    )  # fmt: skip
    out: dict[str, Any] = {"devices": n}
    fleet: WorkerFleet | None = None
    try:
        await asyncio.to_thread(link.start)
        await link.publish_many([(topics.keyring(1), signer.keyring(), True)])
        group_topic = topics.group_notice(GROUP)

        # --- the ceiling: raw subscribers --------------------------------------------
        subs = [RawSubscriber(d, d, passwords[d], [group_topic, topics.device_notice(d)])
                for d in ids]  # fmt: skip
        t = time.perf_counter()
        await connect_all(subs, broker.host, broker.port)
        out["raw_connect_s"] = round(time.perf_counter() - t, 2)
        freeze_heap()
        env = signer.notice("g-raw", group=GROUP, topics=topics)
        t0 = time.perf_counter()
        await link.publish_many([(group_topic, env, False)])
        out["raw_group_s"] = _s(await _wait_raw(subs, 1, 60), t0)
        envs = [(topics.device_notice(d), signer.notice("d-raw", device=d, topics=topics), False)
                for d in ids]  # fmt: skip
        t0 = time.perf_counter()
        await link.publish_many(envs, timeout=120)
        out["raw_per_device_s"] = _s(await _wait_raw(subs, 2, 120), t0)
        for s in subs:
            await s.close()
        await asyncio.sleep(1)

        # --- the same minimal clients, each verifying with the device's real verifier,
        # spread over one process per core (the broker shares those cores) ---------------
        vfleet = VerifyingFleet(broker, topics, signer, ids, passwords)
        await vfleet.start()
        env = signer.notice("g-v", group=GROUP, topics=topics)
        t0 = time.perf_counter()
        await link.publish_many([(group_topic, env, False)])
        out["verifying_group_s"] = _s(await vfleet.wait(1, 60), t0)
        envs = [(topics.device_notice(d), signer.notice("d-v", device=d, topics=topics), False)
                for d in ids]  # fmt: skip
        t0 = time.perf_counter()
        await link.publish_many(envs, timeout=120)
        out["verifying_per_device_s"] = _s(await vfleet.wait(2, 120), t0)
        await vfleet.stop()
        await asyncio.sleep(1)

        # --- the device agents -------------------------------------------------------
        fleet = WorkerFleet(
            {"broker_url": broker.url, "prefix": topics.prefix, "root_key": signer.root_hex,
             "groups": [GROUP], "state_root": str(root / "devices"), "hold_updates": True},
            [(d, passwords[d]) for d in ids], root / "workers.log",
        )  # fmt: skip
        out["agents"] = await fleet.start()
        await asyncio.sleep(1)  # let the connect storm settle
        env = signer.notice("g-1", group=GROUP, seq=2, topics=topics)
        await fleet.watch("g-1")
        await asyncio.sleep(0.2)
        t0 = time.perf_counter()
        await link.publish_many([(group_topic, env, False)])
        got = await fleet.collect()
        out["agent_group_s"] = _s(got["last"], t0)
        out["agent_group_verified"] = got["count"]
        envs = [(topics.device_notice(d), signer.notice("d-1", device=d, seq=1, topics=topics),
                 False) for d in ids]  # fmt: skip
        await fleet.watch("d-1")
        await asyncio.sleep(0.2)
        t0 = time.perf_counter()
        await link.publish_many(envs, timeout=120)
        got = await fleet.collect()
        out["agent_per_device_s"] = _s(got["last"], t0)
        out["agent_per_device_verified"] = got["count"]
    finally:
        if fleet is not None:
            await fleet.stop()
        await asyncio.to_thread(link.stop)
        broker.stop()
    for shape in ("group", "per_device"):
        raw, agent = out.get(f"raw_{shape}_s"), out.get(f"agent_{shape}_s")
        verifying = out.get(f"verifying_{shape}_s")
        if raw and agent:
            out[f"{shape}_ratio"] = round(agent / raw, 2)
        if raw and verifying:
            out[f"{shape}_verifying_ratio"] = round(verifying / raw, 2)
    return out


def run(quick: bool = False) -> dict[str, Any]:
    raise_open_files()
    sizes = [1000] if quick else [1000, 10_000]
    results: dict[str, Any] = {"goal": "10,000 devices verified within 2x the raw time"}
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="fleetpush-fanout-") as tmp:
            results[str(n)] = asyncio.run(_one(n, Path(tmp)))
    with contextlib.suppress(KeyError, TypeError):
        big = results["10000"]
        results["goal_met_agents"] = big["group_ratio"] <= 2 and big["per_device_ratio"] <= 2
        results["goal_met_verifying_clients"] = (
            big["group_verifying_ratio"] <= 2 and big["per_device_verifying_ratio"] <= 2
        )
    return results
