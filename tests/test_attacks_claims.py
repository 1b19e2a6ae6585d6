"""A device cannot choose its own groups or model (issue 12, hole 1).

The attack, against a real Mosquitto, the real orchestrator service and real device agents:
a device whose credentials are in the attacker's hands publishes an inventory claiming
groups it was never given (``canary,beta,prod``) and another model. A rollout to
``group:beta`` must not target, notify or count it, none of its reports may pause that
rollout, and the claim shows as a mismatch in the API, the CLI, the dashboard's API and
``/metrics``. Without the fix the claimed groups were targeted: the device got a signed
notice and its ``failed`` report paused the rollout.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from typing import Any

import aiomqtt
import pytest
from click.testing import CliRunner
from orch_helpers import TOKENS, Setup, setup, wait_until

from fleetpush_common.tasks import cancel_and_wait
from fleetpush_protocol.envelope import decode_envelope, encode_message, parse
from fleetpush_protocol.messages import (
    ErrorInfo,
    Inventory,
    Report,
    ReportState,
    UpdateNotice,
)
from orchestrator.cli.main import main

__all__ = ["setup"]

pytestmark = pytest.mark.integration

HOSTILE = "mallory-dev"
CLAIMED = ("canary", "beta", "prod")
HONEST = ("beta-1", "beta-2")


class Hostile:
    """The compromised device: its own broker login, no signing key. It answers every
    notice it can read with a ``failed`` report, as the attack review's device did."""

    def __init__(self, client: aiomqtt.Client, s: Setup) -> None:
        self.client = client
        self.topics = s.fleet.topics
        self.counter = 0
        self.notices: list[str] = []
        self.keyrings = 0

    async def report_failed(self, notice_id: str, rollout_id: str) -> None:
        self.counter += 1
        report = Report(
            device_id=HOSTILE, notice_id=notice_id, rollout_id=rollout_id,
            state=ReportState.FAILED, current_version="1.0", counter=self.counter,
            reported_at=int(time.time()), error=ErrorInfo(code="health_failed", message="x"),
        )  # fmt: skip
        await self.client.publish(self.topics.report(HOSTILE), encode_message(report), qos=1)

    async def listen(self) -> None:
        async for msg in self.client.messages:
            if str(msg.topic).endswith("/notice"):
                assert isinstance(msg.payload, bytes)
                if not msg.payload:
                    continue
                notice = parse(decode_envelope(msg.payload))
                self.notices.append(str(msg.topic))
                if isinstance(notice, UpdateNotice):
                    await self.report_failed(notice.notice_id, notice.rollout_id)
            else:
                self.keyrings += 1


async def _cli(s: Setup, *args: str) -> str:
    argv = [*args, "--server", s.api.base, "--token", TOKENS["viewer"]]
    # The CLI blocks on HTTP: run it off this loop, which serves the API.
    runner = CliRunner(env={"COLUMNS": "250"})  # rich wraps cells to the terminal's width
    result = await asyncio.to_thread(runner.invoke, main, argv)
    assert result.exit_code == 0, result.output
    return result.output


