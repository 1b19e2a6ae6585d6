"""A full rollout, end to end: 1,000 devices, a 1 MiB payload, one phase, no soak, judged
against a ceiling measured in the same run.

Everything real: Mosquitto, the orchestrator in this process (SQLite, its HTTP API serving
the payload, the rollout engine signing one notice per device), and 1,000 device agents in
worker processes (``benchmarks._fleetproc``) that verify the notice, download the payload,
check its hash, unpack it into a new slot, run ``/bin/true`` as the health check and
report ``succeeded``. Timed from the API call that creates the rollout until the
orchestrator marks it completed.

The ceiling: the same number of agents, on the same broker, installing the same payload
from notices signed here and published straight to the broker (no engine, no database, no
API), with the payload served by a bare aiohttp file server; timed from the first signature
until the last agent reported ``succeeded``. What the orchestrator adds on top of that is the
ratio. The machine is shared and its speed changes from day to day; the ratio does not.

Goals (issue 6 and 19): the 1,000-device rollout complete in under 30 s, and at most 1.3x
the ceiling.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from benchmarks._fleet import BenchSigner, WorkerFleet
from fleetpush_sim.api import AsyncApi
from fleetpush_sim.fleet import provision_passwords
from fleetpush_sim.limits import raise_open_files
from fleetpush_sim.release import sample_release
from fleetpush_sim.stack import LocalStack
from orchestrator.broker import free_port
from orchestrator.config import MqttConfig
from orchestrator.mqtt.link import MqttLink

MIB = 1 << 20
GOAL_S = 30
GOAL_RATIO = 1.3


def _fleet(stack: LocalStack, ids: list[str], root_key: str, name: str) -> WorkerFleet:
    """Agents of group ``name``, with their state under a folder of that name."""
    assert stack.broker is not None
    passwords = provision_passwords(stack.broker, ids, (name,))
    return WorkerFleet(
        {"broker_url": stack.broker.url, "prefix": stack.topics.prefix, "root_key": root_key,
         "groups": [name], "state_root": str(stack.root / name), "health_check": True},
        [(d, passwords[d]) for d in ids], stack.root / f"{name}.log",
    )  # fmt: skip


async def _serve_file(path: Path) -> tuple[web.AppRunner, str]:
    async def handler(_request: web.Request) -> web.FileResponse:
        return web.FileResponse(path)

    app = web.Application()
    app.router.add_get("/payload", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/payload"


async def _ceiling(stack: LocalStack, n: int, payload: bytes) -> dict[str, Any]:
    """Notices signed and published straight to the broker; agents install and report."""
    assert stack.broker is not None
    signer = BenchSigner()
    user = "bench-ceiling"
    stack.broker.add_orchestrator(user)
    stack.broker.reload()
    link = MqttLink(
        MqttConfig(url=stack.broker.url, username=user,
                   password=stack.broker.password(user), topic_prefix=stack.topics.prefix)
    )  # fmt: skip
    link.start()
    await link.publish_many([(stack.topics.keyring(1), signer.keyring(1), True)], timeout=30)
    path = stack.root / "ceiling-payload.tar"
    path.write_bytes(payload)
    runner, url = await _serve_file(path)
    ids = [f"cdev-{i:05d}" for i in range(n)]
    fleet = _fleet(stack, ids, signer.root_hex, "ceiling")
    try:
        agents = await fleet.start()
        await fleet.watch("ceiling", timeout_s=180, until="succeeded")
        t0 = time.perf_counter()
        notices = [
            (stack.topics.device_notice(d),
             signer.notice(d, payload, [url], rollout_id="ceiling", topics=stack.topics)[1],
             True)
            for d in ids
        ]  # fmt: skip
        await link.publish_many(notices, timeout=120)
        got = await fleet.collect(timeout_s=240)
        last = got["until_last"]
        return {
            "agents": agents,
            "succeeded": got["until_count"],
            "time_to_notify_s": None if got["last"] is None else round(got["last"] - t0, 2),
            "time_to_succeed_s": None if last is None else round(last - t0, 2),
        }
    finally:
        await fleet.stop()
        await runner.cleanup()
        link.stop()


async def _orchestrated(stack: LocalStack, n: int, payload: bytes) -> dict[str, Any]:
    orch = await stack.start_orchestrator()
    ids = [f"dev-{i:05d}" for i in range(n)]
    fleet = _fleet(stack, ids, stack.root_key, "bench")
    out: dict[str, Any] = {}
    try:
        out["agents"] = await fleet.start()
        async with aiohttp.ClientSession() as session:
            api = AsyncApi(session, stack.api_url, stack.token)
            await api.wait_online(n, within=120)
            release = await api.upload("bench-app", "2.0.0", payload)
            t0 = time.perf_counter()
            r = await api.rollout(
                release["id"], target={"groups": ["bench"]}, phases=[100], success_pct=100,
                soak_s=0, failure_pct=10, device_timeout_s=300,
            )  # fmt: skip
            await fleet.watch(str(r["id"]), timeout_s=180, until="succeeded")
            status = await api.status(r["id"])
            deadline = time.monotonic() + 180
            while status["state"] not in ("completed", "paused", "aborted"):
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
                status = await api.status(r["id"])
            done = time.perf_counter()
            got = await fleet.collect()
            counters = await orch.db.run(lambda s: s.counters()) if orch.db else {}
        last = got["until_last"]
        out |= {
            "rollout_state": status["state"],
            "final_states": status["states"],
            "time_to_notify_s": None if got["last"] is None else round(got["last"] - t0, 2),
            "time_to_succeed_s": None if last is None else round(last - t0, 2),
            "time_to_complete_s": round(done - t0, 2),
            "served_mb_per_s": round(n * len(payload) / (done - t0) / 1e6, 1),
            "reports_ingested": counters.get("reports_ingested", 0),
        }
        return out
    finally:
        await fleet.stop()
        await stack.stop_orchestrator()


async def _main(stack: LocalStack, n: int) -> dict[str, Any]:
    payload = sample_release("2.0.0", filler_bytes=MIB - 3 * 1024)
    ceiling = await _ceiling(stack, n, payload)
    run = await _orchestrated(stack, n, payload)
    base = ceiling["time_to_succeed_s"]
    ratio = round(run["time_to_complete_s"] / base, 2) if base else None
    return {
        "devices": n,
        "payload_bytes": len(payload),
        "ceiling": ceiling,
        "orchestrated": run,
        "ratio_complete_to_ceiling": ratio,
        "ratio_devices_to_ceiling": (
            round(run["time_to_succeed_s"] / base, 2) if base and run["time_to_succeed_s"] else None
        ),
        "goal_s": GOAL_S,
        "goal_ratio": GOAL_RATIO,
        "goal_met": run["rollout_state"] == "completed"
        and run["time_to_complete_s"] < GOAL_S
        and ratio is not None
        and ratio <= GOAL_RATIO,
    }


def run(quick: bool = False) -> dict[str, Any]:
    raise_open_files()
    n = 200 if quick else 1000
    with LocalStack(tick="100ms", batch_interval="50ms") as stack:
        return asyncio.run(_main(stack, n))
