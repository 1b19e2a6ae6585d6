"""The dashboard end to end in headless Chromium (Debian's package) driven by Playwright.

A real orchestrator, Mosquitto and device agents (tests/dashboard_fleet.py); the browser
signs in with a token, watches a rollout progress over server-sent events without a
reload, pauses and resumes it, reads a failed device's error, and a viewer on a phone-sized
screen finds no button to pause with (and the API refuses it). Screenshots go to the test's
tmp_path, and also to $DASHBOARD_SCREENSHOT_DIR when that is set.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from browser_helpers import (
    LAPTOP,
    PHONE,
    Shots,
    browser,
    fully_visible,
    no_horizontal_scroll,
    same_document,
    sign_in,
    text,
)
from dashboard_fleet import Fleet, fleet
from device_helpers import wait_async

from fleetpush_common.clock import ManualClock
from fleetpush_common.tasks import cancel_and_wait
from fleetpush_protocol.topics import Topics
from orchestrator.broker import MosquittoBroker

__all__ = ["browser", "fleet"]  # fixtures
pytestmark = pytest.mark.integration


class OrchestratorClock:
    """The orchestrator's manual clock: stands still until ``run()``, then moves a second
    every 0.1 s with an engine pass each, until the test ends."""

    def __init__(self, fleet: Fleet, clock: ManualClock) -> None:
        self.fleet = fleet
        self.manual = clock
        self._task: asyncio.Task[None] | None = None

    def run(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        assert self.fleet.orch is not None
        while True:
            self.manual.advance(1.0)
            self.fleet.orch.engine.wake()
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        await cancel_and_wait(self._task)


@pytest.fixture
async def clocked_fleet(
    tmp_path: Path, broker: MosquittoBroker, topics: Topics
) -> AsyncIterator[tuple[Fleet, OrchestratorClock]]:
    """A fleet whose orchestrator runs on a manual clock: soaks end when the test says."""
    manual = ManualClock(time.time())
    f = Fleet(tmp_path, broker, topics, clock=manual)
    clock = OrchestratorClock(f, manual)
    await f.start()
    try:
        yield f, clock
    finally:
        await clock.stop()
        await f.stop()


async def start_fleet(fleet: Fleet, n: int, failing: set[int]) -> dict[str, Any]:
    for i in range(n):
        await fleet.add_device(f"dev-{i:02d}", healthy=i not in failing)
    await fleet.wait_registered(n)
    return await fleet.upload_release("2.0.0")


async def test_operator_watches_pauses_resumes_and_reads_a_failure(
    browser: Any, clocked_fleet: tuple[Fleet, OrchestratorClock], tmp_path: Path
) -> None:
    fleet, clock = clocked_fleet
    shots = Shots(tmp_path / "screenshots", "operator")
    release = await start_fleet(fleet, 6, failing={3})
    page = await sign_in(browser, fleet, "operator", LAPTOP)
    await page.click("#nav a[data-view=rollouts]")
    await page.wait_for_selector("text=No rollouts yet")

    # The rollout appears and progresses on the open page, carried by the event stream.
    created = await fleet.api("operator", "POST", "/v1/rollouts", json={
        "release": release["id"], "target": {"groups": ["lab"]}, "phases": [50, 100],
        "success_pct": 50, "failure_pct": 50, "soak_s": 3,
    })  # fmt: skip
    rid = created["id"]
    card = f"[data-rollout-id='{rid}']"
    phase1_devices = created["phases"][0]["devices"]
    await page.wait_for_selector(card)
    phase1 = f"{card} tr[data-phase='1']"
    await page.wait_for_function(
        """([sel, n]) => {
            const row = document.querySelector(sel);
            if (!row) return false;
            const get = (k) => Number(row.querySelector(`[data-phase-count=${k}]`).textContent);
            return get('succeeded') + get('failed') === n;
        }""",
        arg=[phase1, phase1_devices],
    )
    succeeded_after_phase1 = int(await text(page, f"{card} [data-count=succeeded]"))
    # The orchestrator's clock stands still: the 3 s soak is not over, whatever the load.
    assert succeeded_after_phase1 < 5, "phase 2 must not have started during the soak"
    await shots.take(page, "rollout-phase1-soaking")

    # Pause during the soak: the page and the API agree, and phase 2 stays untouched.
    await page.click(f"{card} [data-action=pause]")
    await page.wait_for_selector(f"{card}[data-state=paused]")
    assert (await fleet.api("viewer", "GET", f"/v1/rollouts/{rid}"))["state"] == "paused"
    assert await page.locator(f"{card} [data-action=resume]").is_visible()
    assert await page.locator(f"{card} [data-action=pause]").count() == 0
    await shots.take(page, "rollout-paused")
    await page.click("#nav a[data-view=overview]")
    await page.wait_for_selector("[data-stat=active]:has-text('1')")
    await page.wait_for_selector("a.mini:has-text('paused')")
    # The chart of versions in the field follows the rollout live, too.
    await page.wait_for_selector("svg.chart g[data-label='2.0.0']")
    await shots.take(page, "overview-paused")
    await page.click("#nav a[data-view=rollouts]")
    await page.wait_for_selector(f"{card}[data-state=paused]")
    # Past the soak, then a whole engine pass: a running rollout would have opened phase 2.
    clock.manual.advance(3.5)
    assert fleet.orch is not None
    await fleet.orch.engine.tick()
    paused = await fleet.api("viewer", "GET", f"/v1/rollouts/{rid}")
    assert paused["state"] == "paused"
    assert paused["phases"][1]["pending"] == paused["phases"][1]["devices"]
    assert await text(page, f"{card} tr[data-phase='2'] [data-phase-count=succeeded]") == "0"

    # Resume: the page follows the rollout to completion, still without a reload (time
    # runs from here on, so the resumed rollout's soak ends).
    await page.click(f"{card} [data-action=resume]")
    clock.run()
    await page.wait_for_selector(f"{card}[data-state=completed]", timeout=30_000)
    await page.wait_for_function(
        "sel => document.querySelector(sel)?.textContent === '5'",
        arg=f"{card} [data-count=succeeded]",
    )
    assert await text(page, f"{card} [data-count=failed]") == "1"
    assert await same_document(page), "the page was reloaded"
    assert int(await text(page, f"{card} [data-count=succeeded]")) > succeeded_after_phase1
    final = await fleet.api("viewer", "GET", f"/v1/rollouts/{rid}")
    assert final["state"] == "completed"
    assert final["states"] == {"succeeded": 5, "rolled_back": 1}

    # The failure and its reason are on the card; the device page shows its error.
    failure = page.locator(f"{card} [data-failed-device='dev-03']")
    assert "health_check_failed" in await failure.inner_text()
    await shots.take(page, "rollout-completed")

    # Retry the failed device: it gets a new notice, fails its health check again, and
    # the rollout completes again; the device's history grows by a second attempt.
    await page.click(f"{card} [data-action=retry]")
    await page.wait_for_selector("#flash:has-text('retry done')")

    async def retried() -> bool:
        history = await fleet.api("viewer", "GET", "/v1/devices/dev-03")
        return [r["state"] for r in history["reports"]].count("rolled_back") == 2

    await wait_async(retried, 30, "a second rolled_back report from dev-03")
    await page.wait_for_function(
        "sel => document.querySelector(sel)?.dataset.state === 'completed' && "
        "document.querySelector(sel + ' [data-count=failed]')?.textContent === '1'",
        arg=card,
    )

    # Cancel a scheduled rollout (the page asks first).
    later = await fleet.api("operator", "POST", "/v1/rollouts", json={
        "release": release["id"], "target": {"devices": ["dev-03"]},
        "start_at": time.time() + 3600,
    })  # fmt: skip
    later_card = f"[data-rollout-id='{later['id']}']"
    await page.wait_for_selector(f"{later_card}[data-state=scheduled]")
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await page.click(f"{later_card} [data-action=cancel]")
    await page.wait_for_selector(f"{later_card}[data-state=canceled]")
    assert (await fleet.api("viewer", "GET", f"/v1/rollouts/{later['id']}"))["state"] == "canceled"
    await failure.locator("a").click()
    await page.wait_for_selector(".card.alert[data-last-error=health_check_failed]")
    alert = await text(page, ".card.alert")
    assert "health_check_failed: health check exit 1" in alert
    history = await text(page, "table.history")
    assert "rolled_back" in history
    assert "installing" in history
    await shots.take(page, "device-error")

    # The devices table: search and filters.
    await page.click("#nav a[data-view=devices]")
    await page.wait_for_selector("table.devices tr[data-device-id='dev-05']")
    assert await page.locator("table.devices tbody tr").count() == 6
    await page.fill("[data-filter=q]", "dev-0")
    await page.select_option("[data-filter=version]", "2.0.0")
    await page.wait_for_function(
        "() => document.querySelectorAll('table.devices tbody tr').length === 5"
    )
    assert await page.locator("table.devices tr[data-device-id='dev-03']").count() == 0
    await page.fill("[data-filter=q]", "dev-03")
    await page.select_option("[data-filter=version]", "")
    await page.wait_for_function(
        "() => document.querySelectorAll('table.devices tbody tr').length === 1"
    )
    await shots.take(page, "devices-search")

    # Releases and the overview with its chart of versions in the field.
    await page.click("#nav a[data-view=releases]")
    await page.wait_for_selector("text=app")
    await page.click("#nav a[data-view=overview]")
    await page.wait_for_selector("[data-stat=online]:has-text('6')")
    assert await page.locator("svg.chart g[data-label='2.0.0']").count() == 1
    assert "5" in await page.locator("svg.chart g[data-label='2.0.0']").text_content()
    assert await no_horizontal_scroll(page)
    await shots.take(page, "overview")
    assert await same_document(page)
    assert page.js_errors == []


async def test_viewer_on_a_phone_can_look_but_not_pause(
    browser: Any, fleet: Fleet, tmp_path: Path
) -> None:
    shots = Shots(tmp_path / "screenshots", "phone-viewer")
    release = await start_fleet(fleet, 3, failing=set())
    created = await fleet.api("operator", "POST", "/v1/rollouts", json={
        "release": release["id"], "target": {"all": True}, "phases": [34, 100], "soak_s": 600,
        "continuous": True,
    })  # fmt: skip
    rid = created["id"]
    card = f"[data-rollout-id='{rid}']"
    page = await sign_in(browser, fleet, "viewer", PHONE)
    await page.click("#nav a[data-view=rollouts]")
    await page.wait_for_selector(f"{card}[data-state=running]")
    await page.wait_for_function(
        "([sel, n]) => document.querySelector(sel)?.textContent === String(n)",
        arg=[f"{card} [data-count=succeeded]", created["phases"][0]["devices"]],
    )
    assert await page.locator(f"{card} button").count() == 0
    assert await page.locator(f"{card} .readonly").is_visible()
    assert await page.locator(f"{card} header .badge.continuous").is_visible()
    assert await no_horizontal_scroll(page)
    # Every column of the phases table is on the screen, the Failed one included.
    assert await fully_visible(page, f"{card} table.phases th")
    assert await fully_visible(page, f"{card} table.phases [data-phase-count=failed]")
    await shots.take(page, "rollout", full_page=True)

    # The API refuses a viewer whatever the page shows: with the page's own token, too.
    status = await page.evaluate(
        """async (id) => (await fetch(`/v1/rollouts/${id}/pause`, {method: 'POST',
            headers: {Authorization: `Bearer ${sessionStorage.getItem('fleetpush.token')}`}}))
            .status""",
        rid,
    )
    assert status == 403
    for action in ("pause", "resume", "cancel", "retry"):
        code, body = await fleet.call("viewer", "POST", f"/v1/rollouts/{rid}/{action}")
        assert code == 403, (action, body)
        assert "operator role" in body["error"]
    assert (await fleet.api("viewer", "GET", f"/v1/rollouts/{rid}"))["state"] == "running"

    # An operator pauses; the viewer's page follows, still with no button.
    await fleet.api("operator", "POST", f"/v1/rollouts/{rid}/pause",
                    json={"reason": "checking the canaries"})  # fmt: skip
    await page.wait_for_selector(f"{card}[data-state=paused]")
    assert await page.locator(f"{card} button").count() == 0

    # The overview says why the rollout is paused.
    await page.click("#nav a[data-view=overview]")
    await page.wait_for_selector(f"[data-paused-reason='{rid}']:has-text('checking the canaries')")
    assert await no_horizontal_scroll(page)

    # A device's reports: the Error column is on the screen, not cut off at the right.
    await page.evaluate("location.hash = '#/devices/dev-00'")
    await page.wait_for_selector("table.history tbody tr")
    assert await fully_visible(page, "table.history th")
    assert await fully_visible(page, "table.history td.error-cell")
    assert "null" not in await text(page, "#view section")
    await shots.take(page, "device", full_page=True)

    # The phone layout: every view fits the screen's width.
    for view in ("overview", "devices", "releases"):
        await page.click(f"#nav a[data-view={view}]")
        # Marked active in the same step that renders the view: the view on screen is this
        # one, not the previous (scrollWidth then lays the page out before answering).
        await page.wait_for_selector(f"#nav a.active[data-view={view}]")
        await page.wait_for_selector("#view section")
        assert await no_horizontal_scroll(page), f"{view} scrolls sideways on a phone"
    await page.click("#nav a[data-view=overview]")
    await page.wait_for_selector("[data-stat=online]:has-text('3')")
    await shots.take(page, "overview", full_page=True)
    await page.click("#signout")
    await page.wait_for_selector("#signin-form")
    assert await page.evaluate("sessionStorage.getItem('fleetpush.token')") is None
    assert await same_document(page)
    assert page.js_errors == []


async def test_a_device_whose_claims_differ_from_the_registry_is_flagged(
    browser: Any, fleet: Fleet, tmp_path: Path
) -> None:
    shots = Shots(tmp_path / "screenshots", "claims")
    await fleet.add_device("dev-00")
    # Its configuration was edited to list a group it was never provisioned in.
    await fleet.add_device("dev-liar", claims=("lab", "prod"))
    await fleet.wait_registered(2)
    page = await sign_in(browser, fleet, "viewer", LAPTOP)
    await page.click("#nav a[data-view=devices]")
    row = "tr[data-device-id='dev-liar']"
    await page.wait_for_selector(f"{row} [data-claims-mismatch]")
    assert await page.locator("tr[data-device-id='dev-00'] [data-claims-mismatch]").count() == 0
    cells = await text(page, row)
    assert "lab" in cells
    assert "prod" not in cells  # shown as a claim only, never as a group
    await shots.take(page, "devices")
    await page.click(f"{row} a")
    alert = "div.card[data-claims-mismatch='dev-liar']"
    await page.wait_for_selector(alert)
    assert "lab, prod" in await text(page, alert)
    assert "null" not in await text(page, "#view section")
    await shots.take(page, "device")
    assert page.js_errors == []
