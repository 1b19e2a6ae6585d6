"""Review attacks on whole-system updates (issue 18) and the replica race fixes, by an
engineer who did not write them: each test failed before its fix (or is a strict xfail
listed under "Known limits" in docs/security.md)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from device_helpers import wait_for
from orch_helpers import Setup, setup, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
__all__ = ["setup"]  # fixtures


def _command(log: Path, rollback: list[str] | None = None) -> dict[str, Any]:
    def logged(what: str) -> list[str]:
        return ["/bin/sh", "-c", f'echo "{what} $FLEETPUSH_COMPONENT" >> "{log}"']

    return {"handler": "command", "install": logged("install"),
            "rollback": rollback or logged("rollback"), "step_timeout": "60s"}  # fmt: skip


async def _system(s: Setup, version: str, names: tuple[str, ...]) -> dict[str, Any]:
    components = []
    for n in names:
        stored = await s.api.call("POST", "/v1/payloads", data=f"{n} {version}".encode(),
                                  params={"handler": "command"}, expect=201)  # fmt: skip
        components.append({"name": n, "handler": "command", "sha256": stored["sha256"]})
    release: dict[str, Any] = await s.api.call(
        "POST", "/v1/systems", expect=201,
        json={"name": "edge", "version": version, "components": components},
    )  # fmt: skip
    return release


async def _target_done(s: Setup, rollout_id: int, device_id: str) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        for t in await s.api.targets(rollout_id):
            if t["device_id"] == device_id and t["state"] in ("succeeded", "failed",
                                                              "rolled_back"):  # fmt: skip
                return t
        return None

    found: dict[str, Any] = await wait_until(done, within=90, what=f"{device_id} finished")
    return found


async def test_a_restart_during_a_health_check_rollback_does_not_check_health_again(
    setup: Setup, tmp_path: Path
) -> None:
    """The health check failed and the rollback of the system began; the agent stops in
    the middle of it. Before the fix the next start ran the health check again (the job was
    still in ``health_check``), which passed this time, and the device committed and reported
    ``succeeded`` a system whose last component was already rolled back."""
    s = setup
    log = tmp_path / "steps.log"
    fifo, marker = tmp_path / "never-written", tmp_path / "blocked-once"
    os.mkfifo(fifo)
    healthy_once_failed = tmp_path / "health-failed-once"
    health = ["/bin/sh", "-c", f'if [ -e "{healthy_once_failed}" ]; then exit 0; fi; '
              f'touch "{healthy_once_failed}"; exit 1']  # fmt: skip
    blocking = [
        "/bin/sh", "-c",
        f'if [ ! -e "{marker}" ]; then touch "{marker}"; echo "blocked" >> "{log}";'
        f' cat "{fifo}" > /dev/null; fi; echo "rollback $FLEETPUSH_COMPONENT" >> "{log}"',
    ]  # fmt: skip
    sections: dict[str, dict[str, Any]] = {
        f"components.{n}": _command(log) for n in ("one", "two", "three")}  # fmt: skip
    sections["components.two"] = _command(log, rollback=blocking)
    sections["health"] = {"command": health, "timeout": "30s"}
    s.fleet.provision("rb-health", sections=sections)
    s.broker.reload()
    s.fleet.start("rb-health")

    async def online() -> bool:
        found = await s.api.call("GET", "/v1/devices", params={"online": "true"})
        return any(d["device_id"] == "rb-health" for d in found["devices"])

    await wait_until(online, what="rb-health online")
    release = await _system(s, "4.0", ("one", "two", "three"))
    r = await s.api.rollout(release["id"], target={"devices": ["rb-health"]}, phases=[100])
    await wait_for(lambda: log.exists() and "blocked" in log.read_text(), within=90,
                   what="the rollback of two")  # fmt: skip
    await s.fleet.stop("rb-health")  # mid-rollback: three rolled back, two and one not yet
    s.fleet.start("rb-health")
    target = await _target_done(s, r["id"], "rb-health")
    assert target["state"] == "rolled_back", target
    assert target["reason"].startswith("health_check_failed"), target
    assert {c["name"]: c["state"] for c in target["components"]} == dict.fromkeys(
        ("one", "two", "three"), "rolled_back")  # fmt: skip
    steps = log.read_text().split("\n")[:-1]
    assert steps == ["install one", "install two", "install three", "rollback three",
                     "blocked", "rollback two", "rollback one"]  # fmt: skip