async def test_device_claiming_groups_is_not_targeted_notified_or_counted(setup: Setup) -> None:
    s = setup
    topics = s.fleet.topics
    for d in HONEST:
        s.fleet.provision(d, groups=("beta",))
    password = s.broker.add_device(HOSTILE, ("alpha",))
    s.broker.set_model(HOSTILE, "rpi3")
    s.broker.reload()
    admin = {"Authorization": f"Bearer {TOKENS['admin']}"}

    async with aiomqtt.Client(
        s.broker.host, s.broker.port, username=HOSTILE, password=password,
        identifier=HOSTILE, protocol=aiomqtt.ProtocolVersion.V5,
    ) as client:  # fmt: skip
        hostile = Hostile(client, s)
        await client.subscribe(topics.device_notice(HOSTILE), qos=1)
        for g in CLAIMED:
            await client.subscribe(topics.group_notice(g), qos=1)
        await client.subscribe(topics.keyring(1), qos=1)
        listener = asyncio.create_task(hostile.listen())
        try:
            inventory = Inventory(
                device_id=HOSTILE, model="rpi4", groups=CLAIMED, client_version="evil-1",
                installed=(), free_bytes=1, at=int(time.time()),
            )  # fmt: skip
            await client.publish(topics.inventory(HOSTILE), encode_message(inventory), qos=1)

            async def claimed() -> bool:
                d = await s.api.call("GET", f"/v1/devices/{HOSTILE}", expect=None)
                return d.get("client_version") == "evil-1"

            await wait_until(claimed, what="the hostile inventory stored")

            # The honest beta devices are offline: their notices wait for them, so the
            # hostile reports below arrive while the rollout is running.
            rel = await s.api.upload("app", "2.0")
            r = await s.api.rollout(
                rel["id"], target={"groups": ["beta"]}, phases=[100], failure_pct=0,
                min_attempts=1, success_pct=100,
            )  # fmt: skip
            targets = await s.api.targets(r["id"])
            assert {t["device_id"] for t in targets} == set(HONEST)
            assert r["devices"] == len(HONEST)

            async def sent() -> list[dict[str, Any]] | None:
                ts = await s.api.targets(r["id"])
                return ts if all(t["notice_id"] for t in ts) else None

            targets = await wait_until(sent, what="the beta notices signed")
            # A forged failure about an honest device's notice, and one about a made-up
            # notice: both kept as evidence, neither counted.
            await hostile.report_failed(targets[0]["notice_id"], str(r["id"]))
            await hostile.report_failed("n-made-up", str(r["id"]))

            async def stored() -> list[dict[str, Any]] | None:
                d = await s.api.call("GET", f"/v1/devices/{HOSTILE}")
                return d["reports"] if len(d["reports"]) >= 2 else None

            reports = await wait_until(stored, what="the hostile reports stored")
            assert not any(rep["accepted"] for rep in reports)

            for d in HONEST:
                s.fleet.start(d)

            async def finished() -> dict[str, Any] | None:
                st = await s.api.status(r["id"])
                return st if st["state"] not in ("running", "scheduled") else None

            done = await wait_until(finished, within=60, what="the beta rollout finished")
            assert done["state"] == "completed", done
            assert done["states"] == {"succeeded": len(HONEST)}

            # Barrier: the orchestrator publishes the keyrings again; anything it had
            # published for the hostile device was delivered before them.
            seen = hostile.keyrings
            async with s.session.post(s.api.base + "/v1/keys/reload", headers=admin) as resp:
                assert resp.status == 200, await resp.text()

            async def keyring_again() -> bool:
                return hostile.keyrings > seen

            await wait_until(keyring_again, what="the keyring barrier")
            assert hostile.notices == []
        finally:
            await cancel_and_wait(listener)

    db = sqlite3.connect(f"file:{s.orch.config.data_dir / 'fleetpush.db'}?mode=ro", uri=True)
    try:
        (notices,) = db.execute(
            "SELECT count(*) FROM notices WHERE device_id = ?", (HOSTILE,)
        ).fetchone()
    finally:
        db.close()
    assert notices == 0

    # The claim is shown as a claim, next to the registry's facts.
    d = await s.api.call("GET", f"/v1/devices/{HOSTILE}")
    assert d["groups"] == ["alpha"]
    assert d["model"] == "rpi3"
    assert d["claimed_groups"] == sorted(CLAIMED)
    assert d["claimed_model"] == "rpi4"
    assert d["claims_mismatch"] is True
    honest = await s.api.call("GET", f"/v1/devices/{HONEST[0]}")
    assert honest["groups"] == ["beta"]
    assert honest["claimed_groups"] == ["beta"]
    assert honest["claims_mismatch"] is False
    listed = await s.api.call("GET", "/v1/devices", params={"group": "beta"})
    assert {x["device_id"] for x in listed["devices"]} == set(HONEST)
    summary = await s.api.call("GET", "/v1/dashboard/summary")
    assert summary["claims_mismatch"] == 1
    assert "prod" not in summary["groups"]
    async with s.session.get(s.api.base + "/metrics", headers=admin) as resp:
        metrics = await resp.text()
    assert "\nfleetpush_devices_claims_mismatch 1\n" in metrics
    out = await _cli(s, "devices", "list")
    line = next(x for x in out.splitlines() if HOSTILE in x)
    assert "MISMATCH" in line
    assert all("MISMATCH" not in x for x in out.splitlines() if HONEST[0] in x)
    shown = await _cli(s, "devices", "show", HOSTILE)
    assert "claimed by the device: groups=beta,canary,prod model=rpi4 (MISMATCH" in shown


async def test_operator_sets_groups_and_model_audited_and_claims_never_move_them(
    setup: Setup,
) -> None:
    s = setup
    s.fleet.provision("dev-set", groups=("beta",))
    s.broker.reload()
    s.fleet.start("dev-set")

    async def inventoried() -> dict[str, Any] | None:
        d = await s.api.call("GET", "/v1/devices/dev-set", expect=None)
        return d if d.get("claimed_model") else None

    d = await wait_until(inventoried, what="dev-set's inventory")
    assert (d["groups"], d["model"], d["claims_mismatch"]) == (["beta"], "", False)
    argv = ["devices", "set", "dev-set", "--group", "eu", "--model", "rpi5",
            "--server", s.api.base, "--token", TOKENS["operator"], "--json"]  # fmt: skip
    result = await asyncio.to_thread(CliRunner().invoke, main, argv)
    assert result.exit_code == 0, result.output
    d = await s.api.call("GET", "/v1/devices/dev-set")
    # Operator groups add to the provisioned ones; the operator's model wins, and the
    # device's claim (rpi4) now differs from it.
    assert d["groups"] == ["beta", "eu"]
    assert (d["model"], d["operator_model"], d["claimed_model"]) == ("rpi5", "rpi5", "rpi4")
    assert d["claims_mismatch"] is True
    admin = {"Authorization": f"Bearer {TOKENS['admin']}"}
    async with s.session.get(s.api.base + "/v1/audit", headers=admin) as resp:
        entries = (await resp.json())["entries"]
    label = next(e for e in entries if e["action"] == "device.label")
    assert label["detail"]["model"] == "rpi5"
    # A later provisioning change (the registry) is picked up without a restart.
    s.broker.set_groups("dev-set", ("beta", "prod"))
    d = await s.api.call("GET", "/v1/devices/dev-set")
    assert d["registry_groups"] == ["beta", "prod"]
    assert d["groups"] == ["beta", "eu", "prod"]
