"""Rollouts end to end: real Mosquitto, the real HTTP API, real device agents, and each
store backend in turn (SQLite, then a private PostgreSQL)."""

from __future__ import annotations

import asyncio
import json

import pytest
from click.testing import CliRunner
from orch_helpers import TOKENS, Api, Setup, assert_spoke, rollout_in, setup_any_backend, wait_until

from orchestrator.cli.main import main

__all__ = ["setup"]

setup = setup_any_backend  # every test here runs on both backends


pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def _online(s: Setup, ids: list[str]) -> None:
    async def check() -> bool:
        devices = (await s.api.call("GET", "/v1/devices", params={"online": "true"}))["devices"]
        return {d["device_id"] for d in devices} >= set(ids)

    await wait_until(check, what=f"devices {ids} online")


@pytest.mark.parametrize("mqtt_protocol", ["5", "3.1.1"])
async def test_three_phase_rollout_advances_on_its_gates(setup: Setup, mqtt_protocol: str) -> None:
    s = setup
    ids = [f"dev-{i}" for i in range(6)]
    for d in ids:
        s.fleet.provision(d, groups=("canary",))
    s.broker.reload()
    for d in ids:
        s.fleet.start(d)
    await _online(s, ids)
    rel = await s.api.upload("app", "2.0")
    r = await s.api.rollout(
        rel["id"], target={"groups": ["canary"]}, phases=[20, 50, 100], success_pct=100,
        soak_s=0.5, failure_pct=50, min_attempts=3,
    )  # fmt: skip
    assert [p["devices"] for p in r["phases"]] == [2, 1, 3]
    done = await rollout_in(s, r["id"], "completed", "paused")
    assert done["state"] == "completed", done
    assert done["states"] == {"succeeded": 6}
    actions = [e["action"] for e in (await Api(s.session, s.api.base, TOKENS["admin"]).call(
        "GET", "/v1/audit"))["entries"]]  # fmt: skip
    assert actions.count("rollout.advance") == 2
    assert "rollout.complete" in actions
    devices = (await s.api.call("GET", "/v1/devices"))["devices"]
    assert {d["current_version"] for d in devices} == {"2.0"}
    assert_spoke(s.broker, mqtt_protocol, [s.broker.ORCHESTRATOR_USER, *ids])


async def test_rollout_pauses_on_its_failure_threshold(setup: Setup) -> None:
    s = setup
    ids = [f"bad-{i}" for i in range(4)]
    for d in ids:
        s.fleet.provision(d, healthy=False)
    s.broker.reload()
    for d in ids:
        s.fleet.start(d)
    await _online(s, ids)
    rel = await s.api.upload("app", "3.0")
    r = await s.api.rollout(
        rel["id"], target={"devices": ids}, phases=[50, 100], failure_pct=10, min_attempts=2
    )
    paused = await rollout_in(s, r["id"], "paused", "completed")
    assert paused["state"] == "paused"
    assert "failure threshold" in paused["reason"]
    assert paused["phase"] == 0
    # the second phase was never notified
    assert paused["phases"][1]["pending"] == 2
    # resume: failures so far stop counting; the engine goes on to phase two, which fails too
    resumed = await s.api.call("POST", f"/v1/rollouts/{r['id']}/resume")
    assert resumed["state"] == "running"


@pytest.mark.parametrize("mqtt_protocol", ["5", "3.1.1"])
async def test_offline_devices_catch_up_on_reconnect(setup: Setup) -> None:
    s = setup
    ids = [f"off-{i}" for i in range(4)]
    for d in ids:
        s.fleet.provision(d)
    s.broker.reload()
    for d in ids:
        s.fleet.start(d)
    await _online(s, ids)
    for d in ids[2:]:
        await s.fleet.stop(d)

    async def two_offline() -> bool:
        devices = (await s.api.call("GET", "/v1/devices", params={"online": "false"}))["devices"]
        return len(devices) == 2

    await wait_until(two_offline, what="two devices offline")
    rel = await s.api.upload("app", "4.0")
    r = await s.api.rollout(rel["id"], target={"devices": ids}, phases=[100])

    async def online_done() -> dict | None:
        st = await s.api.status(r["id"])
        return st if st["states"].get("succeeded") == 2 else None

    st = await wait_until(online_done, what="online devices succeeded")
    assert st["phases"][0]["waiting_offline"] == 2
    assert st["state"] == "running"
    for d in ids[2:]:
        s.fleet.start(d)
    done = await rollout_in(s, r["id"], "completed")
    assert done["states"] == {"succeeded": 4}


