"""The HTTP API: token roles, clear 4xx answers, payload URLs, impersonation, timeouts."""

from __future__ import annotations

import time

import aiomqtt
import pytest
from orch_helpers import PAYLOAD, TOKENS, Api, Setup, setup, wait_until

from fleetpush_protocol.envelope import encode_message
from fleetpush_protocol.messages import Presence, Report, ReportState

__all__ = ["setup"]

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def test_token_roles_are_enforced(setup: Setup) -> None:
    s = setup
    viewer = Api(s.session, s.api.base, TOKENS["viewer"])
    admin = Api(s.session, s.api.base, TOKENS["admin"])
    nobody = Api(s.session, s.api.base, None)
    wrong = Api(s.session, s.api.base, "fp_not_a_token")
    assert "bearer" in (await nobody.call("GET", "/v1/devices", expect=401))["error"]
    assert "invalid" in (await wrong.call("GET", "/v1/devices", expect=401))["error"]
    await viewer.call("GET", "/v1/devices")
    await viewer.call("GET", "/v1/releases")
    denied = await viewer.call("POST", "/v1/releases", data=b"x", expect=403,
                               params={"name": "a", "version": "1"})  # fmt: skip
    assert "operator role" in denied["error"]
    await s.api.call("GET", "/v1/audit", expect=403)  # operators do not read the audit log
    await s.api.call("POST", "/v1/tokens", json={"name": "x", "role": "admin"}, expect=403)
    created = await admin.call("POST", "/v1/tokens", json={"name": "ci", "role": "viewer"},
                               expect=201)  # fmt: skip
    ci = Api(s.session, s.api.base, created["token"])
    await ci.call("GET", "/v1/rollouts")
    await admin.call("DELETE", "/v1/tokens/ci")
    await ci.call("GET", "/v1/rollouts", expect=401)
    entries = (await admin.call("GET", "/v1/audit"))["entries"]
    assert [e["action"] for e in entries][:2] == ["token.revoke", "token.create"]
    assert entries[0]["actor"] == "admin"


async def test_bad_requests_get_clear_4xx(setup: Setup) -> None:
    api = setup.api
    rel = await api.upload("app", "1.0")
    cases = [
        ("POST", "/v1/rollouts", {"json": {"release": rel["id"]}}, 400, "target"),
        ("POST", "/v1/rollouts", {"data": b"{not json"}, 400, "JSON"),
        ("POST", "/v1/rollouts", {"json": {"release": rel["id"], "target": {"all": True},
                                           "phases": [50, 10, 100]}}, 400, "phases"),
        ("POST", "/v1/rollouts", {"json": {"release": rel["id"], "target": {"all": True},
                                           "bogus": 1}}, 400, "bogus"),
        ("POST", "/v1/rollouts", {"json": {"release": rel["id"], "target": {"all": True}}},
         400, "no registered device"),
        ("POST", "/v1/rollouts", {"json": {"release": 999, "target": {"all": True}}}, 404,
         "no release"),
        ("GET", "/v1/rollouts/abc", {}, 400, "rollout id"),
        ("GET", "/v1/rollouts/77", {}, 404, "no rollout"),
        ("GET", "/v1/devices", {"params": {"online": "maybe"}}, 400, "online"),
        ("GET", "/v1/devices/nope", {}, 404, "no device"),
        ("POST", "/v1/releases", {"data": b"x", "params": {"name": "a/b", "version": "1"}}, 400,
         "name"),
        ("POST", "/v1/releases", {"data": PAYLOAD, "params": {"name": "app", "version": "1.0"}},
         409, "already exists"),
        ("POST", "/v1/releases", {"data": b"notatar", "params": {"name": "app", "version": "1.1"}},
         400, "handler 'directory' unpacks a tar"),
        ("PATCH", "/v1/devices/nope", {"json": {"groups": ["a b"]}}, 400, "groups"),
    ]  # fmt: skip
    for method, path, kw, status, word in cases:
        body = await api.call(method, path, expect=status, **kw)
        assert word in body["error"], (path, body)


async def test_payload_urls_are_signed_and_ranged(setup: Setup) -> None:
    s = setup
    rel = await s.api.upload("app", "1.0")
    signer = s.orch.engine.notices.urls if s.orch.engine else None
    assert signer is not None
    url = signer.sign(s.api.base, rel["sha256"], int(time.time()) + 60)
    async with s.session.get(url) as resp:
        assert resp.status == 200
        assert await resp.read() == PAYLOAD
    async with s.session.get(url, headers={"Range": "bytes=10-19"}) as resp:
        assert resp.status == 206
        assert await resp.read() == PAYLOAD[10:20]
    expired = signer.sign(s.api.base, rel["sha256"], int(time.time()) - 1)
    async with s.session.get(expired) as resp:
        assert resp.status == 403
        assert "expired" in (await resp.json())["error"]
    async with s.session.get(url.replace("sig=", "sig=0")) as resp:
        assert resp.status == 403


