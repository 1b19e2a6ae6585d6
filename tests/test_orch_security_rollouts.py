"""Security rollouts against a real orchestrator (real Mosquitto, HTTP API, SQLite) and
real device agents: a security rollout supersedes a running feature rollout for the same
devices; which devices miss which security release (API, CLI, metric)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from click.testing import CliRunner, Result
from orch_helpers import PAYLOAD, TOKENS, Api, Setup, setup, wait_until

from orchestrator.cli.main import main

__all__ = ["setup"]

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ENV = {"FLEETPUSH_SERVER": "", "FLEETPUSH_TOKEN": "", "FLEETPUSH_CONFIG": ""}
ADVISORY = {"cves": ["CVE-2026-20001"], "severity": "critical", "summary": "Fixes a RCE.",
            "max_postpone": "0s"}  # fmt: skip


async def cli(s: Setup, *args: str) -> Result:
    full = [*args, "--server", s.api.base, "--token", TOKENS["operator"]]
    return await asyncio.to_thread(CliRunner().invoke, main, full, env=ENV)


async def start(s: Setup, *ids: str, sections: dict[str, dict[str, Any]] | None = None) -> None:
    for d in ids:
        s.fleet.provision(d, sections=sections)
    s.broker.reload()
    for d in ids:
        s.fleet.start(d)

    async def online() -> bool:
        devices = (await s.api.call("GET", "/v1/devices", params={"online": "true"}))["devices"]
        return {d["device_id"] for d in devices} >= set(ids)

    await wait_until(online, what=f"{ids} online")


async def target_states(s: Setup, rollout_id: int) -> dict[str, str]:
    return {t["device_id"]: t["state"] for t in await s.api.targets(rollout_id)}


async def until(s: Setup, rollout_id: int, want: dict[str, str]) -> dict[str, str]:
    async def check() -> dict[str, str] | None:
        got = await target_states(s, rollout_id)
        return got if all(got.get(d) == st for d, st in want.items()) else None

    found: dict[str, str] = await wait_until(check, within=90, what=f"targets {want}")
    return found


async def missing_metric(s: Setup) -> str:
    async with s.session.get(s.api.base + "/metrics") as resp:
        lines = (await resp.text()).splitlines()
    return next(x for x in lines if x.startswith("fleetpush_devices_missing_security{"))


async def test_a_security_rollout_supersedes_a_running_feature_rollout(setup: Setup) -> None:
    s = setup
    # sec-1 holds every update (its user postponed them); sec-2 installs at once.
    await start(s, "sec-1", sections={"policy": {"hold_until": "2999-01-01T00:00:00Z"}})
    await start(s, "sec-2", "sec-3")
    feature = await s.api.upload("app", "2.0")
    running = await s.api.rollout(feature["id"], target={"devices": ["sec-1", "sec-2"]})
    await until(s, running["id"], {"sec-1": "deferred", "sec-2": "succeeded"})
    assert (await s.api.status(running["id"]))["state"] == "running"  # sec-1 still in flight

    params = [("name", "app"), ("version", "2.1"), ("security", "true"),
              ("advisory", json.dumps(ADVISORY))]  # fmt: skip
    fix = await s.api.call("POST", "/v1/releases", data=PAYLOAD, params=params, expect=201)
    # Before: every device misses it (API, CLI, metric); claims play no part.
    report = (await s.api.call("GET", "/v1/security/missing"))["releases"]
    assert report == [{"release": {"id": fix["id"], "name": "app", "version": "2.1"},
                       "advisory": fix["advisory"], "missing": ["sec-1", "sec-2", "sec-3"],
                       "count": 3}]  # fmt: skip
    listed = await cli(s, "devices", "list", "--missing-security")
    assert listed.exit_code == 0, listed.output
    for word in ("sec-1", "sec-3", "app 2.1", "CVE-2026-20001"):
        assert word in listed.output
    assert await missing_metric(s) == 'fleetpush_devices_missing_security{release="app@2.1"} 3'

    # No --force needed: the feature rollout's devices are taken, not a conflict.
    sec = await s.api.rollout(fix["id"], target={"devices": ["sec-1", "sec-2", "sec-3"]})
    assert sec["state"] == "running"
    done = await until(s, sec["id"], {"sec-1": "succeeded", "sec-2": "succeeded",
                                      "sec-3": "succeeded"})  # fmt: skip
    assert set(done.values()) == {"succeeded"}
    old = {t["device_id"]: t for t in await s.api.targets(running["id"])}
    # Canceled there (the reason the orchestrator wrote is replaced by the device's own
    # "canceled" report, as for any cancel; the audit entry below keeps why).
    assert old["sec-1"]["state"] == "canceled"
    assert old["sec-2"]["state"] == "succeeded"  # finished there: left as it was

    async def feature_over() -> bool:
        return bool((await s.api.status(running["id"]))["state"] == "completed")

    await wait_until(feature_over, what="the feature rollout completes with the rest")
    admin = Api(s.session, s.api.base, TOKENS["admin"])
    entries = (await admin.call("GET", "/v1/audit", params={"limit": "50"}))["entries"]
    taken = [e for e in entries if e["action"] == "rollout.supersede"]
    assert [(e["subject"], e["detail"]["by"], e["detail"]["device_ids"]) for e in taken] == [
        (f"rollout/{running['id']}", sec["id"], ["sec-1"])
    ]
    # After: nobody misses it.
    report = (await s.api.call("GET", "/v1/security/missing"))["releases"]
    assert report[0]["missing"] == []
    assert await missing_metric(s) == 'fleetpush_devices_missing_security{release="app@2.1"} 0'

    # Another security rollout over the same devices is still a conflict.
    other = await s.api.call(
        "POST", "/v1/releases", data=PAYLOAD, expect=201,
        params=[("name", "app"), ("version", "2.2"), ("security", "true"),
                ("advisory", json.dumps(ADVISORY))],
    )  # fmt: skip
    first = await s.api.rollout(other["id"], target={"devices": ["sec-3"]}, start_at=4e9)
    refused = await s.api.call("POST", "/v1/rollouts", expect=409, json={
        "release": other["id"], "target": {"devices": ["sec-3"]}})  # fmt: skip
    assert refused["rollouts"] == [first["id"]]
