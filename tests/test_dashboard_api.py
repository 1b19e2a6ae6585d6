"""The dashboard's HTTP side without a browser: pages, auth, read endpoints, the SSE stream."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import aiohttp
import pytest
from dashboard_fleet import TOKENS, Fleet, fleet

from orchestrator.api import dashboard

__all__ = ["fleet"]  # fixtures
pytestmark = pytest.mark.integration


async def read_events(
    resp: aiohttp.ClientResponse, until: str, within: float = 20
) -> list[tuple[str, Any]]:
    """Parse SSE frames from ``resp`` until an event named ``until`` arrives."""
    events: list[tuple[str, Any]] = []
    buffer = b""
    deadline = time.monotonic() + within
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {until!r} event within {within}s; got {events}")
        chunk = await asyncio.wait_for(resp.content.readany(), left)
        if not chunk:
            raise AssertionError(f"stream ended before {until!r}; got {events}")
        buffer += chunk
        while b"\n\n" in buffer:
            frame, buffer = buffer.split(b"\n\n", 1)
            lines = frame.decode().split("\n")
            name = next((ln[6:].strip() for ln in lines if ln.startswith("event:")), "")
            data = [ln[5:].strip() for ln in lines if ln.startswith("data:")]
            if name and data:
                events.append((name, json.loads("\n".join(data))))
                if name == until:
                    return events


async def test_pages_are_served_with_a_strict_policy_and_no_data(fleet: Fleet) -> None:
    assert fleet.http is not None
    async with fleet.http.get(fleet.url + "/", allow_redirects=False) as resp:
        assert resp.status == 302
        assert resp.headers["Location"] == "/ui/"
    for name, kind in (("", "text/html"), *dashboard.STATIC.items()):
        async with fleet.http.get(f"{fleet.url}/ui/{name}") as resp:
            assert resp.status == 200, name
            assert resp.content_type == kind
            csp = resp.headers["Content-Security-Policy"]
            assert "default-src 'none'" in csp
            assert "script-src 'self'" in csp
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            body = await resp.text()
            # No CDN, no web font: the only URL is the SVG namespace.
            assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", body), name
    bad_names = ("../api/app.py", "secret.txt", "%2e%2e%2fdashboard.py", "views/app.js",
                 "views/", "views/x.js", "/etc/passwd")  # fmt: skip
    for bad in bad_names:
        async with fleet.http.get(f"{fleet.url}/ui/{bad}") as resp:
            assert resp.status == 404, bad


async def test_read_endpoints_need_a_token_and_report_the_role(fleet: Fleet) -> None:
    assert fleet.http is not None
    for path in ("/v1/dashboard/me", "/v1/dashboard/summary", "/v1/dashboard/rollouts",
                 "/v1/dashboard/rollouts/1/detail", "/v1/events"):  # fmt: skip
        async with fleet.http.get(fleet.url + path) as resp:
            assert resp.status == 401, path
        async with fleet.http.get(
            fleet.url + path, headers={"Authorization": "Bearer fp_wrong"}
        ) as resp:
            assert resp.status == 401, path
    for role, can_act in (("viewer", False), ("operator", True), ("admin", True)):
        me = await fleet.api(role, "GET", "/v1/dashboard/me")
        assert me == {"name": f"{role}-user", "role": role, "can_act": can_act}


async def test_summary_rollouts_and_the_event_stream(fleet: Fleet) -> None:
    for i in range(3):
        await fleet.add_device(f"dev-{i}", healthy=i != 2)
    await fleet.wait_registered(3)
    release = await fleet.upload_release("2.0.0")
    summary = await fleet.api("viewer", "GET", "/v1/dashboard/summary")
    assert (summary["devices"], summary["online"], summary["offline"]) == (3, 3, 0)
    assert summary["models"] == {"rpi4": 3}
    assert summary["groups"] == ["lab"]
    assert fleet.http is not None
    headers = {"Authorization": f"Bearer {TOKENS['viewer']}"}
    async with fleet.http.get(fleet.url + "/v1/events", headers=headers) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/event-stream"
        await read_events(resp, "hello")
        created = await fleet.api("operator", "POST", "/v1/rollouts", json={
            "release": release["id"], "target": {"all": True}, "success_pct": 50,
            "failure_pct": 50,
        })  # fmt: skip
        seen: list[tuple[str, Any]] = []

        def has(name: str, check: Any) -> bool:
            return any(n == name and check(d) for n, d in seen)

        on_2 = {"version": "2.0.0", "devices": 2, "online": 2}
        while not (
            has("rollout", lambda d: d["state"] == "completed")
            and has("summary", lambda d: on_2 in d["versions"])
        ):
            seen += await read_events(resp, "summary" if has("rollout", bool) else "rollout")
        assert has("devices", lambda d: any(x["current_version"] == "2.0.0" for x in d["changed"]))
        done = next(d for n, d in seen if n == "rollout" and d["state"] == "completed")
        assert done["id"] == created["id"]
        assert done["states"] == {"succeeded": 2, "rolled_back": 1}
        assert [(f["device_id"], f["reason"]) for f in done["failures"]] == [
            ("dev-2", "health_check_failed: health check exit 1")
        ]
    views = await fleet.api("viewer", "GET", "/v1/dashboard/rollouts")
    assert [r["id"] for r in views["rollouts"]] == [created["id"]]
    one = await fleet.api("viewer", "GET", f"/v1/dashboard/rollouts/{created['id']}")
    assert one["failures"] == done["failures"]
    code, _ = await fleet.call("viewer", "GET", "/v1/dashboard/rollouts/999")
    assert code == 404


async def test_viewer_is_refused_every_rollout_action(fleet: Fleet) -> None:
    await fleet.add_device("dev-0")
    await fleet.wait_registered(1)
    release = await fleet.upload_release("2.0.0")
    created = await fleet.api("operator", "POST", "/v1/rollouts", json={
        "release": release["id"], "target": {"all": True}, "start_at": time.time() + 3600,
    })  # fmt: skip
    rid = created["id"]
    for action in ("pause", "resume", "cancel", "retry"):
        code, body = await fleet.call("viewer", "POST", f"/v1/rollouts/{rid}/{action}")
        assert code == 403, action
        assert body["error"].startswith("this needs the operator role")
    assert (await fleet.api("viewer", "GET", f"/v1/rollouts/{rid}"))["state"] == "scheduled"
    paused = await fleet.api("operator", "POST", f"/v1/rollouts/{rid}/pause")
    assert paused["state"] == "paused"


async def test_an_open_stream_does_not_hold_up_shutdown(fleet: Fleet) -> None:
    assert fleet.http is not None
    assert fleet.orch is not None
    headers = {"Authorization": f"Bearer {TOKENS['viewer']}"}
    resp = await fleet.http.get(fleet.url + "/v1/events", headers=headers)
    await read_events(resp, "hello")
    began = time.monotonic()
    await fleet.orch.stop()
    fleet.orch = None  # stopped: the fixture must not stop it again
    assert time.monotonic() - began < 5
    rest = await asyncio.wait_for(resp.content.read(), 5)
    assert b"event:" not in rest
    resp.release()


async def test_a_revoked_token_stops_its_stream(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dashboard, "HEARTBEAT_S", 0.2)
    monkeypatch.setattr(dashboard, "RECHECK_S", 0.0)
    made = await fleet.api("admin", "POST", "/v1/tokens", json={"name": "tv", "role": "viewer"})
    assert fleet.http is not None
    headers = {"Authorization": f"Bearer {made['token']}"}
    async with fleet.http.get(fleet.url + "/v1/events", headers=headers) as resp:
        await read_events(resp, "hello")
        await fleet.api("admin", "DELETE", "/v1/tokens/tv")
        rest = await asyncio.wait_for(resp.content.read(), 5)  # the server ends the stream
        assert b"event:" not in rest
    async with fleet.http.get(fleet.url + "/v1/events", headers=headers) as resp:
        assert resp.status == 401


async def test_dry_run_preview_and_a_rollouts_detail(fleet: Fleet) -> None:
    """What the rollout form and the rollout page read: the dry run (phases and the devices
    held by another rollout; nothing is created), the schedule, timeline and failures."""
    for i in range(4):
        await fleet.add_device(f"dev-{i}", healthy=i != 3)
    await fleet.wait_registered(4)
    release = await fleet.upload_release("2.0.0")
    ask = {"release": release["id"], "target": {"devices": ["dev-0", "dev-3"]}}
    first = await fleet.api("operator", "POST", "/v1/rollouts", json={**ask, "success_pct": 50})
    await wait_for_state(fleet, first["id"], "completed")

    plan = {"release": release["id"], "target": {"all": True}, "phases": [50, 100]}
    code, body = await fleet.call("viewer", "POST", "/v1/rollouts",
                                  json={**plan, "dry_run": True})  # fmt: skip
    assert code == 403, body  # a preview still needs the operator role
    held = await fleet.api("operator", "POST", "/v1/rollouts", json={
        "release": release["id"], "target": {"devices": ["dev-1"]}, "start_at": time.time() + 3600,
    })  # fmt: skip
    preview = await fleet.api("operator", "POST", "/v1/rollouts", json={**plan, "dry_run": True})
    assert preview["dry_run"] is True
    assert preview["total"] == 4
    assert [(p["phase"], p["percent"], len(p["devices"])) for p in preview["phases"]] == [
        (1, 50.0, 2), (2, 100.0, 2)]  # fmt: skip
    assert sorted(d for p in preview["phases"] for d in p["devices"]) == [
        "dev-0", "dev-1", "dev-2", "dev-3"]  # fmt: skip
    assert [(h["device"], h["reasons"], h["rollout_id"]) for h in preview["held"]] == [
        ("dev-1", ["other_rollout"], held["id"])]  # fmt: skip
    listed = await fleet.api("viewer", "GET", "/v1/rollouts")
    assert [r["id"] for r in listed["rollouts"]] == [first["id"], held["id"]]  # none created

    detail = await fleet.api("viewer", "GET", f"/v1/dashboard/rollouts/{first['id']}/detail")
    last = detail["timeline"]["points"][-1]
    assert (last["succeeded"], last["failed"], last["pending"]) == (1, 1, 0)
    (group,) = detail["failure_groups"]
    assert group["code"] == "health_check_failed"
    assert [(d["device_id"], d["message"]) for d in group["devices"]] == [
        ("dev-3", "health check exit 1")]  # fmt: skip
    view = await fleet.api("viewer", "GET", f"/v1/dashboard/rollouts/{held['id']}")
    assert view["schedule"]["starts_at"] == pytest.approx(held["spec"]["start_at"])
    code, _ = await fleet.call("viewer", "GET", "/v1/dashboard/rollouts/999/detail")
    assert code == 404


async def wait_for_state(fleet: Fleet, rollout_id: int, state: str) -> None:
    deadline = time.monotonic() + 30
    while (await fleet.api("viewer", "GET", f"/v1/rollouts/{rollout_id}"))["state"] != state:
        assert time.monotonic() < deadline, f"rollout {rollout_id} never became {state}"
        await asyncio.sleep(0.1)
