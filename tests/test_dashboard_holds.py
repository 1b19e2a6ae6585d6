"""A device's hold (issue 18) on the dashboard, in headless Chromium: a real agent whose
gate hook holds the update; its device page shows who holds it, why and until when."""

from __future__ import annotations

from typing import Any

import pytest
from browser_helpers import LAPTOP, browser, sign_in, text
from dashboard_fleet import Fleet, fleet
from device_helpers import wait_async

__all__ = ["browser", "fleet"]  # fixtures
pytestmark = pytest.mark.integration


async def test_the_device_page_shows_the_hold(browser: Any, fleet: Fleet) -> None:
    gate = ["/bin/sh", "-c", "cat > /dev/null; echo 'hold 2h camera recording'"]
    await fleet.add_device("dev-held", sections={"holds": {"gate_command": gate}})
    await fleet.wait_registered(1)
    release = await fleet.upload_release()
    await fleet.api("operator", "POST", "/v1/rollouts",
                    json={"release": release["id"], "target": {"devices": ["dev-held"]},
                          "phases": [100]})  # fmt: skip

    async def held() -> bool:
        d = await fleet.api("viewer", "GET", "/v1/devices/dev-held")
        return bool(d["reports"]) and d["reports"][0]["hold_until"] is not None

    await wait_async(held, 60, "dev-held held")
    page = await sign_in(browser, fleet, "viewer", LAPTOP)
    await page.evaluate("location.hash = '#/devices/dev-held'")
    card = "#view .card[data-hold]"
    await page.wait_for_selector(card)
    shown = await text(page, card)
    assert shown.startswith("Held on the device: held by gate: camera recording")
    assert " until " in shown
    assert "null" not in await text(page, "#view section")
    assert page.js_errors == []
