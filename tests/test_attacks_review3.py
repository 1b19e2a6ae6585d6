"""Review attacks on whole-system updates (issue 18) and the replica race fixes, by an
engineer who did not write them: each test failed before its fix (or is a strict xfail
listed under "Known limits" in docs/security.md)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec
import pytest
from device_helpers import wait_for
from orch_helpers import Setup, setup, wait_until

from fleetpush_protocol.components import ComponentState
from fleetpush_protocol.messages import Report, ReportState
from orchestrator.rules import RolloutSpec
from orchestrator.store import NoticeRecord, ReleaseRecord, Store

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


def _health_fails_once(tmp_path: Path) -> list[str]:
    flag = tmp_path / "health-failed-once"
    return ["/bin/sh", "-c", f'if [ -e "{flag}" ]; then exit 0; fi; touch "{flag}"; exit 1']


def _blocks_once(tmp_path: Path, log: Path, says: str) -> list[str]:
    """A rollback command that, the first time, logs ``blocked`` and waits for ever on a
    FIFO nobody writes (the test stops the agent there), then logs ``says``."""
    fifo, marker = tmp_path / "never-written", tmp_path / "blocked-once"
    os.mkfifo(fifo)
    return [
        "/bin/sh", "-c",
        f'if [ ! -e "{marker}" ]; then touch "{marker}"; echo "blocked" >> "{log}";'
        f' cat "{fifo}" > /dev/null; fi; echo "{says}" >> "{log}"',
    ]  # fmt: skip


async def _start_online(s: Setup, device_id: str) -> None:
    s.broker.reload()
    s.fleet.start(device_id)

    async def online() -> bool:
        found = await s.api.call("GET", "/v1/devices", params={"online": "true"})
        return any(d["device_id"] == device_id for d in found["devices"])

    await wait_until(online, what=f"{device_id} online")


async def test_a_restart_during_a_health_check_rollback_does_not_check_health_again(
    setup: Setup, tmp_path: Path
) -> None:
    """The health check failed and the rollback of the system began; the agent stops in
    the middle of it. Before the fix the next start ran the health check again (the job was
    still in ``health_check``), which passed this time, and the device committed and reported
    ``succeeded`` a system whose last component was already rolled back."""
    s = setup
    log = tmp_path / "steps.log"
    health = _health_fails_once(tmp_path)
    blocking = _blocks_once(tmp_path, log, "rollback $FLEETPUSH_COMPONENT")
    sections: dict[str, dict[str, Any]] = {
        f"components.{n}": _command(log) for n in ("one", "two", "three")}  # fmt: skip
    sections["components.two"] = _command(log, rollback=blocking)
    sections["health"] = {"command": health, "timeout": "30s"}
    s.fleet.provision("rb-health", sections=sections)
    await _start_online(s, "rb-health")
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


async def test_a_restart_during_a_single_payload_rollback_does_not_check_health_again(
    setup: Setup, tmp_path: Path
) -> None:
    """The same for a single-payload job (command handler): the health check failed, the
    rollback began and the agent stopped in it. Before the fix the next start ran the
    health check again, which passed, and the device reported ``succeeded``."""
    s = setup
    log = tmp_path / "steps.log"
    health = _health_fails_once(tmp_path)
    rollback = _blocks_once(tmp_path, log, "rollback")
    install = ["/bin/sh", "-c", f'echo "install" >> "{log}"']
    s.fleet.provision("rb-single", sections={
        "install": {"handler": "command", "install": install, "rollback": rollback},
        "health": {"command": health, "timeout": "30s"}})  # fmt: skip
    await _start_online(s, "rb-single")
    release = await s.api.upload("fw", "4.0", b"firmware 4.0", handler="command")
    r = await s.api.rollout(release["id"], target={"devices": ["rb-single"]}, phases=[100])
    await wait_for(lambda: log.exists() and "blocked" in log.read_text(), within=90,
                   what="the rollback")  # fmt: skip
    await s.fleet.stop("rb-single")
    s.fleet.start("rb-single")
    target = await _target_done(s, r["id"], "rb-single")
    assert target["state"] == "rolled_back", target
    assert target["reason"].startswith("health_check_failed"), target
    assert log.read_text().split("\n")[:-1] == ["install", "blocked", "rollback"]


# --- a device's per-component states (issue 18): never trusted past the release's list ----

T0 = 1_700_000_000.0
PARTS = (
    {"name": "app", "handler": "directory", "sha256": "a1" * 32, "size": 10},
    {"name": "fw", "handler": "command", "sha256": "f1" * 32, "size": 20},
)


def _forged(counter: int, parts: list[tuple[str, str]]) -> Report:
    return Report(
        device_id="d", notice_id="n-d", rollout_id="", state=ReportState.INSTALLING,
        current_version="", counter=counter, reported_at=int(T0),
        components=tuple(ComponentState(name=k, state=v) for k, v in parts),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("system", "reported", "stored"),
    [
        # a component the release does not have: dropped, the real ones kept
        (True, [("app", "installed"), ("evil", "installed")], [("app", "installed")]),
        # only components the release does not have: nothing stored
        (True, [("ghost", "installed")], None),
        # the same component twice, disagreeing: the first kept
        (
            True,
            [("fw", "installed"), ("fw", "failed"), ("app", "installed")],
            [("app", "installed"), ("fw", "installed")],
        ),
        # out of order: shown in the release's installation order
        (
            True,
            [("fw", "installing"), ("app", "installed")],
            [("app", "installed"), ("fw", "installing")],
        ),
        # a single-payload release has no components: a device's list is ignored
        (False, [("app", "installed")], None),
    ],
    ids=["unknown-name", "only-unknown", "duplicate", "out-of-order", "not-a-system"],
)
def test_a_device_cannot_store_component_states_its_release_does_not_have(
    store: Store, system: bool, reported: list[tuple[str, str]],
    stored: list[tuple[str, str]] | None,
) -> None:  # fmt: skip
    rel = store.add_release(ReleaseRecord(
        0, "edge", "2", "ee" * 32, 90, (), "system" if system else "command", {}, {}, T0,
        components=PARTS if system else ()))  # fmt: skip
    r = store.create_rollout(release_id=rel.id, target={"all": True}, spec=RolloutSpec(),
                             assignments=[("d", 0, 0)], now=T0, actor="op")  # fmt: skip
    store.save_notices([NoticeRecord("n-d", "d", r.id, "notice", "device/d", 1, "t/d", T0,
                                     T0 + 600, b"env")], {"d": True})  # fmt: skip
    report = msgspec.structs.replace(_forged(1, reported), rollout_id=str(r.id))
    assert store.ingest([report], T0 + 1).accepted == 1  # the state itself is the device's
    (t,) = store.list_targets(r.id)
    assert t.state == "installing"
    want = None if stored is None else [{"name": n, "state": st} for n, st in stored]
    assert t.components == want
    assert store.device_components("d") == ([] if want is None else [
        {"rollout_id": r.id, "notice_id": "n-d", "state": "installing",
         "updated_at": T0 + 1, "components": want}])  # fmt: skip
