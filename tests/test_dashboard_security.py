"""The dashboard's four-eyes buttons, security releases and the "missing a security update"
filter, end to end in headless Chromium against a real orchestrator and real agents."""

from __future__ import annotations

import json
from typing import Any

import pytest
from browser_helpers import LAPTOP, browser, sign_in
from dashboard_fleet import RELEASE_TAR, Fleet, fleet

__all__ = ["browser", "fleet"]  # fixtures
pytestmark = pytest.mark.integration

ADVISORY = {"cves": ["CVE-2026-30001"], "severity": "high", "summary": "Fixes a RCE."}


async def test_approve_and_reject_buttons_and_the_missing_security_filter(
    browser: Any, fleet: Fleet
) -> None:
    await fleet.add_device("dev-00")
    await fleet.wait_registered(1)
    query = "?name=app&version=2.1&model=rpi4&security=true&advisory=" + json.dumps(ADVISORY)
    rel = await fleet.api("operator", "POST", "/v1/releases" + query.replace("#", "%23"),
                          data=RELEASE_TAR)  # fmt: skip
    body = {"release": rel["id"], "target": {"devices": ["dev-00"]}, "require_approval": True}
    first = await fleet.api("operator", "POST", "/v1/rollouts", json=body)

    # The creator sees no approve/reject buttons, only that it waits for someone else.
    own = await sign_in(browser, fleet, "operator", LAPTOP)
    await own.goto(f"{fleet.url}/ui/#/rollouts/{first['id']}")
    await own.wait_for_selector("[data-approval=own]")
    assert await own.locator("[data-action=approve]").count() == 0
    # The device misses the security release: filter and badge.
    await own.click("#nav a[data-view=devices]")
    await own.select_option("[data-filter=security]", "missing")
    await own.wait_for_selector("tr[data-device-id='dev-00'] [data-missing-security]")
    await own.click("#nav a[data-view=releases]")
    await own.wait_for_selector("tr[data-release='app@2.1'] [data-security=high]")

    # An admin rejects it (with a reason), then approves a second one: it runs to the end.
    admin = await sign_in(browser, fleet, "admin", LAPTOP)
    admin.once("dialog", lambda d: d.accept("not before the freeze ends"))
    await admin.goto(f"{fleet.url}/ui/#/rollouts/{first['id']}")
    await admin.click("[data-action=reject]")
    await admin.wait_for_selector(f"[data-rollout-id='{first['id']}'][data-state=rejected]")
    rejected = await fleet.api("viewer", "GET", f"/v1/rollouts/{first['id']}")
    assert rejected["reason"] == "not before the freeze ends"
    assert rejected["approval"]["decided_by"] == "admin-user"
    second = await fleet.api("operator", "POST", "/v1/rollouts", json=body)
    await admin.goto(f"{fleet.url}/ui/#/rollouts/{second['id']}")
    await admin.click("[data-action=approve]")
    await admin.wait_for_selector(f"[data-rollout-id='{second['id']}'][data-state=completed]",
                                  timeout=60_000)  # fmt: skip
    status = await fleet.api("viewer", "GET", f"/v1/rollouts/{second['id']}")
    assert status["approval"]["state"] == "approved"
    missing = await fleet.api("viewer", "GET", "/v1/security/missing")
    assert missing["releases"][0]["missing"] == []
