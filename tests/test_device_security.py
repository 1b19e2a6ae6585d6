"""Security updates on a real device agent (real Mosquitto, real HTTP payload server, the
agent in this process on an injected clock): installed outside the maintenance window,
postponed only up to the smaller of the device's and the notice's bound, and announced to
the local notification hook with the advisory the device verified."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from test_device_agent import RELEASE, FakeClock, Rig, rig, start_device, untrusted_rig

from device_client.config import ConfigError, DeviceConfig, parse_config
from device_client.jobs.security import update_blocked
from fleetpush_protocol.messages import SECURITY, Advisory
from fleetpush_sim.signing import make_notice

__all__ = ["rig", "start_device", "untrusted_rig"]

pytestmark = pytest.mark.integration


def advisory(max_postpone_s: int = 86400, *, disruptive: bool = False) -> Advisory:
    return Advisory(cves=("CVE-2026-10001",), disruptive=disruptive, severity="high",
                    max_postpone_s=max_postpone_s,
                    summary="Fixes a remote code execution in the HTTP parser.")  # fmt: skip


def window_later(now: float) -> str:
    """A daily window that opens in two hours (device-local time)."""
    start = datetime.fromtimestamp(now) + timedelta(hours=2)
    return f"{start:%H:%M}-{start + timedelta(hours=1):%H:%M}"


async def test_security_update_installs_outside_the_maintenance_window(rig: Rig) -> None:
    clock = FakeClock(time.time())
    policy = {"maintenance_windows": [window_later(clock.now)], "download_ahead": False}
    device = await rig.start_device(sections={"policy": policy}, clock=clock)
    url = rig.server.add("a.tar", RELEASE)
    # A feature update waits for the window ...
    feature = await rig.send(RELEASE, [url], notice_id="n-feature")
    deferred = await rig.reports.wait_state("deferred", feature.notice_id)
    assert deferred.error is None
    await rig.publish(rig.signer.cancel("dev-001"))
    await rig.reports.wait_state("canceled", feature.notice_id)
    # ... a security update does not: installed at once, on the same clock.
    notice = await rig.send(RELEASE, [url], notice_id="n-security", update_class=SECURITY,
                            advisory=advisory())  # fmt: skip
    await rig.reports.wait_state("succeeded", notice.notice_id)
    assert rig.reports.states(notice.notice_id) == [
        "notified", "downloading", "downloaded", "installing", "installed", "succeeded",
    ]  # fmt: skip
    assert device.current() == "slot-n-security"


@pytest.mark.parametrize(("device_bound", "notice_bound"), [(7200, 3600), (1800, 86400)])
async def test_a_postponement_hits_its_bound_and_installs(
    rig: Rig, device_bound: int, notice_bound: int
) -> None:
    clock = FakeClock(time.time())
    device = await rig.start_device(
        sections={"policy": {"hold_until": "2999-01-01T00:00:00Z", "download_ahead": True},
                  "security": {"max_postpone_s": device_bound}},
        clock=clock,
    )  # fmt: skip
    notice = await rig.send(RELEASE, [rig.server.add("a.tar", RELEASE)], update_class=SECURITY,
                            advisory=advisory(notice_bound))  # fmt: skip
    await rig.reports.wait_state("deferred", notice.notice_id)
    # Held (downloaded ahead), not installed: the user's postponement holds for now.
    assert rig.reports.states(notice.notice_id) == [
        "notified", "downloading", "downloaded", "deferred",
    ]  # fmt: skip
    assert device.current() is None
    bound = min(device_bound, notice_bound)
    clock.now = notice.issued_at + bound  # the smaller bound is reached: no more postponing
    device.agent.wake()
    await rig.reports.wait_state("succeeded", notice.notice_id)
    assert device.current() == f"slot-{notice.notice_id}"


async def test_the_notification_hook_receives_the_advisory(rig: Rig, tmp_path: Path) -> None:
    out, env = tmp_path / "hook.json", tmp_path / "hook.env"
    hook = ["/bin/sh", "-c", f'cat > "{out}"; env | grep ^FLEETPUSH_ | sort > "{env}"']
    device = await rig.start_device(
        sections={"security": {"notify_command": hook, "max_postpone_s": 600}}
    )
    notice = await rig.send(RELEASE, [rig.server.add("a.tar", RELEASE)], update_class=SECURITY,
                            advisory=advisory(3600, disruptive=True))  # fmt: skip
    await rig.reports.wait_state("succeeded", notice.notice_id)
    told = json.loads(out.read_text())
    assert told == {
        "notice_id": notice.notice_id, "rollout_id": "r-1",
        "release": {"name": "app", "version": "2.0.0"}, "update_class": "security",
        "advisory": {**advisory(3600, disruptive=True).to_body(), "cves": ["CVE-2026-10001"]},
        "disruptive": True,
        "automatic": True, "install_by": notice.issued_at + 600,
    }  # fmt: skip
    lines = env.read_text().splitlines()
    assert "FLEETPUSH_CVES=CVE-2026-10001" in lines
    assert "FLEETPUSH_DISRUPTIVE=1" in lines
    assert "FLEETPUSH_SEVERITY=high" in lines
    assert "FLEETPUSH_UPDATE_CLASS=security" in lines
    # Announced once: remembered in the state folder across restarts.
    announced = device.agent.config.device.state_dir / "announced.json"
    assert json.loads(announced.read_text()) == [notice.notice_id]


def _config(tmp: Path, security: dict[str, Any]) -> DeviceConfig:
    """A parsed configuration held (hold_until) and windowed, with ``[security]``."""
    return parse_config({
        "device": {"id": "dev-001", "model": "rpi4", "state_dir": "st"},
        "broker": {"url": "mqtt://127.0.0.1:1883", "username": "dev-001", "password": "pw"},
        "trust": {"root_keys": ["ab" * 32]},
        "policy": {"hold_until": "2033-05-18T03:33:20Z", "maintenance_windows": ["00:00-00:01"]},
        "security": security,
    }, base=tmp)  # fmt: skip


def test_opting_out_makes_a_security_update_wait_like_any_other(tmp_path: Path) -> None:
    notice = make_notice(update_class=SECURITY, advisory=advisory(60), issued_at=1_900_000_000)
    now = 1_900_000_000 + 61.0
    on = _config(tmp_path, {})
    assert on.security.automatic  # the defaults
    assert on.security.outside_windows
    assert update_blocked(on, notice, now) is None  # past its bound
    optout = update_blocked(_config(tmp_path, {"automatic": False}), notice, now)
    assert optout is not None
    assert optout.reason.startswith("held until")
    early = update_blocked(on, notice, 1_900_000_010.0)
    assert early is not None
    assert early.until == 1_900_000_060
    assert "installs by" in early.reason
    # A feature update ignores the security settings entirely.
    assert update_blocked(on, make_notice(), now) is not None
    with pytest.raises(ConfigError, match="max_postpone_s"):
        _config(tmp_path, {"max_postpone_s": 31 * 86400})
