"""Four-eyes approval of rollouts against a real orchestrator (real Mosquitto, HTTP API,
SQLite, device agents) and real API tokens: the creator cannot approve their own rollout,
another operator can; a rejection ends it; every decision and refusal is audited."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from orch_helpers import TOKENS, Api, Setup, rollout_in, setup, start_devices

from orchestrator.approval import needs_approval
from orchestrator.cli.main import main
from orchestrator.config import ConfigError, parse_config

__all__ = ["setup"]

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ENV = {"FLEETPUSH_SERVER": "", "FLEETPUSH_TOKEN": "", "FLEETPUSH_CONFIG": ""}


async def cli(s: Setup, token: str, *args: str) -> Result:
    full = [*args, "--server", s.api.base, "--token", token]
    return await asyncio.to_thread(CliRunner().invoke, main, full, env=ENV)


async def test_the_creator_cannot_approve_their_own_rollout_another_operator_can(
    setup: Setup,
) -> None:
    s = setup
    await start_devices(s, "ap-1", "ap-2")
    admin = Api(s.session, s.api.base, TOKENS["admin"])
    viewer = Api(s.session, s.api.base, TOKENS["viewer"])
    # A second operator with a token of their own, made the way an installation makes one.
    bob_token = (await admin.call("POST", "/v1/tokens", json={"name": "bob", "role": "operator"},
                                  expect=201))["token"]  # fmt: skip
    bob = Api(s.session, s.api.base, bob_token)
    rel = await s.api.upload("app", "2.0")
    body = {"release": rel["id"], "target": {"devices": ["ap-1"]}, "require_approval": True}
    plan = await s.api.call("POST", "/v1/rollouts", json={**body, "dry_run": True})
    assert plan["requires_approval"] is True
    pending = await s.api.call("POST", "/v1/rollouts", json=body, expect=201)
    rid = pending["id"]
    assert pending["state"] == "awaiting_approval"
    assert pending["created_by"] == "operator"
    assert pending["approval"] == {"required": True, "state": "pending", "decided_by": "",
                                   "decided_at": None}  # fmt: skip

    # The creator is refused, by the API and by the CLI, with what to do instead.
    own = await s.api.call("POST", f"/v1/rollouts/{rid}/approve", expect=403)
    assert "creator cannot approve their own rollout" in own["error"]
    text = await cli(s, TOKENS["operator"], "rollout", "approve", str(rid))
    assert text.exit_code == 1
    assert "another operator or an admin must" in text.output
    # A viewer cannot decide; pausing or retrying would start it past the approval.
    await viewer.call("POST", f"/v1/rollouts/{rid}/approve", expect=403)
    await s.api.call("POST", f"/v1/rollouts/{rid}/pause", expect=409)
    await s.api.call("POST", f"/v1/rollouts/{rid}/retry", expect=409)
    # A rejection needs a reason.
    why = await bob.call("POST", f"/v1/rollouts/{rid}/reject", json={}, expect=400)
    assert "reason" in why["error"]

    # Barrier: a later rollout on another device completes, so the engine has passed over
    # the pending one many times; its device was never notified.
    rel2 = await s.api.upload("app", "2.1")
    other = await bob.rollout(rel2["id"], target={"devices": ["ap-2"]})
    await rollout_in(s, other["id"], "completed")
    assert [t["state"] for t in await s.api.targets(rid)] == ["pending"]
    assert (await s.api.status(rid))["state"] == "awaiting_approval"

    # Another operator approves from the CLI with their own token: it runs to the end.
    shown = await cli(s, TOKENS["operator"], "rollout", "status", str(rid))
    assert "awaiting approval: created by operator" in shown.output
    approved = await cli(s, bob_token, "rollout", "approve", str(rid))
    assert approved.exit_code == 0, approved.output
    assert f"rollout {rid}: running" in approved.output
    assert "approved by bob (created by operator)" in approved.output
    done = await rollout_in(s, rid, "completed")
    assert done["approval"]["state"] == "approved"
    assert done["approval"]["decided_by"] == "bob"
    assert [t["state"] for t in await s.api.targets(rid)] == ["succeeded"]
    # Decided once: a second approval finds nothing to approve.
    again = await admin.call("POST", f"/v1/rollouts/{rid}/approve", expect=409)
    assert "not awaiting approval" in again["error"]

    entries = (await admin.call("GET", "/v1/audit", params={"limit": "100"}))["entries"]
    mine = [(e["actor"], e["action"]) for e in reversed(entries)
            if e["subject"] == f"rollout/{rid}"]  # fmt: skip
    # In order: the create, the creator's two refused tries, the approval, the end, a late try.
    # (A viewer's try and a reason-less rejection are refused before any decision.)
    assert mine == [
        ("operator", "rollout.create"),
        ("operator", "rollout.approve_refused"),
        ("operator", "rollout.approve_refused"),
        ("bob", "rollout.approve"),
        ("engine", "rollout.complete"),
        ("admin", "rollout.approve_refused"),
    ], mine


async def test_a_rejected_rollout_ends_and_frees_its_devices_an_admin_approves_no_own(
    setup: Setup,
) -> None:
    s = setup
    await start_devices(s, "rj-1")
    admin = Api(s.session, s.api.base, TOKENS["admin"])
    rel = await s.api.upload("app", "3.0")
    pending = await admin.rollout(rel["id"], target={"devices": ["rj-1"]}, require_approval=True)
    rid = pending["id"]
    # Not even an admin approves their own rollout.
    own = await admin.call("POST", f"/v1/rollouts/{rid}/approve", expect=403)
    assert "creator cannot approve" in own["error"]
    # A pending rollout holds its devices: another create is refused without --force.
    await s.api.call("POST", "/v1/rollouts", json={"release": rel["id"],
                     "target": {"devices": ["rj-1"]}}, expect=409)  # fmt: skip
    # The operator rejects it from the CLI: --reason is required, then it ends.
    missing = await cli(s, TOKENS["operator"], "rollout", "reject", str(rid))
    assert missing.exit_code == 2
    assert "--reason" in missing.output
    text = await cli(s, TOKENS["operator"], "rollout", "reject", str(rid), "--reason",
                     "not tested on rj hardware")  # fmt: skip
    assert text.exit_code == 0, text.output
    st = await s.api.status(rid)
    assert st["state"] == "rejected"
    assert st["reason"] == "not tested on rj hardware"
    assert st["approval"]["decided_by"] == "operator"
    assert [t["state"] for t in await s.api.targets(rid)] == ["canceled"]
    watched = await cli(s, TOKENS["operator"], "rollout", "status", str(rid), "--watch")
    assert watched.exit_code == 6
    entry = (await admin.call("GET", "/v1/audit", params={"limit": "1"}))["entries"][0]
    assert (entry["actor"], entry["action"]) == ("operator", "rollout.reject")
    assert entry["detail"]["reason"] == "not tested on rj hardware"
    assert entry["detail"]["created_by"] == "admin"
    # Its device is free again: a rollout without approval takes it at once.
    free = await s.api.rollout(rel["id"], target={"devices": ["rj-1"]})
    assert free["approval"]["required"] is False
    await rollout_in(s, free["id"], "completed")
    metrics = await s.session.get(s.api.base + "/metrics")
    assert 'fleetpush_rollouts{state="rejected"} 1' in await metrics.text()


def test_the_installation_setting_and_a_rollout_cannot_turn_it_off(tmp_path: Path) -> None:
    config = parse_config({"data_dir": ".", "rollouts": {"require_approval": True}}, tmp_path)
    assert config.rollouts.require_approval is True
    assert parse_config({"data_dir": "."}, tmp_path).rollouts.require_approval is False
    with pytest.raises(ConfigError, match=r"\[rollouts\] require_approval: expected true or false"):
        parse_config({"data_dir": ".", "rollouts": {"require_approval": "yes"}}, tmp_path)
    assert needs_approval(True, None) is True
    assert needs_approval(False, True) is True
    assert needs_approval(False, None) is False
    with pytest.raises(ValueError, match="cannot be turned off"):
        needs_approval(True, False)