async def test_cancel_sends_cancel_notices(setup: Setup) -> None:
    s = setup
    ids = ["c-1", "c-2"]
    for d in ids:
        s.fleet.provision(d)
    s.broker.reload()
    s.fleet.start("c-1")
    await _online(s, ["c-1"])
    # c-2 registers, then goes offline: its notice waits retained on the broker
    s.fleet.start("c-2")
    await _online(s, ["c-2"])
    await s.fleet.stop("c-2")
    rel = await s.api.upload("app", "5.0")
    r = await s.api.rollout(rel["id"], target={"devices": ids}, phases=[100])

    async def c1_done() -> bool:
        return (await s.api.status(r["id"]))["states"].get("succeeded") == 1

    await wait_until(c1_done, what="c-1 succeeded")
    canceled = await s.api.call("POST", f"/v1/rollouts/{r['id']}/cancel",
                                json={"reason": "test"})  # fmt: skip
    assert canceled["state"] == "canceled"
    assert canceled["cancels_sent"] == 1
    assert canceled["states"] == {"succeeded": 1, "canceled": 1}
    # c-2 comes back: it finds the cancel (the retained notice was replaced) and stays put
    s.fleet.start("c-2")

    async def c2_back() -> dict | None:
        d = await s.api.call("GET", "/v1/devices/c-2")
        return d if d["online"] and d["reports"] else None

    c2 = await wait_until(c2_back, what="c-2 reconnected and reported")
    assert c2["current_version"] != "5.0"
    # a cancelled rollout cannot be cancelled twice
    again = await s.api.call("POST", f"/v1/rollouts/{r['id']}/cancel", expect=409)
    assert "already canceled" in again["error"]


async def test_continuous_rollout_takes_in_devices_that_join_later(setup: Setup) -> None:
    s = setup
    admin = Api(s.session, s.api.base, TOKENS["admin"])
    # Created before any device of the group exists: allowed only when continuous.
    rel = await s.api.upload("app", "6.0")
    refused = await s.api.call(
        "POST", "/v1/rollouts", json={"release": rel["id"], "target": {"groups": ["lobby"]}},
        expect=400,
    )  # fmt: skip
    assert "matches no registered device" in refused["error"]
    r = await s.api.rollout(
        rel["id"], target={"groups": ["lobby"]}, phases=[50, 100], continuous=True
    )
    assert r["spec"]["continuous"] is True
    assert r["state"] == "running"
    for d in ("early-1", "early-2"):
        s.fleet.provision(d, groups=("lobby",))
    s.fleet.provision("elsewhere", groups=("other",))
    s.broker.reload()
    for d in ("early-1", "early-2", "elsewhere"):
        s.fleet.start(d)

    async def succeeded(n: int) -> dict | None:
        st = await s.api.status(r["id"])
        return st if st["states"].get("succeeded") == n else None

    st = await wait_until(lambda: succeeded(2), within=60, what="the first two joined")
    assert st["state"] == "running"  # every target finished, yet it goes on
    assert st["devices"] == 2  # the device of another group was not taken in
    # A device that registers later joins the last phase and is updated too.
    s.fleet.provision("late-1", groups=("lobby",))
    s.broker.reload()
    s.fleet.start("late-1")
    st = await wait_until(lambda: succeeded(3), within=60, what="the late device updated")
    assert st["state"] == "running"
    targets = (await s.api.call("GET", f"/v1/rollouts/{r['id']}/targets"))["targets"]
    late = next(t for t in targets if t["device_id"] == "late-1")
    assert late["phase"] == 1  # 0-based: the last of the two phases
    audit = (await admin.call("GET", "/v1/audit"))["entries"]
    assert any(e["action"] == "rollout.follow" for e in audit)
    assert not any(e["action"] == "rollout.complete" for e in audit)
    other = await s.api.call("GET", "/v1/devices/elsewhere")
    assert other["current_version"] != "6.0"
    # A newer continuous rollout on the same group: it updates the members now, and a
    # device that joins later goes to it alone.
    rel2 = await s.api.upload("app", "6.1")
    # The first rollout still holds them: refused without force, naming it.
    held = await s.api.call(
        "POST", "/v1/rollouts", expect=409,
        json={"release": rel2["id"], "target": {"groups": ["lobby"]}, "continuous": True},
    )  # fmt: skip
    assert held["rollouts"] == [r["id"]], held
    assert held["devices"] == 3
    r2 = await s.api.rollout(rel2["id"], target={"groups": ["lobby"]}, continuous=True, force=True)
    assert r2["devices"] == 3

    async def on_61(n: int) -> bool:
        return (await s.api.status(r2["id"]))["states"].get("succeeded") == n

    await wait_until(lambda: on_61(3), within=60, what="the group on 6.1")
    s.fleet.provision("late-2", groups=("lobby",))
    s.broker.reload()
    s.fleet.start("late-2")
    await wait_until(lambda: on_61(4), within=60, what="the second late device on 6.1")
    first = (await s.api.call("GET", f"/v1/rollouts/{r['id']}/targets"))["targets"]
    assert "late-2" not in {t["device_id"] for t in first}
    # Ended only by the operator.
    for rid in (r["id"], r2["id"]):
        canceled = await s.api.call("POST", f"/v1/rollouts/{rid}/cancel", json={"reason": "done"})
        assert canceled["state"] == "canceled"


async def test_cli_creates_a_continuous_rollout(setup: Setup) -> None:
    s = setup
    rel = await s.api.upload("app", "7.0")
    args = ["rollout", "create", f"{rel['id']}", "--target", "group:nobody-yet", "--continuous",
            "--phases", "10%,100%", "--server", s.api.base, "--token", TOKENS["operator"],
            "--json"]  # fmt: skip
    # The CLI blocks on HTTP: run it off this loop, which serves the API.
    result = await asyncio.to_thread(CliRunner().invoke, main, args)
    assert result.exit_code == 0, result.output
    created = json.loads(result.output)
    assert created["spec"]["continuous"] is True
    assert created["state"] == "running"