async def test_device_reporting_for_another_device_is_rejected(setup: Setup) -> None:
    s = setup
    s.fleet.provision("victim")
    s.fleet.provision("mallory")
    s.broker.reload()
    s.fleet.start("victim")

    async def victim_online() -> bool:
        return bool((await s.api.call("GET", "/v1/devices/victim", expect=None)).get("online"))

    await wait_until(victim_online, what="victim online")
    rel = await s.api.upload("app", "6.0")
    # a device that never reports: the victim's agent is stopped once notified
    await s.fleet.stop("victim")
    r = await s.api.rollout(rel["id"], target={"devices": ["victim"]}, device_timeout_s=600)
    targets = (await s.api.call("GET", f"/v1/rollouts/{r['id']}/targets"))["targets"]

    async def notified() -> str | None:
        t = (await s.api.call("GET", f"/v1/rollouts/{r['id']}/targets"))["targets"][0]
        return t["notice_id"]

    notice_id = await wait_until(notified, what="victim notified")
    del targets
    topics = s.fleet.topics
    forged = [
        # on its own topic, claiming to be the victim: refused before storage
        (topics.report("mallory"), Report(device_id="victim", notice_id=notice_id,
         rollout_id=str(r["id"]), state=ReportState.SUCCEEDED, current_version="6.0",
         counter=1, reported_at=int(time.time()))),
        # as itself, about the victim's notice: stored, not accepted
        (topics.report("mallory"), Report(device_id="mallory", notice_id=notice_id,
         rollout_id=str(r["id"]), state=ReportState.SUCCEEDED, current_version="6.0",
         counter=2, reported_at=int(time.time()))),
        (topics.presence("mallory"), Presence(device_id="victim", online=True,
                                              at=int(time.time()))),
    ]  # fmt: skip
    async with aiomqtt.Client(
        s.broker.host, s.broker.port, username="mallory", password=s.broker.password("mallory"),
        identifier="mallory",
    ) as client:  # fmt: skip
        for topic, msg in forged:
            await client.publish(topic, encode_message(msg), qos=1)

    async def counted() -> bool:
        return bool(s.orch.ingestor and s.orch.ingestor.stats.impersonation >= 2)

    await wait_until(counted, what="impersonation counted")

    async def rejected_metric() -> bool:
        async with s.session.get(s.api.base + "/metrics") as resp:
            return "fleetpush_reports_rejected_total 1" in await resp.text()

    await wait_until(rejected_metric, what="rejected report counted")
    st = await s.api.status(r["id"])
    assert st["states"] == {"sent": 1}, st
    victim = await s.api.call("GET", "/v1/devices/victim")
    assert victim["online"] is False


async def test_silent_device_times_out_with_a_reason(setup: Setup) -> None:
    s = setup
    s.fleet.provision("quiet")
    s.broker.reload()
    rel = await s.api.upload("app", "7.0")
    # "quiet" only says it is online, and then never reports anything
    async with aiomqtt.Client(
        s.broker.host, s.broker.port, username="quiet", password=s.broker.password("quiet"),
        identifier="quiet",
    ) as client:  # fmt: skip
        online = Presence(device_id="quiet", online=True, at=int(time.time()))
        await client.publish(s.fleet.topics.presence("quiet"), encode_message(online), qos=1,
                             retain=True)  # fmt: skip

        async def registered() -> bool:
            d = await s.api.call("GET", "/v1/devices/quiet", expect=None)
            return bool(d.get("online"))

        await wait_until(registered, what="quiet registered")
        r = await s.api.rollout(rel["id"], target={"devices": ["quiet"]}, device_timeout_s=1.5,
                                failure_pct=100, min_attempts=1)  # fmt: skip

        async def timed_out() -> dict | None:
            t = (await s.api.call("GET", f"/v1/rollouts/{r['id']}/targets"))["targets"][0]
            return t if t["state"] == "timed_out" else None

        t = await wait_until(timed_out, what="quiet timed out")
        assert "no report since sent" in t["reason"]
        st = await s.api.status(r["id"])
        assert st["state"] == "paused"  # the gate cannot be met: every device finished
        assert "below its success gate" in st["reason"]
        # release in use by a paused rollout cannot be deleted
        busy = await s.api.call("DELETE", f"/v1/releases/{rel['id']}", expect=409)
        assert "active rollout" in busy["error"]
        retried = await s.api.call("POST", f"/v1/rollouts/{r['id']}/retry")
        assert retried["retried"] == 1
