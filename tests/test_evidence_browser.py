"""A failing health check's output tail reaches the dashboard (issue 18), in headless
Chromium against a real orchestrator, Mosquitto and device agent (tests/dashboard_fleet.py).

The device's output is hostile on purpose: markup that would run script if it were ever
parsed as HTML, ANSI colours and a NUL. The device page and the rollout's failure list show
it as text; nothing of it runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from browser_helpers import LAPTOP, Shots, browser, sign_in, text
from dashboard_fleet import Fleet, fleet
from device_helpers import wait_async

__all__ = ["browser", "fleet"]  # fixtures
pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

HOSTILE_CHECK = [
    "/bin/sh", "-c",
    "printf '\\033[31mself-test FAILED\\033[0m <script>window.pwned=1</script>\\n'; "
    "printf '<img src=x onerror=\"window.pwned=2\">\\000 port 8080 closed\\n' >&2; exit 1",
]  # fmt: skip


async def test_a_failing_health_checks_output_reaches_the_dashboard_as_text(
    browser: Any, fleet: Fleet, tmp_path: Path
) -> None:
    shots = Shots(tmp_path / "screenshots", "evidence")
    await fleet.add_device(
        "dev-00", sections={"health": {"command": HOSTILE_CHECK, "timeout": "10s"}}
    )
    await fleet.wait_registered(1)
    release = await fleet.upload_release("2.0.0")
    rollout = await fleet.api("operator", "POST", "/v1/rollouts", json={
        "release": release["id"], "target": {"devices": ["dev-00"]}})  # fmt: skip

    async def reported() -> bool:
        logs = await fleet.api("viewer", "GET", "/v1/devices/dev-00/logs")
        return bool(logs["logs"])

    await wait_async(reported, 90, "dev-00's failure output stored")

    page = await sign_in(browser, fleet, "viewer", LAPTOP)
    await page.evaluate("location.hash = '#/devices/dev-00'")
    card = "[data-last-output]"
    await page.wait_for_selector(f"{card} pre[data-stream=stderr]")
    stdout = await page.locator(f"{card} pre[data-stream=stdout]").text_content()
    stderr = await page.locator(f"{card} pre[data-stream=stderr]").text_content()
    assert stdout == "self-test FAILED <script>window.pwned=1</script>\n"
    assert stderr == '<img src=x onerror="window.pwned=2"> port 8080 closed\n'
    header = await text(page, card)
    assert "health_check" in header
    assert "release app@2.0.0" in header
    assert "rolled_back" in header
    await shots.take(page, "device-output")

    # The rollout's failure list shows it under the device's error too.
    await page.evaluate(f"location.hash = '#/rollouts/{rollout['id']}'")
    tail = "[data-output-of='dev-00'] pre[data-stream=stdout]"
    await page.wait_for_selector(tail)
    assert await page.locator(tail).text_content() == stdout
    await shots.take(page, "rollout-failures", full_page=True)

    # Nothing of it was parsed as markup, nor ran.
    assert await page.evaluate("window.pwned === undefined")
    assert (
        await page.evaluate(
            "document.querySelectorAll('.output-tail script, .output-tail img').length"
        )
        == 0
    )
    assert page.js_errors == []
