"""A hold on a device reaches the operator (issue 18): a real orchestrator, broker and
device agent whose gate hook holds the update; the hold's reason and end are stored with the
``deferred`` report and shown by the API, ``fleetpush devices show`` and the dashboard's
device page (its script renders the API's fields). A release's caps on holds (urgent, or
a shorter hold) reach the device signed in its notices."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from orch_helpers import PAYLOAD, TOKENS, Setup, rollout_in, setup, start_devices, wait_until

from orchestrator.cli.main import main

__all__ = ["setup"]

pytestmark = pytest.mark.integration

DEVICES_JS = Path(__file__).resolve().parents[1] / "orchestrator/web/static/views/devices.js"


async def test_a_devices_hold_shows_in_the_api_the_cli_and_the_dashboard(setup: Setup) -> None:
    s = setup
    gate = ["/bin/sh", "-c", "cat > /dev/null; echo 'hold 2h camera recording'"]
    await start_devices(s, "hd-1", sections={"holds": {"gate_command": gate}})
    release = await s.api.upload("app", "2.0")
    await s.api.rollout(release["id"], target={"devices": ["hd-1"]})

    async def held() -> dict[str, Any] | None:
        d = await s.api.call("GET", "/v1/devices/hd-1")
        latest = d["reports"][0] if d["reports"] else None
        return latest if latest and latest["state"] == "deferred" else None

    report = await wait_until(held, within=60, what="a deferred report")
    assert report["hold_reason"] == "held by gate: camera recording"
    assert report["hold_until"] >= report["reported_at"] + 7200 - 1
    argv = ["devices", "show", "hd-1", "--server", s.api.base, "--token", TOKENS["viewer"]]
    shown = await asyncio.to_thread(CliRunner(env={"COLUMNS": "250"}).invoke, main, argv)
    assert shown.exit_code == 0, shown.output
    assert "held on the device" in shown.output
    assert "held by gate: camera recording" in shown.output
    page = DEVICES_JS.read_text()
    assert '"data-hold"' in page
    assert "held.hold_reason" in page


async def _upload(s: Setup, version: str, *params: tuple[str, str], expect: int = 201) -> Any:
    return await s.api.call("POST", "/v1/releases", data=PAYLOAD, expect=expect,
                            params=[("name", "app"), ("version", version), *params])  # fmt: skip


async def test_a_releases_hold_caps_reach_the_device(setup: Setup) -> None:
    s = setup
    gate = ["/bin/sh", "-c", "cat > /dev/null; echo 'hold 2h camera recording'"]
    await start_devices(s, "hd-2", sections={"holds": {"gate_command": gate}})
    # Bad caps are refused before anything is stored.
    for bad in ([("urgent", "true"), ("max_hold", "1h")], [("max_hold", "forever")],
                [("max_hold_total", "400d")], [("urgent", "yes")]):  # fmt: skip
        await _upload(s, "9.9", *bad, expect=400)
    # An urgent release: the gate is not asked, nothing holds it.
    urgent = await _upload(s, "2.0", ("urgent", "true"))
    assert urgent["holds"] == {"max_each_s": 0, "max_total_s": 0}
    r = await s.api.rollout(urgent["id"], target={"devices": ["hd-2"]})
    await rollout_in(s, r["id"], "completed")
    history = (await s.api.call("GET", "/v1/devices/hd-2"))["reports"]
    assert "deferred" not in [h["state"] for h in history]
    # A release allowing 10 minutes per hold: the gate's 2 h is cut to them.
    short = await _upload(s, "3.0", ("max_hold", "10m"))
    assert short["holds"] == {"max_each_s": 600, "max_total_s": 365 * 86400}
    await s.api.rollout(short["id"], target={"devices": ["hd-2"]})

    async def held() -> dict[str, Any] | None:
        d = await s.api.call("GET", "/v1/devices/hd-2")
        latest = d["reports"][0]
        return latest if latest["state"] == "deferred" else None

    report = await wait_until(held, within=60, what="a deferred report")
    assert report["reported_at"] + 590 <= report["hold_until"] <= report["reported_at"] + 600


def test_the_cli_checks_hold_caps_before_uploading(tmp_path: Path) -> None:
    payload = tmp_path / "app.tar"
    payload.write_bytes(PAYLOAD)
    base = ["release", "upload", str(payload), "--name", "app", "--version", "2.0",
            "--server", "http://127.0.0.1:9", "--token", "unused"]  # fmt: skip
    for bad, why in ((["--urgent", "--max-hold", "1h"], "urgent: allows no hold"),
                     (["--max-hold-total", "400d"], "max_hold_total: 0s..365d")):  # fmt: skip
        result = CliRunner().invoke(main, [*base, *bad])
        assert result.exit_code == 2, result.output
        assert why in result.output
