"""Security rollouts against a real orchestrator (real Mosquitto, HTTP API, SQLite) and
real device agents: a security rollout supersedes a running feature rollout for the same
devices; which devices miss which security release (API, CLI, metric); support periods
published signed and retained, verified by an agent, shown, and warned about."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from orch_helpers import PAYLOAD, TOKENS, Api, Setup, running, setup, start_devices, wait_until

from fleetpush_protocol.envelope import sign_message
from fleetpush_protocol.errors import ContentError
from fleetpush_protocol.topics import Topics
from fleetpush_protocol.verify import TrustedKeyring, VerifyPolicy, verify_keyring, verify_support
from fleetpush_sim.signing import BASE_TIME, DAY, fixed_key, make_keyring, tamper_body
from orchestrator.broker import MosquittoBroker
from orchestrator.cli.main import main
from orchestrator.security.keystore import SigningSet
from orchestrator.support import day_end, signed_periods

__all__ = ["setup"]

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ENV = {"FLEETPUSH_SERVER": "", "FLEETPUSH_TOKEN": "", "FLEETPUSH_CONFIG": ""}
ADVISORY = {"cves": ["CVE-2026-20001"], "severity": "critical", "summary": "Fixes a RCE.",
            "max_postpone": "0s"}  # fmt: skip


async def cli(s: Setup, *args: str) -> Result:
    full = [*args, "--server", s.api.base, "--token", TOKENS["operator"]]
    return await asyncio.to_thread(CliRunner().invoke, main, full, env=ENV)


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
    await start_devices(s, "sec-1", sections={"policy": {"hold_until": "2999-01-01T00:00:00Z"}})
    await start_devices(s, "sec-2", "sec-3")
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

    # The dry run says which devices it would take from the feature rollout.
    body = {"release": fix["id"], "target": {"devices": ["sec-1", "sec-2", "sec-3"]}}
    plan = await s.api.call("POST", "/v1/rollouts", json={**body, "dry_run": True})
    held = {h["device"]: h for h in plan["held"]}
    assert held["sec-1"]["superseded"] is True
    assert held["sec-1"]["rollout_id"] == running["id"]
    text = await cli(s, "rollout", "create", str(fix["id"]), "--target",
                     "device:sec-1,device:sec-2,device:sec-3", "--dry-run")  # fmt: skip
    assert f"other_rollout (rollout {running['id']}, a feature rollout: taken from it)" \
        in text.output  # fmt: skip
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

    async def both_over() -> bool:
        states = [(await s.api.status(r["id"]))["state"] for r in (running, sec)]
        return states == ["completed", "completed"]

    await wait_until(both_over, what="the feature rollout completes with the rest")
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


async def test_support_periods_are_published_signed_shown_and_warned_about(
    tmp_path: Path, broker: MosquittoBroker, topics: Topics
) -> None:
    extra = '[support]\nrpi4 = 2031-06-30\nold-board = "2020-01-31"\n'
    async with running(tmp_path, broker, topics, extra_toml=extra) as s:
        await start_devices(s, "sup-1")  # a real agent, model rpi4
        agent = s.fleet.agents["sup-1"]

        # The agent verified the retained, signed message and kept it.
        async def verified() -> bool:
            return agent.router.support.until is not None

        await wait_until(verified, what="support periods verified by the agent")
        assert agent.router.support.until == day_end(dt.date(2031, 6, 30))
        kept = json.loads((agent.config.device.state_dir / "support.json").read_text())
        assert kept["models"] == {"old-board": day_end(dt.date(2020, 1, 31)),
                                  "rpi4": day_end(dt.date(2031, 6, 30))}  # fmt: skip
        # Shown by the API and the CLI.
        shown = (await s.api.call("GET", "/v1/support"))["models"]
        assert shown == [
            {"model": "old-board", "security_updates_until": "2020-01-31", "ended": True},
            {"model": "rpi4", "security_updates_until": "2031-06-30", "ended": False},
        ]
        text = await cli(s, "support")
        assert "old-board" in text.output
        assert "ended" in text.output
        # A release for a model past its period warns (and is still stored).
        payload = tmp_path / "app.tar"
        payload.write_bytes(PAYLOAD)
        made = await cli(s, "release", "upload", str(payload), "--name", "app", "--version",
                         "9.0", "--model", "old-board", "--model", "rpi4")  # fmt: skip
        assert made.exit_code == 0, made.output
        assert ("warning: model 'old-board' is past its support period (security updates "
                "until 2020-01-31") in made.output  # fmt: skip
        assert "'rpi4'" not in made.output
        ok = await s.api.call(
            "POST",
            "/v1/releases",
            data=PAYLOAD,
            expect=201,
            params=[("name", "app"), ("version", "9.1"), ("model", "rpi4")],
        )
        assert ok["warnings"] == []


def test_a_forged_or_stale_support_message_is_refused() -> None:
    root, key, stranger_key = fixed_key(1), fixed_key(11), fixed_key(99)
    signing = SigningSet(keys=(key,), not_after=BASE_TIME + 30 * DAY)
    good = signed_periods({"m1": dt.date(2030, 1, 1)}, signing, BASE_TIME)
    anchor = TrustedKeyring.anchor([root.public_key])
    keyring = sign_message(make_keyring(1, [root], [key]), [root])
    trusted = anchor.then(verify_keyring(keyring, trusted=anchor, policy=VerifyPolicy()))
    args = {"keyring": trusted, "trusted_time": 0, "now": BASE_TIME + 60,
            "policy": VerifyPolicy()}  # fmt: skip
    assert verify_support(good, last_issued_at=0, **args).message.models == {
        "m1": day_end(dt.date(2030, 1, 1))
    }
    with pytest.raises(ContentError) as e:
        verify_support(good, last_issued_at=BASE_TIME + 1, **args)
    assert e.value.code == "rollback"
    with pytest.raises(ContentError) as e:
        verify_support(tamper_body(good, models={"m1": 2**40}), last_issued_at=0, **args)
    assert e.value.code == "bad_signature"
    other = SigningSet(keys=(stranger_key,), not_after=BASE_TIME + DAY)
    stranger = signed_periods({"m1": dt.date(2030, 1, 1)}, other, BASE_TIME)
    with pytest.raises(ContentError) as e:
        verify_support(stranger, last_issued_at=0, **args)
    assert e.value.code == "unknown_key"


async def test_a_security_rollout_awaiting_approval_supersedes_only_once_approved(
    setup: Setup,
) -> None:
    s = setup
    await start_devices(s, "ap-1", sections={"policy": {"hold_until": "2999-01-01T00:00:00Z"}})
    feature = await s.api.upload("app", "2.0")
    running = await s.api.rollout(feature["id"], target={"devices": ["ap-1"]})
    await until(s, running["id"], {"ap-1": "deferred"})
    params = [("name", "app"), ("version", "2.1"), ("security", "true"),
              ("advisory", json.dumps(ADVISORY))]  # fmt: skip
    fix = await s.api.call("POST", "/v1/releases", data=PAYLOAD, params=params, expect=201)
    sec = await s.api.rollout(fix["id"], target={"devices": ["ap-1"]}, require_approval=True)
    assert sec["state"] == "awaiting_approval"
    # The take-over happens in the request that starts it, so this read is conclusive: the
    # feature rollout keeps its device while the security one waits.
    assert (await target_states(s, running["id"])) == {"ap-1": "deferred"}
    admin = Api(s.session, s.api.base, TOKENS["admin"])
    approved = await admin.call("POST", f"/v1/rollouts/{sec['id']}/approve")
    assert approved["state"] == "running"
    assert (await target_states(s, running["id"])) == {"ap-1": "canceled"}
    await until(s, sec["id"], {"ap-1": "succeeded"})
