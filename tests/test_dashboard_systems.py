"""A system update (issue 18) in the dashboard, in headless Chromium: the release list
names its components, the rollout's failure list and the device page show each
component's state after a failed health check rolled them all back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from browser_helpers import LAPTOP, Shots, browser, sign_in, text
from dashboard_fleet import RELEASE_TAR, Fleet, fleet
from device_helpers import wait_async

__all__ = ["browser", "fleet"]  # fixtures
pytestmark = pytest.mark.integration


async def test_components_and_their_states_are_shown(
    browser: Any, fleet: Fleet, tmp_path: Path
) -> None:
    shots = Shots(tmp_path / "screenshots", "system")
    sections = {
        "components.app": {"handler": "directory"},
        "components.cfg": {
            "handler": "command",
            "install": ["/bin/true"],
            "rollback": ["/bin/true"],
        },
    }
    await fleet.add_device("dev-sys", healthy=False, sections=sections)
    await fleet.wait_registered(1)
    parts = []
    for name, handler, data in (("app", "directory", RELEASE_TAR), ("cfg", "command", b"x=1\n")):
        stored = await fleet.api("operator", "POST", f"/v1/payloads?handler={handler}",
                                 data=data)  # fmt: skip
        parts.append({"name": name, "handler": handler, "sha256": stored["sha256"]})
    release = await fleet.api(
        "operator",
        "POST",
        "/v1/systems",
        json={"name": "edge", "version": "2.0", "components": parts},
    )
    rollout = await fleet.api(
        "operator",
        "POST",
        "/v1/rollouts",
        json={"release": release["id"], "target": {"devices": ["dev-sys"]}, "phases": [100]},
    )

    async def rolled_back() -> bool:
        found = await fleet.api("viewer", "GET", f"/v1/rollouts/{rollout['id']}/targets")
        return [t["state"] for t in found["targets"]] == ["rolled_back"]

    await wait_async(rolled_back, 60, "dev-sys rolled back")
    page = await sign_in(browser, fleet, "viewer", LAPTOP)
    await page.click("#nav a[data-view=releases]")
    handler = "tr[data-release='edge@2.0'] [data-handler=system]"
    await page.wait_for_selector(handler)
    assert await text(page, handler) == "system: app (directory), cfg (command)"
    await page.click("#nav a[data-view=rollouts]")
    failed = "li[data-failed-device=dev-sys]"
    await page.wait_for_selector(f"{failed} [data-component=cfg]")
    assert "app rolled_back" in await text(page, failed)
    await shots.take(page, "rollouts")
    await page.click(f"{failed} a")
    row = f"tr[data-system-rollout='{rollout['id']}']"
    await page.wait_for_selector(f"{row} [data-component=app][data-component-state=rolled_back]")
    assert await page.locator(f"{row} [data-component-state=rolled_back]").count() == 2
    assert "null" not in await text(page, "#view section")
    await shots.take(page, "device")
    assert page.js_errors == []
