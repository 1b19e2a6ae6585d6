"""Faults during a rollout of 50 real devices: nothing is lost, nothing half-installed.

The orchestrator is a real ``fleetpush serve`` process (SQLite, HTTP, MQTT), the devices
real ``DeviceAgent``s (in this process, or as child processes where a SIGKILL is needed),
the broker the test's own Mosquitto. Each test breaks something mid-rollout, lets the
rollout finish, stops every agent and then checks ``fault_helpers.check_fleet``:

* every device ends in a terminal state, and the orchestrator says the same state;
* the report counters the device used are exactly the ones the orchestrator stored
  (none lost, none twice);
* ``current`` points at a complete slot whose files are the release's, or at nothing.

Randomness is seeded (``SEED``), so a failure reproduces.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from device_helpers import AgentProcess, write_config
from fault_helpers import (
    TERMINAL,
    FlakyProxy,
    can_mount_tmpfs,
    check_fleet,
    healthy,
    release_tar,
    tmpfs,
)
from orch_helpers import (
    SERVE_START_S,
    TOKENS,
    Api,
    Fleet,
    root_hex,
    wait_until,
    write_orchestrator,
)

from fleetpush_protocol.topics import Topics
from fleetpush_sim.replicas import ServeProcess
from orchestrator.broker import MosquittoBroker
from orchestrator.broker.mosquitto import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

SEED = 7
N = 50
PAYLOAD = release_tar("5.0", filler=200_000)
# ~1 s per download (loopback would finish the whole rollout before any fault lands)
FAST = {
    "download": {
        "max_attempts": 20, "read_timeout": "2s", "connect_timeout": "1s",
        "bandwidth_bytes_per_s": 200_000,
    },
    # Reports stored by an orchestrator killed before its next ack round are confirmed
    # only when the device resends them: after this timeout rather than the default 30 s.
    "broker": {"ack_timeout": "2s"},
}  # fmt: skip


@dataclass
class Rig:
    root: Path
    broker: MosquittoBroker
    topics: Topics
    serve: ServeProcess
    api: Api
    fleet: Fleet
    base: str
    procs: dict[str, AgentProcess] = field(default_factory=dict)

    def provision(self, device_id: str, sections: dict[str, dict[str, Any]]) -> None:
        password = self.broker.add_device(device_id)
        self.fleet.configs[device_id] = write_config(
            self.fleet.root / f"{device_id}.toml", broker=self.broker, topics=self.topics,
            device_id=device_id, password=password, root_hex=self.fleet.root_key,
            sections=sections,
        )  # fmt: skip

    def state_dir(self, device_id: str) -> Path:
        return self.fleet.root / f"state-{device_id}"

    def spawn(self, device_id: str) -> AgentProcess:
        p = AgentProcess(self.fleet.configs[device_id], self.root / f"{device_id}.log")
        p.start()
        self.procs[device_id] = p
        return p

    async def online(self, ids: list[str]) -> None:
        async def check() -> bool:
            devs = await self.api.call("GET", "/v1/devices", params={"online": "true"})
            return {d["device_id"] for d in devs["devices"]} >= set(ids)

        await wait_until(check, within=60, what=f"{len(ids)} devices online")

    async def targets(self, rollout_id: int) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = (
            await self.api.call("GET", f"/v1/rollouts/{rollout_id}/targets")
        )["targets"]
        return result

    async def count(self, rollout_id: int, states: set[str]) -> int:
        return sum(t["state"] in states for t in await self.targets(rollout_id))

    async def finish(self, rollout_id: int, ids: list[str], within: float = 120) -> None:
        """Wait until every target is terminal and every device has sent every report."""

        async def done() -> bool:
            return await self.count(rollout_id, TERMINAL) == len(ids)

        try:
            await wait_until(done, within=within, what="every target terminal")
        except AssertionError:
            stuck = [(t["device_id"], t["state"]) for t in await self.targets(rollout_id)
                     if t["state"] not in TERMINAL]  # fmt: skip
            from fault_helpers import db_reports, device_truth

            stored = db_reports(self.root / "orch" / "fleetpush.db")
            detail = [
                (d, st, device_truth(self.state_dir(d), d), stored.get(d)) for d, st in stuck[:3]
            ]
            raise AssertionError(f"not terminal ({len(stuck)}): {detail}") from None
        agents = list(self.fleet.agents.values())

        async def drained() -> bool:
            return all(len(a.state.outbox) == 0 for a in agents)

        await wait_until(drained, within=30, what="every outbox empty")
        await self.fleet.stop_all()
        for p in self.procs.values():
            assert p.terminate() == 0

    def check(self, rollout_id: int, ids: list[str]) -> dict[str, int]:
        return check_fleet(
            db=self.root / "orch" / "fleetpush.db", rollout_id=rollout_id,
            devices={d: self.state_dir(d) for d in ids}, payload=PAYLOAD, version="5.0",
        )  # fmt: skip


@pytest.fixture
async def rig(tmp_path: Path, broker: MosquittoBroker, topics: Topics) -> AsyncIterator[Rig]:
    config, port = write_orchestrator(tmp_path, broker, topics)
    base = f"http://127.0.0.1:{port}"
    serve = ServeProcess(config, tmp_path / "serve.log")
    (tmp_path / "devices").mkdir()
    fleet = Fleet(tmp_path / "devices", broker, topics, root_hex(tmp_path))
    async with aiohttp.ClientSession() as session:
        rig = Rig(tmp_path, broker, topics, serve, Api(session, base, TOKENS["operator"]),
                  fleet, base)  # fmt: skip
        try:
            yield rig
        finally:
            await fleet.stop_all()
            for p in rig.procs.values():
                p.kill()
            serve.stop()


async def start_rollout(rig: Rig, ids: list[str], *, settle: bool = False, **spec: Any) -> int:
    rig.broker.reload()
    rig.serve.start()
    await wait_until(
        lambda: healthy(rig.api.session, rig.base), within=SERVE_START_S, what="serve healthy"
    )
    for d in ids:
        if d not in rig.procs:
            rig.fleet.start(d)
    await rig.online(ids)
    if settle:
        # A broker that has been up a while has saved every session (the orchestrator's
        # subscriptions included) at least once: a graceful restart writes them now.
        rig.broker.restart()
        await rig.online(ids)
        await wait_until(lambda: healthy(rig.api.session, rig.base), what="serve reconnected")
    rel = await rig.api.call(
        "POST", "/v1/releases", data=PAYLOAD, expect=201,
        params=[("name", "app"), ("version", "5.0"), ("handler", "directory")],
    )  # fmt: skip
    body = {"target": {"devices": ids}, "phases": [100], "failure_pct": 100,
            "rate_per_min": 900, **spec}  # fmt: skip
    r = await rig.api.rollout(rel["id"], **body)
    return int(r["id"])


async def test_broker_killed_and_restarted_mid_rollout(rig: Rig) -> None:
    ids = [f"b-{i:02d}" for i in range(N)]
    for d in ids:
        rig.provision(d, FAST)
    rid = await start_rollout(rig, ids, settle=True)
    await wait_until(lambda: rig.count(rid, {"succeeded"}), what="first success")
    assert await rig.count(rid, TERMINAL) < N // 2  # mid-rollout
    rig.broker.kill()  # SIGKILL: no goodbye, nothing saved beyond the last autosave
    await asyncio.sleep(1.0)
    rig.broker.start()
    await rig.finish(rid, ids)
    assert rig.check(rid, ids) == {"succeeded": N}


async def test_orchestrator_sigkilled_and_restarted_mid_rollout(rig: Rig) -> None:
    ids = [f"o-{i:02d}" for i in range(N)]
    for d in ids:
        rig.provision(d, FAST)
    rid = await start_rollout(rig, ids)
    await wait_until(lambda: rig.count(rid, {"succeeded"}), what="first success")
    assert await rig.count(rid, TERMINAL) < N // 2  # mid-rollout
    rig.serve.kill()
    await asyncio.sleep(1.0)  # reports made now queue in the broker for the orchestrator
    rig.serve.start()
    await wait_until(lambda: healthy(rig.api.session, rig.base), what="serve healthy again")
    await rig.finish(rid, ids)
    assert rig.check(rid, ids) == {"succeeded": N}


async def test_devices_sigkilled_at_random_points(rig: Rig) -> None:
    """Six devices run as processes and are SIGKILLed at seeded random moments (some while
    downloading, installing or health-checking), then restarted; the rest run in-process
    and some of them are stopped and started again mid-update."""
    rng = random.Random(SEED)
    ids = [f"k-{i:02d}" for i in range(N)]
    killed = ids[:6]
    slow_health = {"health": {"command": ["/bin/sh", "-c", "sleep 0.5"], "timeout": "10s"}}
    for d in ids:
        rig.provision(d, {**FAST, **slow_health})
    for d in killed:
        rig.spawn(d)
    rid = await start_rollout(rig, ids)

    async def chaos(device_id: str) -> None:
        for _ in range(rng.randint(1, 3)):
            await asyncio.sleep(rng.uniform(0.1, 1.5))
            rig.procs[device_id].kill()
            await asyncio.sleep(rng.uniform(0.0, 0.5))
            rig.spawn(device_id)

    async def restart(device_id: str) -> None:
        await asyncio.sleep(rng.uniform(0.1, 1.5))
        old = rig.fleet.agents[device_id]
        await rig.fleet.stop(device_id)
        assert not old.runner.busy, device_id
        assert not old.persisted.save_pending, device_id
        rig.fleet.start(device_id)

    await asyncio.gather(*(chaos(d) for d in killed),
                         *(restart(d) for d in rng.sample(ids[6:], 8)))  # fmt: skip
    await rig.finish(rid, ids)
    counts = rig.check(rid, ids)
    # A device killed while installing rolls back (interrupted) and says so; every other
    # one succeeds.
    assert set(counts) <= {"succeeded", "rolled_back"}, counts
    assert counts.get("succeeded", 0) >= N - len(killed)


async def test_http_server_drops_connections_and_serves_slowly(
    tmp_path: Path, broker: MosquittoBroker, topics: Topics
) -> None:
    """Devices download through a proxy that cuts 40% of responses mid-body and sends
    at 300 KB/s; they resume with Range and all succeed."""
    proxy_port = free_port()
    config, port = write_orchestrator(tmp_path, broker, topics)
    text = config.read_text()
    config.write_text(
        text.replace("[http]\n", f'[http]\npublic_url = "http://127.0.0.1:{proxy_port}"\n')
    )
    proxy = FlakyProxy(f"http://127.0.0.1:{port}", seed=SEED, drop_rate=0.4, rate=300_000)
    await proxy.start(proxy_port)
    base = f"http://127.0.0.1:{port}"
    serve = ServeProcess(config, tmp_path / "serve.log")
    (tmp_path / "devices").mkdir()
    fleet = Fleet(tmp_path / "devices", broker, topics, root_hex(tmp_path))
    try:
        async with aiohttp.ClientSession() as session:
            rig = Rig(tmp_path, broker, topics, serve, Api(session, base, TOKENS["operator"]),
                      fleet, base)  # fmt: skip
            ids = [f"h-{i:02d}" for i in range(N)]
            for d in ids:
                rig.provision(d, FAST)
            rid = await start_rollout(rig, ids)
            await rig.finish(rid, ids)
            assert rig.check(rid, ids) == {"succeeded": N}
            assert proxy.dropped > 0
    finally:
        await fleet.stop_all()
        serve.stop()
        await proxy.stop()


@pytest.mark.skipif(not can_mount_tmpfs(), reason="needs root to mount a small tmpfs (CI is)")
async def test_disk_full_during_download_and_during_install(rig: Rig) -> None:
    """Three devices have a downloads folder too small for the payload, three a slots
    folder too small to unpack it: they fail with disk_full and keep running nothing
    new; the other devices succeed."""
    ids = [f"d-{i:02d}" for i in range(N)]
    small_download, small_install = ids[:3], ids[3:6]
    for d in ids:
        rig.provision(d, FAST)
    with contextlib.ExitStack() as mounts:
        for d in small_download:
            mounts.enter_context(tmpfs(rig.state_dir(d) / "downloads", len(PAYLOAD) // 2))
        for d in small_install:
            mounts.enter_context(tmpfs(rig.state_dir(d) / "slots", len(PAYLOAD) // 2))
        rid = await start_rollout(rig, ids)
        await rig.finish(rid, ids)
        counts = rig.check(rid, ids)
    assert counts == {"succeeded": N - 6, "failed": 6}, counts
    con = sqlite3.connect(rig.root / "orch" / "fleetpush.db")
    try:
        failed = dict(
            con.execute("SELECT device_id, error_code FROM reports WHERE state = 'failed'")
        )
    finally:
        con.close()
    assert failed == dict.fromkeys(small_download + small_install, "disk_full")
