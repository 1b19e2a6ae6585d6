"""``fleetpush simulate`` against a running orchestrator (in-process) and broker."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import pytest
from orch_helpers import Setup, setup, wait_until
from test_demo import fleetpush

from fleetpush_sim.cli import parse_rate
from fleetpush_sim.fleet import assign_behaviours

__all__ = ["setup"]

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def test_simulated_fleet_with_failing_devices(setup: Setup, tmp_path: Path) -> None:
    s = setup
    proc = await asyncio.create_subprocess_exec(
        *fleetpush(), "simulate", "--config", str(tmp_path / "orchestrator.toml"),
        "--broker-data", str(s.broker.workdir), "--devices", "10", "--fail-share", "0.2",
        "--seed", "3", "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:

        async def online() -> bool:
            devices = await s.api.call("GET", "/v1/devices", params={"online": "true"})
            return len(devices["devices"]) == 10

        await wait_until(online, within=30, what="10 simulated devices online")
        rel = await s.api.upload("app", "5.0")
        r = await s.api.rollout(
            rel["id"], target={"all": True}, phases=[100], success_pct=50, failure_pct=50
        )

        async def finished() -> dict[str, Any] | None:
            st = await s.api.status(r["id"])
            return st if st["state"] == "completed" else None

        st = await wait_until(finished, within=60, what="rollout completed")
        assert st["states"] == {"succeeded": 8, "rolled_back": 2}
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()[-2000:]
    summary = json.loads(out)
    assert summary["devices"] == 10
    assert summary["behaviours"]["failing_health"] == 2
    mine = summary["rollouts"][str(r["id"])]
    assert mine["devices"] == 10
    assert mine["final_states"] == {"rolled_back": 2, "succeeded": 8}
    assert summary["error_codes"] == {"health_check_failed": 2}

    async def offline() -> bool:
        devices = await s.api.call("GET", "/v1/devices", params={"online": "false"})
        return len(devices["devices"]) == 10

    await wait_until(offline, within=15, what="simulated devices offline after Ctrl-C")


def test_behaviours_are_exact_shares() -> None:
    ids = [f"d-{i}" for i in range(100)]
    b = assign_behaviours(ids, fail_share=0.1, offline_share=0.25, slow_share=0.5,
                          bandwidth=1000, seed=1)  # fmt: skip
    assert sum(not x.healthy for x in b.values()) == 10
    assert sum(x.offline_after_s is not None for x in b.values()) == 25
    assert sum(x.bandwidth == 1000 for x in b.values()) == 50
    assert assign_behaviours(ids, fail_share=0.1, seed=1) == assign_behaviours(
        ids, fail_share=0.1, seed=1
    )


def test_parse_rate() -> None:
    assert parse_rate("65536") == 65536
    assert parse_rate("64KiB") == 65536
    assert parse_rate("1MB/s") == 1_000_000


async def test_offline_and_slow_devices_finish_after_they_return(
    setup: Setup, tmp_path: Path
) -> None:
    s = setup
    proc = await asyncio.create_subprocess_exec(
        *fleetpush(), "simulate", "--config", str(tmp_path / "orchestrator.toml"),
        "--broker-data", str(s.broker.workdir), "--devices", "6", "--prefix", "churn",
        "--offline-share", "0.5", "--offline-after", "0.5", "--offline-for", "12",
        "--slow-share", "0.5", "--bandwidth", "8KiB", "--seed", "5", "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        # The three must be seen offline together, and the rollout created while they are:
        # 12 s away leaves room for a busy machine (4 s was missed under a load of 10).

        async def three_offline() -> bool:
            devices = await s.api.call("GET", "/v1/devices", params={"online": "false"})
            return len(devices["devices"]) == 3

        await wait_until(three_offline, within=30, what="three devices gone offline")
        rel = await s.api.upload("app", "6.0")  # 10 KiB: slow devices take over a second
        r = await s.api.rollout(rel["id"], target={"all": True}, phases=[100])

        async def finished() -> dict[str, Any] | None:
            st = await s.api.status(r["id"])
            return st if st["state"] == "completed" else None

        st = await wait_until(finished, within=60, what="rollout completed")
        assert st["states"] == {"succeeded": 6}
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()[-2000:]
    summary = json.loads(out)
    assert summary["behaviours"] == {"failing_health": 0, "offline_for_a_while": 3,
                                     "slow_link": 3}  # fmt: skip
    assert summary["rollouts"][str(r["id"])]["final_states"] == {"succeeded": 6}
