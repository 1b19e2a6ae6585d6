"""Attacks on four-eyes approval, security rollouts and the missing-security report,
against a real orchestrator (real Mosquitto, HTTP API, SQLite), real API tokens and real
device agents.

Each test states the attack and what a correct implementation does."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from orch_helpers import (
    PAYLOAD,
    TOKENS,
    Api,
    Fleet,
    Setup,
    rollout_in,
    root_hex,
    running,
    setup,
    start_devices,
    wait_until,
    write_orchestrator,
)
from replica_helpers import hold_row

from fleetpush_protocol.topics import Topics
from orchestrator.app import Orchestrator
from orchestrator.broker import MosquittoBroker
from orchestrator.config import DatabaseConfig, load_config

__all__ = ["setup"]

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

ADVISORY = {"cves": ["CVE-2026-30001"], "severity": "critical", "summary": "Fixes a RCE.",
            "max_postpone": "0s"}  # fmt: skip


@contextlib.asynccontextmanager
async def approval_installation(
    root: Path, broker: MosquittoBroker, topics: Topics
) -> AsyncIterator[Setup]:
    """An orchestrator whose installation requires approval of every rollout."""
    config, port = write_orchestrator(root, broker, topics)
    text = config.read_text()
    assert "[rollouts]\n" in text
    config.write_text(text.replace("[rollouts]\n", "[rollouts]\nrequire_approval = true\n", 1))
    orch = Orchestrator(load_config(config))
    await orch.start()
    fleet = Fleet(root / "devices", broker, topics, root_hex(root))
    (root / "devices").mkdir()
    async with aiohttp.ClientSession() as session:
        api = Api(session, f"http://127.0.0.1:{port}", TOKENS["operator"])
        try:
            yield Setup(orch, api, fleet, broker, session)
        finally:
            await fleet.stop_all()
            await orch.stop()


async def upload_security(s: Setup, version: str) -> dict[str, Any]:
    params = [("name", "app"), ("version", version), ("security", "true"),
              ("advisory", json.dumps(ADVISORY))]  # fmt: skip
    out: dict[str, Any] = await s.api.call(
        "POST", "/v1/releases", data=PAYLOAD, params=params, expect=201
    )
    return out


async def states(s: Setup, rollout_id: int) -> dict[str, str]:
    return {t["device_id"]: t["state"] for t in await s.api.targets(rollout_id)}


async def test_no_route_starts_a_rollout_the_installation_says_needs_approval(
    tmp_path: Path, broker: MosquittoBroker, topics: Topics
) -> None:
    """Attack: the creator starts their own rollout without a second person, through
    require_approval=false, dry_run, force, pause/resume/retry/revert, or by approving a
    rejected or canceled one; a viewer approves. Each is refused, and a revert under an
    installation that requires approval waits for approval too."""
    async with approval_installation(tmp_path, broker, topics) as s:
        await start_devices(s, "ea-1")
        admin = Api(s.session, s.api.base, TOKENS["admin"])
        viewer = Api(s.session, s.api.base, TOKENS["viewer"])
        bob_json = {"name": "bob", "role": "operator"}
        bob_token = (await admin.call("POST", "/v1/tokens", expect=201, json=bob_json))["token"]
        bob = Api(s.session, s.api.base, bob_token)
        v1 = await s.api.upload("app", "1.0")
        body = {"release": v1["id"], "target": {"devices": ["ea-1"]}}

        # The body cannot turn off what the installation requires, dry run or not.
        for extra in ({}, {"dry_run": True}, {"force": True}):
            off = {**body, **extra, "require_approval": False}
            refused = await s.api.call("POST", "/v1/rollouts", expect=400, json=off)
            assert "cannot be turned off" in refused["error"]
        plan = await s.api.call("POST", "/v1/rollouts", json={**body, "dry_run": True})
        assert plan["requires_approval"] is True

        first = await s.api.call("POST", "/v1/rollouts", json=body, expect=201)
        rid = first["id"]
        assert first["state"] == "awaiting_approval"
        # Creator and viewer cannot decide; nothing else starts it.
        await s.api.call("POST", f"/v1/rollouts/{rid}/approve", expect=403)
        await viewer.call("POST", f"/v1/rollouts/{rid}/approve", expect=403)
        for action in ("pause", "resume", "retry", "revert"):
            await s.api.call("POST", f"/v1/rollouts/{rid}/{action}", expect=409)
        # A forced second rollout over the same device waits for approval as well.
        forced = await s.api.call("POST", "/v1/rollouts", json={**body, "force": True},
                                  expect=201)  # fmt: skip
        assert forced["state"] == "awaiting_approval"
        await s.api.call("POST", f"/v1/rollouts/{forced['id']}/cancel", expect=200)
        # Canceled or rejected: nothing left to approve, by anyone.
        await bob.call("POST", f"/v1/rollouts/{forced['id']}/approve", expect=409)
        await admin.call("POST", f"/v1/rollouts/{forced['id']}/approve", expect=409)

        # Bob approves the first: it runs to the end.
        await bob.call("POST", f"/v1/rollouts/{rid}/approve")
        await rollout_in(s, rid, "completed")
        v2 = await s.api.upload("app", "2.0")
        second = await s.api.rollout(v2["id"], target={"devices": ["ea-1"]})
        await bob.call("POST", f"/v1/rollouts/{second['id']}/approve")
        await rollout_in(s, second["id"], "completed")

        # A revert is a new rollout: under this installation it waits for approval too,
        # and the creator cannot ask it not to.
        await s.api.call("POST", f"/v1/rollouts/{second['id']}/revert", expect=400,
                         json={"require_approval": False})  # fmt: skip
        reverted = await s.api.call("POST", f"/v1/rollouts/{second['id']}/revert", json={},
                                    expect=201)  # fmt: skip
        (back,) = reverted["rollouts"]
        assert back["state"] == "awaiting_approval"
        await s.api.call("POST", f"/v1/rollouts/{back['id']}/approve", expect=403)
        await bob.call("POST", f"/v1/rollouts/{back['id']}/reject", json={"reason": "no"})
        await bob.call("POST", f"/v1/rollouts/{back['id']}/approve", expect=409)
        await s.api.call("POST", f"/v1/rollouts/{back['id']}/retry", expect=409)
        assert set((await states(s, back["id"])).values()) == {"canceled"}

        # Every action on the pending rollouts is in the audit log, refusals included.
        entries = (await admin.call("GET", "/v1/audit", params={"limit": "200"}))["entries"]
        seen = {(e["actor"], e["action"], e["subject"]) for e in entries}
        for want in (
            ("operator", "rollout.create", f"rollout/{rid}"),
            ("operator", "rollout.approve_refused", f"rollout/{rid}"),
            ("bob", "rollout.approve", f"rollout/{rid}"),
            ("operator", "rollout.create", f"rollout/{forced['id']}"),
            ("operator", "rollout.cancel", f"rollout/{forced['id']}"),
            ("bob", "rollout.approve_refused", f"rollout/{forced['id']}"),
            ("operator", "rollout.create", f"rollout/{back['id']}"),
            ("operator", "rollout.approve_refused", f"rollout/{back['id']}"),
            ("bob", "rollout.reject", f"rollout/{back['id']}"),
        ):
            assert want in seen, want


async def test_a_pending_security_rollout_takes_nothing_until_approved(
    tmp_path: Path, broker: MosquittoBroker, topics: Topics
) -> None:
    """Attack: an operator creates a security rollout to cancel the feature rollouts of
    devices without anyone approving it. Awaiting approval it takes nothing; rejected it
    takes nothing; only an approval by another operator supersedes."""
    async with approval_installation(tmp_path, broker, topics) as s:
        # sd-1 defers every update: its feature target stays in flight.
        hold = {"policy": {"hold_until": "2999-01-01T00:00:00Z"}}
        await start_devices(s, "sd-1", sections=hold)
        admin = Api(s.session, s.api.base, TOKENS["admin"])
        feature = await s.api.upload("app", "2.0")
        f = await s.api.rollout(feature["id"], target={"devices": ["sd-1"]})
        await admin.call("POST", f"/v1/rollouts/{f['id']}/approve")

        async def deferred() -> bool:
            return (await states(s, f["id"])).get("sd-1") == "deferred"

        await wait_until(deferred, within=60, what="the feature target deferred")
        fix = await upload_security(s, "2.1")
        sec = await s.api.rollout(fix["id"], target={"devices": ["sd-1"]})
        assert sec["state"] == "awaiting_approval"
        # The creator cannot approve it; the feature rollout keeps its device.
        await s.api.call("POST", f"/v1/rollouts/{sec['id']}/approve", expect=403)
        assert await states(s, f["id"]) == {"sd-1": "deferred"}
        await admin.call("POST", f"/v1/rollouts/{sec['id']}/reject", json={"reason": "later"})
        assert (await s.api.status(sec["id"]))["state"] == "rejected"
        assert await states(s, f["id"]) == {"sd-1": "deferred"}
        assert (await s.api.status(f["id"]))["state"] == "running"
        entries = (await admin.call("GET", "/v1/audit", params={"limit": "200"}))["entries"]
        assert not [e for e in entries if e["action"] == "rollout.supersede"]


async def test_a_device_reverted_off_a_security_release_shows_as_missing_it(
    setup: Setup,
) -> None:
    """Attack (operator-made, or a device walked back by a revert): a device that
    installed a security release and was then put back on the release before it runs
    vulnerable code again. The missing-security report must list it; today it counts the
    highest release id the device ever succeeded on, so a revert hides it."""
    s = setup
    await start_devices(s, "rv-1")
    old = await s.api.upload("app", "1.0")
    first = await s.api.rollout(old["id"], target={"devices": ["rv-1"]})
    await rollout_in(s, first["id"], "completed")
    fix = await upload_security(s, "1.1")
    sec = await s.api.rollout(fix["id"], target={"devices": ["rv-1"]})
    await rollout_in(s, sec["id"], "completed")
    report = (await s.api.call("GET", "/v1/security/missing"))["releases"]
    assert report[0]["missing"] == []

    reverted = await s.api.call("POST", f"/v1/rollouts/{sec['id']}/revert", json={},
                                expect=201)  # fmt: skip
    (back,) = reverted["rollouts"]
    await rollout_in(s, back["id"], "completed")
    device = await s.api.call("GET", "/v1/devices/rv-1")
    assert device["current_version"] == "1.0"  # it runs the vulnerable release again
    report = (await s.api.call("GET", "/v1/security/missing"))["releases"]
    assert report[0]["release"]["id"] == fix["id"]
    assert report[0]["missing"] == ["rv-1"], report


@pytest.mark.parametrize("route", ["retry", "pause-resume"])
async def test_the_creator_cannot_start_an_approved_scheduled_rollout_early(
    setup: Setup, route: str
) -> None:
    """Attack: another operator approved a rollout to start at a given time (its
    ``start_at``, part of what was approved). Its creator then retries it, or pauses and
    resumes it, to start it now. A correct implementation keeps it scheduled (or refuses);
    today both routes set it running and its devices are notified at once."""
    s = setup
    await start_devices(s, f"sc-{route}")
    admin = Api(s.session, s.api.base, TOKENS["admin"])
    rel = await s.api.upload("app", "2.0")
    pending = await s.api.rollout(rel["id"], target={"devices": [f"sc-{route}"]},
                                  start_at=4e9, require_approval=True)  # fmt: skip
    rid = pending["id"]
    approved = await admin.call("POST", f"/v1/rollouts/{rid}/approve")
    assert approved["state"] == "scheduled"
    if route == "retry":
        await s.api.call("POST", f"/v1/rollouts/{rid}/retry", expect=None)
    else:
        await s.api.call("POST", f"/v1/rollouts/{rid}/pause", expect=None)
        await s.api.call("POST", f"/v1/rollouts/{rid}/resume", expect=None)
    st = await s.api.status(rid)
    assert st["state"] in ("scheduled", "paused"), st["state"]
    assert set((await states(s, rid)).values()) == {"pending"}


async def test_a_release_version_with_a_nul_byte_cannot_fail_the_install_via_the_hook(
    setup: Setup, tmp_path: Path
) -> None:
    """Attack: a release version carrying a NUL byte (the API takes any 1..128 characters
    and so does the protocol's ``Version``) reaches the hook's environment
    (``FLEETPUSH_RELEASE``). The hook must never hold the update (hooks.py): a correct
    implementation refuses the version at upload or runs the hook without it; today the
    agent's ``create_subprocess_exec`` raises ValueError, which fails the install."""
    s = setup
    seen = tmp_path / "hook-ran"
    await start_devices(s, "nul-1", sections={"security": {
        "notify_command": ["/bin/sh", "-c", f"cat > {seen}"]}})  # fmt: skip
    params = [("name", "app"), ("version", "2.0\x00x"), ("security", "true"),
              ("advisory", json.dumps(ADVISORY))]  # fmt: skip
    async with s.session.post(
        s.api.base + "/v1/releases",
        data=PAYLOAD,
        params=params,
        headers={"Authorization": f"Bearer {TOKENS['operator']}"},
    ) as resp:
        if resp.status == 400:  # refused at upload, with a message: sound
            return
        assert resp.status == 201, await resp.text()
        rel = await resp.json()
    r = await s.api.rollout(rel["id"], target={"devices": ["nul-1"]})
    done = await rollout_in(s, r["id"], "completed", "paused", "aborted")
    targets = await s.api.targets(r["id"])
    assert [t["state"] for t in targets] == ["succeeded"], (done["state"], targets)


async def test_two_deciders_at_once_one_wins_the_other_is_refused_and_audited(
    setup: Setup,
) -> None:
    """Attack: an approval and a rejection (or two approvals) sent at the same instant,
    hoping both take effect (a rejected rollout that still runs). Exactly one wins."""
    s = setup
    await start_devices(s, "race-1")
    admin = Api(s.session, s.api.base, TOKENS["admin"])
    bob_token = (await admin.call("POST", "/v1/tokens", expect=201,
                                  json={"name": "bob", "role": "operator"}))["token"]  # fmt: skip
    bob = Api(s.session, s.api.base, bob_token)
    rel = await s.api.upload("app", "2.0")
    pending = await s.api.rollout(rel["id"], target={"devices": ["race-1"]},
                                  require_approval=True)  # fmt: skip
    rid = pending["id"]

    async def status_of(api: Api, action: str, body: dict[str, str]) -> int:
        async with s.session.post(
            f"{s.api.base}/v1/rollouts/{rid}/{action}",
            json=body,
            headers={"Authorization": f"Bearer {api.token}"},
        ) as resp:
            return resp.status

    got = await asyncio.gather(status_of(bob, "approve", {}),
                               status_of(admin, "reject", {"reason": "race"}),
                               status_of(admin, "approve", {}))  # fmt: skip
    assert sorted(got) == [200, 409, 409], got
    st = await s.api.status(rid)
    assert st["approval"]["state"] in ("approved", "rejected")
    assert (st["state"] == "rejected") == (st["approval"]["state"] == "rejected")
    entries = (await admin.call("GET", "/v1/audit", params={"limit": "50"}))["entries"]
    decided = [e["action"] for e in entries if e["subject"] == f"rollout/{rid}"
               and e["action"] in ("rollout.approve", "rollout.reject")]  # fmt: skip
    assert len(decided) == 1, decided


async def test_a_scheduled_security_rollout_takes_no_device_before_it_starts(
    setup: Setup,
) -> None:
    """Attack: an operator creates a security rollout scheduled far ahead (start_at): the
    devices it targets are taken from a running feature rollout now, and sit with neither
    update until then. supersede.py says devices are taken when the security rollout
    *starts*; a correct implementation leaves the feature targets alone until then."""
    s = setup
    await start_devices(s, "ss-1", sections={"policy": {"hold_until": "2999-01-01T00:00:00Z"}})
    feature = await s.api.upload("app", "2.0")
    f = await s.api.rollout(feature["id"], target={"devices": ["ss-1"]})

    async def deferred() -> bool:
        return (await states(s, f["id"])).get("ss-1") == "deferred"

    await wait_until(deferred, within=60, what="the feature target deferred")
    fix = await upload_security(s, "2.1")
    sec = await s.api.rollout(fix["id"], target={"devices": ["ss-1"]}, start_at=4e9)
    assert sec["state"] == "scheduled"
    assert await states(s, f["id"]) == {"ss-1": "deferred"}


# What this replica tries, and what the other replica decided meanwhile.
_LOST_DECISIONS = {
    "approve": ({}, "UPDATE rollouts SET state = 'rejected', approval = 'rejected', "
                    "decided_by = 'carol' WHERE id = %s"),
    "reject": ({"reason": "no"}, "UPDATE rollouts SET state = 'running', "
                                 "approval = 'approved', decided_by = 'carol' WHERE id = %s"),
}  # fmt: skip


@pytest.mark.parametrize("action", sorted(_LOST_DECISIONS))
async def test_a_decision_lost_to_another_replica_is_refused_and_audited(
    tmp_path: Path, broker: MosquittoBroker, topics: Topics,
    postgres_database: DatabaseConfig, action: str,
) -> None:  # fmt: skip
    """Attack: two replicas, one decision each at the same instant. This one reads the
    rollout awaiting approval, the other decides it meanwhile (its transaction holds the
    row until this one's compare-and-set waits behind it). The loser's 409 must leave a
    ``*_refused`` audit entry like any refused decision, or who tried what is lost."""
    async with running(tmp_path, broker, topics, database_url=postgres_database.url) as s:
        s.fleet.provision("cas-1")
        s.broker.reload()
        admin = Api(s.session, s.api.base, TOKENS["admin"])
        bob_body = {"name": "bob", "role": "operator"}
        bob_token = (await admin.call("POST", "/v1/tokens", expect=201, json=bob_body))["token"]
        bob = Api(s.session, s.api.base, bob_token)
        rel = await s.api.upload("app", "2.0")
        pending = await s.api.rollout(rel["id"], target={"devices": ["cas-1"]},
                                      require_approval=True)  # fmt: skip
        rid = pending["id"]
        body, sql = _LOST_DECISIONS[action]
        with hold_row(postgres_database.url, sql, (rid,)) as other:
            decision = asyncio.create_task(
                bob.call("POST", f"/v1/rollouts/{rid}/{action}", json=body, expect=409)
            )
            await other.until_waited_on()
            other.commit()
            refused = await decision
        assert "changed meanwhile" in refused["error"]
        entries = (await admin.call("GET", "/v1/audit", params={"limit": "50"}))["entries"]
        mine = [e for e in entries if e["subject"] == f"rollout/{rid}" and e["actor"] == "bob"]
        assert [e["action"] for e in mine] == [f"rollout.{action}_refused"], mine
        assert "changed meanwhile" in mine[0]["detail"]["error"]


async def test_an_approved_continuous_rollout_takes_in_no_device_without_a_new_approval(
    setup: Setup,
) -> None:
    """Attack: an operator has a continuous rollout to a small group approved, then moves
    more devices (the fleet) into that group, and they are updated with no second look.
    A correct implementation takes the newcomers in only after a new approval: the
    rollout goes back to awaiting approval with them pending, and another operator (never
    the creator) approves the larger target."""
    s = setup
    await start_devices(s, "grow-1", groups=("kiosk",))
    admin = Api(s.session, s.api.base, TOKENS["admin"])
    bob_body = {"name": "bob", "role": "operator"}
    bob_token = (await admin.call("POST", "/v1/tokens", expect=201, json=bob_body))["token"]
    bob = Api(s.session, s.api.base, bob_token)
    rel = await s.api.upload("app", "2.0")
    made = await s.api.rollout(rel["id"], target={"groups": ["kiosk"]}, continuous=True,
                               require_approval=True)  # fmt: skip
    rid = made["id"]
    await bob.call("POST", f"/v1/rollouts/{rid}/approve", json={})

    async def succeeded(n: int) -> bool:
        return (await s.api.status(rid))["states"].get("succeeded") == n

    await wait_until(lambda: succeeded(1), within=60, what="the approved device updated")
    await start_devices(s, "grow-2", "grow-3", groups=("kiosk",))  # moved in later
    held = await rollout_in(s, rid, "awaiting_approval", within=60)
    assert held["approval"]["state"] == "pending"
    assert "joined its target after it was approved" in held["reason"]
    assert await states(s, rid) == {"grow-1": "succeeded", "grow-2": "pending",
                                    "grow-3": "pending"}  # fmt: skip
    entries = (await admin.call("GET", "/v1/audit", params={"limit": "50"}))["entries"]
    follows = [e for e in entries if e["action"] == "rollout.follow"]
    assert "waits for a new approval" in follows[0]["detail"]["reason"]
    own = await s.api.call("POST", f"/v1/rollouts/{rid}/approve", json={}, expect=403)
    assert "creator cannot approve" in own["error"]
    await bob.call("POST", f"/v1/rollouts/{rid}/approve", json={})
    await wait_until(lambda: succeeded(3), within=90, what="the newcomers updated after approval")
    assert (await s.api.status(rid))["state"] == "running"
