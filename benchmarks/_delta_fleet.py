"""Bytes over the wire for a 1,000-device rollout, full and then by delta, in one run.

Everything real: Mosquitto, the orchestrator in this process (SQLite, its HTTP API serving
payloads and deltas), and the device agents in worker processes (``benchmarks._fleetproc``).
Release 1 goes out in full (no device has a base); its upload finds no field version, so
no delta. Release 2 (the same payload with a few bytes changed) is uploaded once every
device runs release 1: the orchestrator makes a delta from it, lists it in every notice,
and each agent rebuilds from the payload it kept. The figures are the bytes the devices
reported as downloaded (``Report.downloaded``, summed in the rollout's ``bytes`` view),
which count every byte each agent received, retries and fallbacks included.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import aiohttp

from benchmarks.rollout import _fleet
from fleetpush_sim.api import AsyncApi
from fleetpush_sim.limits import raise_open_files
from fleetpush_sim.release import make_tar
from fleetpush_sim.stack import LocalStack

__all__ = ["run"]

MIB = 1 << 20


def _pair(size: int) -> tuple[bytes, bytes]:
    blob = bytearray(os.urandom(size))
    v1 = make_tar({"app/VERSION": b"1.0.0\n", "app/data.bin": bytes(blob)})
    blob[size // 3 : size // 3 + 32] = b"a small security fix, 32 bytes."
    v2 = make_tar({"app/VERSION": b"2.0.0\n", "app/data.bin": bytes(blob)})
    return v1, v2


async def _rollout(api: AsyncApi, release: dict[str, Any]) -> dict[str, Any]:
    r = await api.rollout(
        release["id"], target={"groups": ["delta"]}, phases=[100], success_pct=100, soak_s=0,
        failure_pct=10, device_timeout_s=600,
    )  # fmt: skip
    start = time.perf_counter()
    deadline = time.monotonic() + 900
    status = await api.status(r["id"])
    while status["state"] not in ("completed", "paused", "aborted"):
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
        status = await api.status(r["id"])
    # The downloaded counts come with the `downloaded` reports, which all precede the
    # `succeeded` ones that complete the rollout: nothing is left to arrive.
    failed = [t for t in await api.targets(r["id"]) if t["state"] not in ("succeeded",)]
    return {
        "state": status["state"],
        "states": status["states"],
        "not_succeeded": [(t["device_id"], t["state"], t["reason"]) for t in failed[:10]],
        "time_to_complete_s": round(time.perf_counter() - start, 1),
        "bytes": status["bytes"],
    }


async def _main(stack: LocalStack, n: int, size: int) -> dict[str, Any]:
    v1, v2 = _pair(size)
    await stack.start_orchestrator()
    ids = [f"ddev-{i:05d}" for i in range(n)]
    fleet = _fleet(stack, ids, stack.root_key, "delta")
    try:
        agents = await fleet.start()
        async with aiohttp.ClientSession() as session:
            api = AsyncApi(session, stack.api_url, stack.token)
            await api.wait_online(n, within=300)
            full = await _rollout(api, await api.upload("delta-app", "1.0.0", v1))
            second = await api.upload("delta-app", "2.0.0", v2)
            by_delta = await _rollout(api, second)
    finally:
        await fleet.stop()
        await stack.stop_orchestrator()
    made = second["deltas"]["made"]
    full_b, delta_b = full["bytes"]["downloaded"], by_delta["bytes"]["downloaded"]
    return {
        "devices": n,
        "agents": agents,
        "payload_bytes": [len(v1), len(v2)],
        "delta_bytes": made[0]["size"] if made else None,
        "delta_make_s": made[0]["seconds"] if made else None,
        "full_rollout": full,
        "delta_rollout": by_delta,
        "wire_full_mb": round(full_b / 1e6, 1),
        "wire_delta_mb": round(delta_b / 1e6, 3),
        "wire_ratio": round(delta_b / full_b, 5) if full_b else None,
    }


def run(quick: bool = False) -> dict[str, Any]:
    raise_open_files()
    n = 100 if quick else 1000
    with LocalStack(tick="100ms", batch_interval="50ms") as stack:
        return asyncio.run(_main(stack, n, MIB))
