"""Acting from the dashboard, end to end in headless Chromium against a real fleet.

An operator uploads a release from the page (watching its progress), gives a device an
extra group and sees the dry-run preview follow it, creates a rollout from the form after
previewing its phases, and watches it to completion on the rollout's page: its settings,
the soak countdown, the timeline chart, and the failures grouped by error code with the
device's output. An admin creates and revokes a token from the page.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from browser_helpers import (
    LAPTOP,
    PHONE,
    Shots,
    browser,
    no_horizontal_scroll,
    sign_in,
    text,
)
from dashboard_fleet import Fleet, fleet
from device_helpers import make_tar

__all__ = ["browser", "fleet"]  # fixtures
pytestmark = pytest.mark.integration

# Big enough that the browser reports upload progress more than once; random, so no
# compression on the way can shrink it.
BIG_TAR = make_tar({"bin/app": b"#!/bin/sh\necho v3\n", "data.bin": os.urandom(3 << 20)})


async def preview(page: Any) -> None:
    await page.evaluate("document.querySelector('[data-preview-box]').replaceChildren()")
    await page.click("[data-action=preview]")
    await page.wait_for_selector("[data-preview-box] [data-preview], [data-preview-box] .error")


async def test_operator_uploads_edits_groups_previews_creates_and_watches(
    browser: Any, fleet: Fleet, tmp_path: Path
) -> None:
    shots = Shots(tmp_path / "screenshots", "actions")
    for i in range(4):
        await fleet.add_device(f"dev-{i:02d}", healthy=i != 3)
    await fleet.wait_registered(4)
    page = await sign_in(browser, fleet, "operator", LAPTOP)
    assert not await page.locator("#nav a[data-view=tokens]").is_visible()  # admin only

    # Upload a release from the page, with its progress.
    await page.click("#nav a[data-view=releases]")
    form = "form[data-form=upload]"
    await page.set_input_files(f"{form} [data-upload=file]", files=[
        {"name": "app-3.0.0.tar", "mimeType": "application/x-tar", "buffer": BIG_TAR}])  # fmt: skip
    await page.fill(f"{form} [name=name]", "app")
    await page.fill(f"{form} [name=version]", "3.0.0")
    await page.fill(f"{form} [name=models]", "rpi4")
    await page.click(f"{form} button[type=submit]")
    await page.wait_for_selector(f"{form} [data-upload=status]:has-text('uploaded app@3.0.0')")
    assert await page.get_attribute(f"{form} [data-upload=progress]", "value") == "100"
    events = int(await page.get_attribute(f"{form} [data-upload=progress]", "data-events") or 0)
    assert events >= 1, "no upload progress event reached the page"
    await page.wait_for_selector("table.releases tr[data-release='app@3.0.0']")
    releases = (await fleet.api("viewer", "GET", "/v1/releases"))["releases"]
    (release,) = [r for r in releases if r["version"] == "3.0.0"]
    assert release["sha256"] == hashlib.sha256(BIG_TAR).hexdigest()
    assert release["size"] == len(BIG_TAR)
    assert release["models"] == ["rpi4"]
    await shots.take(page, "release-uploaded")

    # Give dev-01 the group "canary" (the provisioned "lab" stays) and a tag.
    await page.click("#nav a[data-view=devices]")
    await page.click("tr[data-device-id='dev-01'] a")
    await page.fill("[data-edit=groups]", "canary")
    await page.fill("[data-edit=tags]", "site=berlin")
    await page.click("[data-action=save-labels]")
    await page.wait_for_selector("[data-groups]:has-text('canary, lab')")
    assert await text(page, "[data-registry-groups]") == "lab"
    dev01 = await fleet.api("viewer", "GET", "/v1/devices/dev-01")
    assert dev01["groups"] == ["canary", "lab"]
    assert dev01["operator_groups"] == ["canary"]
    assert dev01["tags"] == {"site": "berlin"}

    # The preview of a rollout to "canary" takes exactly dev-01: targeting followed.
    await page.click("#nav a[data-view=rollouts]")
    await page.click("[data-action=new-rollout]")
    rform = "form[data-form=rollout]"
    await page.wait_for_selector(rform)
    await page.select_option(f"{rform} [name=release]", label="app@3.0.0")
    await page.fill(f"{rform} [name=groups]", "canary")
    await page.fill(f"{rform} [name=phases]", "100")
    await preview(page)
    assert await page.get_attribute("[data-preview-total]", "data-preview-total") == "1"
    assert await text(page, "tr[data-preview-phase='1'] td.list-cell") == "dev-01"
    assert await page.locator("[data-action=start]").is_enabled()
    # A change to the form withdraws the preview until the next one.
    await page.fill(f"{rform} [name=groups]", "lab")
    assert not await page.locator("[data-action=start]").is_enabled()

    # The real one: every "lab" device in two phases, a soak between them.
    await page.fill(f"{rform} [name=phases]", "50, 100")
    await page.fill(f"{rform} [name=success_pct]", "50")
    await page.fill(f"{rform} [name=soak_s]", "4")
    await page.fill(f"{rform} [name=failure_pct]", "60")
    await page.fill(f"{rform} [name=min_attempts]", "1")
    await preview(page)
    assert await page.get_attribute("[data-preview-total]", "data-preview-total") == "4"
    counts = await page.locator("[data-preview-phase] [data-preview-count]").all_inner_texts()
    assert counts == ["2", "2"]
    shown = set()
    for cell in await page.locator("[data-preview-phase] td.list-cell").all_inner_texts():
        shown |= set(cell.split(", "))
    assert shown == {"dev-00", "dev-01", "dev-02", "dev-03"}
    assert await page.locator("[data-held]").count() == 0
    await shots.take(page, "rollout-preview", full_page=True)
    await page.click("[data-action=start]")
    await page.wait_for_function("() => /^#\\/rollouts\\/\\d+$/.test(location.hash)")
    rid = int((await page.evaluate("location.hash")).rsplit("/", 1)[1])
    created = await fleet.api("viewer", "GET", f"/v1/rollouts/{rid}")
    assert created["target"]["groups"] == ["lab"]
    assert created["spec"]["phases"] == [50.0, 100.0]
    assert created["devices"] == 4

    # Its page: the settings, then the soak countdown before phase 2 opens.
    card = f"[data-rollout-id='{rid}']"
    settings = await text(page, f"{card} [data-settings]")
    assert "groups lab" in settings
    assert "50% → 100%" in settings
    assert "50% succeeded, held 4 s" in settings
    assert "pause above 60% failed, once 1 finished" in settings
    await page.wait_for_selector(f"{card} [data-schedule=soak]:has-text('phase 2 opens in')")
    await shots.take(page, "rollout-soaking", full_page=True)

    # Watch it to completion: 3 succeeded, dev-03 rolled back.
    await page.wait_for_selector(f"{card}[data-state=completed]", timeout=45_000)
    await page.wait_for_function(
        "sel => document.querySelector(sel)?.textContent === '3'",
        arg=f"{card} [data-count=succeeded]",
    )
    group = "[data-error-code=health_check_failed]"
    await page.wait_for_selector(f"{group} [data-failed-device='dev-03']")
    assert "health check exit 1" in await text(page, f"{group} pre.output")
    assert "1 device" in await text(page, f"{group} summary")
    # The timeline: its last point has every device finished.
    await page.wait_for_selector("svg.timeline polygon[data-series=succeeded]")
    detail = await fleet.api("viewer", "GET", f"/v1/dashboard/rollouts/{rid}/detail")
    last = detail["timeline"]["points"][-1]
    assert (last["succeeded"], last["failed"], last["pending"], last["in_flight"]) == (3, 1, 0, 0)
    assert detail["failure_groups"][0]["code"] == "health_check_failed"
    await shots.take(page, "rollout-completed", full_page=True)
    # On a phone the rollout's page fits the screen's width, its chart too.
    await page.set_viewport_size(PHONE)
    assert await no_horizontal_scroll(page)
    await shots.take(page, "phone-rollout", full_page=True)
    await page.set_viewport_size(LAPTOP)

    # Take "canary" away again: the preview for "canary" now finds no device.
    await page.evaluate("location.hash = '#/devices/dev-01'")
    await page.fill("[data-edit=groups]", "")
    await page.click("[data-action=save-labels]")
    await page.wait_for_selector("[data-groups]:text-is('lab')")
    await page.evaluate("location.hash = '#/rollouts/new'")
    await page.wait_for_selector(rform)
    await page.fill(f"{rform} [name=groups]", "canary")
    await preview(page)
    assert "matches no registered device" in await text(page, "[data-preview-box] .error")
    assert not await page.locator("[data-action=start]").is_enabled()
    await page.set_viewport_size(PHONE)
    assert await no_horizontal_scroll(page)
    await shots.take(page, "phone-new-rollout", full_page=True)
    assert page.js_errors == []


async def test_admin_creates_and_revokes_a_token(
    browser: Any, fleet: Fleet, tmp_path: Path
) -> None:
    shots = Shots(tmp_path / "screenshots", "tokens")
    page = await sign_in(browser, fleet, "admin", LAPTOP)
    await page.click("#nav a[data-view=tokens]")
    form = "form[data-form=token]"
    await page.fill(f"{form} [name=name]", "ci-bot")
    await page.select_option(f"{form} [name=role]", "viewer")
    await page.click(f"{form} button[type=submit]")
    await page.wait_for_selector("[data-new-token='ci-bot']")
    secret = await page.input_value("[data-token-value]")
    await page.wait_for_selector("tr[data-token='ci-bot'] [data-action=revoke]")
    await shots.take(page, "created")

    async def me(token: str) -> int:
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                fleet.url + "/v1/dashboard/me", headers={"Authorization": f"Bearer {token}"}
            ) as resp,
        ):
            return resp.status

    assert await me(secret) == 200
    page.once("dialog", lambda dialog: dialog.accept())
    await page.click("tr[data-token='ci-bot'] [data-action=revoke]")
    await page.wait_for_selector("tr[data-token='ci-bot'] .badge:has-text('revoked')")
    assert await me(secret) == 401
    tokens = (await fleet.api("admin", "GET", "/v1/tokens"))["tokens"]
    assert [t["revoked"] for t in tokens if t["name"] == "ci-bot"] == [True]
    assert page.js_errors == []
