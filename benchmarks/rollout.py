"""A full rollout, end to end: 1,000 devices, a 1 MiB payload, one phase, no soak.

Everything real: Mosquitto, the orchestrator in this process (SQLite, its HTTP API serving
the payload, the rollout engine signing one notice per device), and 1,000 device agents in
a worker process (``benchmarks._fleetproc``) that verify the notice, download the payload,
check its hash, unpack it into a new slot, run ``/bin/true`` as the health check and
report ``succeeded``. Timed from the API call that creates the rollout until the
orchestrator marks it completed.

Goal (issue 6): the 1,000-device rollout complete in under 30 s.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from benchmarks._fleet import WorkerFleet
from orchestrator.sim.api import AsyncApi
from orchestrator.sim.fleet import provision_passwords
from orchestrator.sim.limits import raise_open_files
from orchestrator.sim.release import sample_release
from orchestrator.sim.stack import LocalStack

MIB = 1 << 20


async def _main(stack: LocalStack, n: int, health_check: bool) -> dict[str, Any]:
    orch = await stack.start_orchestrator()
    assert stack.broker is not None
    ids = [f"dev-{i:05d}" for i in range(n)]
    passwords = provision_passwords(stack.broker, ids, ("bench",))
    fleet = WorkerFleet(
        {"broker_url": stack.broker.url, "prefix": stack.topics.prefix,
         "root_key": stack.root_key, "groups": ["bench"], "state_root": str(stack.devices_dir),
         "health_check": health_check},
        [(d, passwords[d]) for d in ids], stack.root / "workers.log",
    )  # fmt: skip
    out: dict[str, Any] = {"devices": n, "health_check": health_check}
    try:
        out["agents"] = await fleet.start()
        async with aiohttp.ClientSession() as session:
            api = AsyncApi(session, stack.api_url, stack.token)
            await api.wait_online(n, within=120)
            payload = sample_release("2.0.0", filler_bytes=MIB - 3 * 1024)
            out["payload_bytes"] = len(payload)
            release = await api.upload("bench-app", "2.0.0", payload)
            t0 = time.perf_counter()
            r = await api.rollout(
                release["id"], target={"all": True}, phases=[100], success_pct=100,
                soak_s=0, failure_pct=10, device_timeout_s=300,
            )  # fmt: skip
            await fleet.watch(str(r["id"]), timeout_s=120)
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
        out |= {
            "rollout_state": status["state"],
            "final_states": status["states"],
            "time_to_notify_s": None if got["last"] is None else round(got["last"] - t0, 2),
            "time_to_complete_s": round(done - t0, 2),
            "served_mb_per_s": round(n * len(payload) / (done - t0) / 1e6, 1),
            "reports_ingested": counters.get("reports_ingested", 0),
            "goal_s": 30,
            "goal_met": status["state"] == "completed" and done - t0 < 30,
        }
        return out
    finally:
        await fleet.stop()
        await stack.stop_orchestrator()


def run(quick: bool = False) -> dict[str, Any]:
    raise_open_files()
    n = 200 if quick else 1000
    with LocalStack(tick="100ms", batch_interval="50ms") as stack:
        return asyncio.run(_main(stack, n, health_check=True))
