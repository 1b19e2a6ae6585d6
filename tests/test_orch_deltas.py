"""Delta payloads end to end (issue 15): the orchestrator makes deltas from the versions
the field runs, lists them in signed notices and serves them on the payload route; real
device agents rebuild from their kept base or fall back; the rollout shows bytes saved.
Real Mosquitto, the real HTTP API, each store backend in turn."""

from __future__ import annotations

import asyncio
import json

import pytest
from click.testing import CliRunner
from delta_helpers import releases
from orch_helpers import TOKENS, Setup, setup_any_backend, wait_until

from orchestrator.cli.main import main

__all__ = ["setup"]

setup = setup_any_backend

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


async def _online(s: Setup, ids: list[str]) -> None:
    async def check() -> bool:
        devices = (await s.api.call("GET", "/v1/devices", params={"online": "true"}))["devices"]
        return {d["device_id"] for d in devices} >= set(ids)

    await wait_until(check, what=f"devices {ids} online")


async def _completed(s: Setup, rollout_id: int) -> dict:
    async def check() -> dict | None:
        st = await s.api.status(rollout_id)
        return st if st["state"] in ("completed", "paused", "aborted") else None

    result: dict = await wait_until(check, within=90, what="rollout finished")
    assert result["state"] == "completed", result
    return result


async def cli(*args: str) -> str:
    result = await asyncio.to_thread(CliRunner().invoke, main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


async def test_delta_rollout_saves_bytes_and_falls_back_without_a_base(setup: Setup) -> None:
    s = setup
    v1, v2 = releases()
    ids = ["keeper-1", "keeper-2", "no-base"]
    for d in ids:
        keep = d != "no-base"
        s.fleet.provision(d, sections={"download": {"keep_base": keep}})
    s.broker.reload()
    for d in ids:
        s.fleet.start(d)
    await _online(s, ids)
    first = await s.api.upload("app", "1.0", v1)
    assert first["deltas"]["made"] == []  # no device runs a release yet
    await _completed(s, (await s.api.rollout(first["id"], target={"devices": ids}))["id"])

    second = await s.api.upload("app", "2.0", v2)
    made = second["deltas"]["made"]
    assert [d["base_version"] for d in made] == ["1.0"]
    # The smallest method: 16 bytes changed in one member, zstd-patch beats tar-bsdiff
    # (test_delta_codec.py: a relinked program, where tar-bsdiff wins).
    assert made[0]["method"] == "zstd-patch"
    delta_size = made[0]["size"]
    assert delta_size < len(v2) // 20
    r = await s.api.rollout(second["id"], target={"devices": ids})
    done = await _completed(s, r["id"])
    assert done["states"] == {"succeeded": 3}
    # Two devices rebuilt from the delta; the one that kept no base fetched it in full.
    assert done["bytes"] == {
        "payload_size": len(v2), "devices": 3, "downloaded": 2 * delta_size + len(v2),
        "full": 3 * len(v2), "saved": 2 * (len(v2) - delta_size),
    }  # fmt: skip
    # The detail of the device that fell back reaches the operator, in its history.
    shown = await s.api.call("GET", "/v1/devices/no-base")
    got = [x for x in shown["reports"] if x["state"] == "downloaded"]
    assert got[0]["downloaded"] == len(v2)
    assert "no delta for a base" in got[0]["detail"]
    async with s.session.get(f"{s.api.base}/metrics") as resp:
        text = await resp.text()
    assert f"fleetpush_payload_bytes_saved_total {2 * (len(v2) - delta_size)}" in text

    base = ["--server", s.api.base, "--token", TOKENS["operator"]]
    status = await cli("rollout", "status", str(r["id"]), *base)
    assert f"saved {2 * (len(v2) - delta_size):,}" in status
    # On demand, from a named version: the same delta again (content-addressed, one entry).
    again = json.loads(await cli("release", "deltas", "app@2.0", "--from", "1.0", "--json", *base))
    assert [d["sha256"] for d in again["made"]] == [made[0]["sha256"]]
    assert len(again["stored"]) == 1
    listed = await cli("release", "deltas", "app@2.0", "--list", *base)
    assert "1 delta(s) stored: from 1.0" in listed


async def test_deltas_api_refuses_bad_input(setup: Setup) -> None:
    s = setup
    rel = await s.api.upload("app", "1.0", releases()[0])
    for body, status in (
        ({"from": "1.0"}, 400),
        ({"from": []}, 400),
        ({"from": ["1.0"], "extra": 1}, 400),
        ({"from": ["9.9"]}, 404),
    ):
        await s.api.call("POST", f"/v1/releases/{rel['id']}/deltas", json=body, expect=status)
    # From itself: skipped with its reason, nothing stored.
    same = await s.api.call("POST", f"/v1/releases/{rel['id']}/deltas", json={"from": ["1.0"]})
    assert same["made"] == []
    assert same["skipped"] == [{"base_version": "1.0", "reason": "the same payload"}]
