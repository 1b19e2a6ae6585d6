"""Whole-system updates (issue 18) end to end: a real orchestrator, a real broker, real
HTTP and real agents. Command components append to one log file, so the order in which
components install and roll back is read from it; a blocking component is the barrier at
which an agent process is SIGKILLed between two components."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from device_helpers import AgentProcess, wait_for
from orch_helpers import (
    PAYLOAD,
    TOKENS,
    Setup,
    setup,
    setup_any_backend,
    start_devices,
    wait_until,
)

from orchestrator.cli.main import main

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
__all__ = ["setup", "setup_any_backend"]  # fixtures

APP = PAYLOAD  # a tar, for the directory component
CONFIG = b"log_level = 'debug'\n"
FIRMWARE = b"\x7fFIRMWARE v2\x00" * 64


def _logged(log: Path, what: str) -> list[str]:
    """A command step that appends ``what COMPONENT`` to ``log``."""
    return ["/bin/sh", "-c", f'echo "{what} $FLEETPUSH_COMPONENT" >> "{log}"']


def _command(log: Path, *, install: list[str] | None = None) -> dict[str, Any]:
    return {"handler": "command", "install": install or _logged(log, "install"),
            "rollback": _logged(log, "rollback"), "step_timeout": "60s"}  # fmt: skip


def _sections(log: Path, **overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    parts: dict[str, dict[str, Any]] = {
        "app": {"handler": "directory", "post_install": _logged(log, "install")},
        "config": _command(log),
        "firmware": _command(log),
    }
    parts.update(overrides)
    return {f"components.{name}": values for name, values in parts.items()}


async def _payload(s: Setup, data: bytes, handler: str) -> str:
    stored = await s.api.call("POST", "/v1/payloads", data=data, params={"handler": handler},
                              expect=201)  # fmt: skip
    sha: str = stored["sha256"]
    return sha


async def _system(s: Setup, version: str, parts: list[tuple[str, str, bytes]]) -> dict[str, Any]:
    components = [{"name": n, "handler": h, "sha256": await _payload(s, data, h)}
                  for n, h, data in parts]  # fmt: skip
    release: dict[str, Any] = await s.api.call(
        "POST", "/v1/systems", expect=201,
        json={"name": "edge", "version": version, "components": components},
    )  # fmt: skip
    return release


THREE = [("app", "directory", APP), ("config", "command", CONFIG),
         ("firmware", "command", FIRMWARE)]  # fmt: skip


async def _target_done(s: Setup, rollout_id: int, device_id: str) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        for t in await s.api.targets(rollout_id):
            if t["device_id"] == device_id and t["state"] in ("succeeded", "failed",
                                                              "rolled_back"):  # fmt: skip
                return t
        return None

    found: dict[str, Any] = await wait_until(done, within=90, what=f"{device_id} finished")
    return found


def _states(target: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["state"] for c in target.get("components") or []}


async def test_a_three_component_system_installs_in_order(
    setup_any_backend: Setup, tmp_path: Path
) -> None:
    s = setup_any_backend
    log = tmp_path / "steps.log"
    await start_devices(s, "sys-ok", sections=_sections(log))
    release = await _system(s, "2.0", THREE)
    assert release["handler"] == "system"
    assert [c["name"] for c in release["components"]] == ["app", "config", "firmware"]
    assert [c["size"] for c in release["components"]] == [len(APP), len(CONFIG), len(FIRMWARE)]
    r = await s.api.rollout(release["id"], target={"devices": ["sys-ok"]}, phases=[100])
    target = await _target_done(s, r["id"], "sys-ok")
    assert target["state"] == "succeeded"
    assert _states(target) == {"app": "installed", "config": "installed",
                               "firmware": "installed"}  # fmt: skip
    assert log.read_text().split("\n")[:-1] == [
        "install app", "install config", "install firmware"]  # fmt: skip
    state_dir = s.fleet.configs["sys-ok"].parent / "state-sys-ok"
    current = state_dir / "components" / "app" / "current"
    assert (current / "app" / "VERSION").read_bytes() == b"2.0\n"
    device = await s.api.call("GET", "/v1/devices/sys-ok")
    assert device["current_version"] == "2.0"
    assert _states(device["systems"][0]) == _states(target)


async def test_a_failing_second_component_rolls_back_all_in_reverse(
    setup_any_backend: Setup, tmp_path: Path
) -> None:
    s = setup_any_backend
    log = tmp_path / "steps.log"
    failing = ["/bin/sh", "-c", f'echo "install $FLEETPUSH_COMPONENT" >> "{log}"; exit 1']
    await start_devices(s, "sys-bad", sections=_sections(
        log, config=_command(log, install=failing)))  # fmt: skip
    release = await _system(s, "2.0", THREE)
    r = await s.api.rollout(release["id"], target={"devices": ["sys-bad"]}, phases=[100])
    target = await _target_done(s, r["id"], "sys-bad")
    assert target["state"] == "rolled_back"
    assert target["reason"].startswith("install_failed: component 'config'")
    assert _states(target) == {"app": "rolled_back", "config": "rolled_back",
                               "firmware": "downloaded"}  # fmt: skip
    # config failed after changing something: it is undone first, then app; firmware never ran
    assert log.read_text().split("\n")[:-1] == [
        "install app", "install config", "rollback config"]  # fmt: skip
    state_dir = s.fleet.configs["sys-bad"].parent / "state-sys-bad"
    assert not (state_dir / "components" / "app" / "current").exists()
    device = await s.api.call("GET", "/v1/devices/sys-bad")
    assert device["current_version"] == ""


async def test_three_command_components_roll_back_in_reverse_order(
    setup: Setup, tmp_path: Path
) -> None:
    s = setup
    log = tmp_path / "steps.log"
    failing = ["/bin/sh", "-c", f'echo "install $FLEETPUSH_COMPONENT" >> "{log}"; exit 1']
    sections = {f"components.{n}": _command(log) for n in ("one", "two", "three")}
    sections["components.three"] = _command(log, install=failing)
    await start_devices(s, "sys-rev", sections=sections)
    release = await _system(s, "3.0", [("one", "command", b"1"), ("two", "command", b"2"),
                                       ("three", "command", b"3")])  # fmt: skip
    r = await s.api.rollout(release["id"], target={"devices": ["sys-rev"]}, phases=[100])
    target = await _target_done(s, r["id"], "sys-rev")
    assert target["state"] == "rolled_back"
    assert log.read_text().split("\n")[:-1] == [
        "install one", "install two", "install three",
        "rollback three", "rollback two", "rollback one"]  # fmt: skip


async def test_sigkill_between_components_ends_rolled_back_after_restart(
    setup: Setup, tmp_path: Path
) -> None:
    s = setup
    log = tmp_path / "steps.log"
    fifo = tmp_path / "never-written"
    os.mkfifo(fifo)
    # Writes its process group to the log, then blocks until the test kills it: the agent
    # is SIGKILLed while app and config are installed and firmware is installing.
    blocking = [
        "/bin/sh",
        "-c",
        f'echo "install $FLEETPUSH_COMPONENT $$" >> "{log}"; cat "{fifo}" > /dev/null',
    ]
    s.fleet.provision("sys-kill", sections=_sections(
        log, firmware=_command(log, install=blocking)))  # fmt: skip
    s.broker.reload()
    agent = AgentProcess(s.fleet.configs["sys-kill"], tmp_path / "agent.log")
    agent.start()
    try:

        async def online() -> bool:
            found = await s.api.call("GET", "/v1/devices", params={"online": "true"})
            return any(d["device_id"] == "sys-kill" for d in found["devices"])

        await wait_until(online, what="sys-kill online")
        release = await _system(s, "2.0", THREE)
        r = await s.api.rollout(release["id"], target={"devices": ["sys-kill"]}, phases=[100])

        def blocked() -> str | None:
            lines = log.read_text().split("\n") if log.exists() else []
            return next((x for x in lines if x.startswith("install firmware ")), None)

        await wait_for(lambda: blocked() is not None, within=90, what="firmware installing")
        line = blocked()
        assert line is not None
        agent.kill()
        os.killpg(int(line.split()[-1]), signal.SIGKILL)  # the orphaned step, and its cat
        assert log.read_text().split("\n")[:-1] == ["install app", "install config", line]
        agent.start()  # the restart finds the job installing, with what is installed
        target = await _target_done(s, r["id"], "sys-kill")
    finally:
        agent.terminate()
    assert target["state"] == "rolled_back"
    assert target["reason"].startswith("interrupted")
    assert _states(target) == {"app": "rolled_back", "config": "rolled_back",
                               "firmware": "rolled_back"}  # fmt: skip
    assert log.read_text().split("\n")[:-1] == [
        "install app",
        "install config",
        line,
        "rollback firmware",
        "rollback config",
    ]
    state_dir = s.fleet.configs["sys-kill"].parent / "state-sys-kill"
    assert not (state_dir / "components" / "app" / "current").exists()


async def test_a_device_without_the_components_refuses_before_downloading(
    setup: Setup, tmp_path: Path
) -> None:
    """What an agent that does not know systems does too: handler 'system' is not its
    handler, so it fails the notice at once and installs nothing."""
    s = setup
    await start_devices(s, "sys-old")
    release = await _system(s, "2.0", THREE)
    r = await s.api.rollout(release["id"], target={"devices": ["sys-old"]}, phases=[100])
    target = await _target_done(s, r["id"], "sys-old")
    assert target["state"] == "failed"
    assert target["reason"].startswith("payload_invalid: component 'app' is not configured")
    history = (await s.api.call("GET", "/v1/devices/sys-old"))["reports"]
    assert [h["state"] for h in reversed(history)] == ["notified", "failed"]


async def _cli(s: Setup, *args: str) -> Result:
    """``fleetpush ARGS`` against the test API, off this loop (which serves it)."""
    full = [*args, "--server", s.api.base, "--token", TOKENS["operator"]]
    env = {"FLEETPUSH_SERVER": "", "FLEETPUSH_TOKEN": "", "FLEETPUSH_CONFIG": ""}
    return await asyncio.to_thread(CliRunner().invoke, main, full, env=env)


async def test_cli_uploads_a_system_and_shows_a_failed_health_check_rolling_back_all(
    setup: Setup, tmp_path: Path
) -> None:
    s = setup
    log = tmp_path / "steps.log"
    await start_devices(s, "sys-cli", sections=_sections(log), healthy=False)
    files = {}
    for name, _, data in THREE:
        files[name] = tmp_path / name
        files[name].write_bytes(data)
    args = [f"--component={n}={h}:{files[n]}" for n, h, _ in THREE]
    for bad, says in (
        ([*args, f"--component=app=directory:{files['app']}"], "each name once"),
        ([f"--component=App=directory:{files['app']}"], "name must be"),
        ([f"--component=app=rauc:{files['app']}"], "handler must be one of"),
        ([str(files["app"]), *args], "give FILE, or --component"),
        ([*args, "--handler", "command"], "--component goes without --handler"),
    ):
        refused = await _cli(s, "release", "upload", "--name", "edge", "--version", "9", *bad)
        assert refused.exit_code == 2, refused.output
        assert says in refused.output
    assert (await s.api.call("GET", "/v1/releases"))["releases"] == []  # nothing was sent
    up = await _cli(s, "release", "upload", "--name", "edge", "--version", "2.0", *args)
    assert up.exit_code == 0, up.output
    shown = await _cli(s, "release", "show", "edge@2.0")
    assert shown.exit_code == 0, shown.output
    rows = [line for line in shown.output.split("\n") if line.startswith("│ ")]
    for name, handler, data in THREE:
        assert any(name in x and handler in x and str(len(data)) in x for x in rows), rows
    release = await s.api.call("GET", "/v1/releases/edge@2.0")
    r = await s.api.rollout(release["id"], target={"devices": ["sys-cli"]}, phases=[100])
    target = await _target_done(s, r["id"], "sys-cli")
    assert target["state"] == "rolled_back"
    assert target["reason"].startswith("health_check_failed")
    assert log.read_text().split("\n")[:-1] == [
        "install app", "install config", "install firmware",
        "rollback firmware", "rollback config"]  # fmt: skip
    device = await _cli(s, "devices", "show", "sys-cli")
    assert device.exit_code == 0, device.output
    assert f"system update of rollout {r['id']}: rolled_back" in device.output
    for name in ("app", "config", "firmware"):
        assert any(name in line and "rolled_back" in line for line in device.output.split("\n"))


async def test_sigkill_during_the_rollback_resumes_it_with_its_cause(
    setup: Setup, tmp_path: Path
) -> None:
    s = setup
    log = tmp_path / "steps.log"
    fifo, marker = tmp_path / "never-written", tmp_path / "blocked-once"
    os.mkfifo(fifo)
    failing = ["/bin/sh", "-c", f'echo "install $FLEETPUSH_COMPONENT" >> "{log}"; exit 1']
    # The first rollback of `two` blocks (the barrier); the one after the restart does not.
    blocking = [
        "/bin/sh",
        "-c",
        f'if [ ! -e "{marker}" ]; then touch "{marker}"; echo "blocked $$" >> "{log}";'
        f' cat "{fifo}" > /dev/null; fi; echo "rollback $FLEETPUSH_COMPONENT" >> "{log}"',
    ]
    sections = {f"components.{n}": _command(log) for n in ("one", "two", "three")}
    sections["components.two"]["rollback"] = blocking
    sections["components.three"] = _command(log, install=failing)
    s.fleet.provision("sys-rb", sections=sections)
    s.broker.reload()
    agent = AgentProcess(s.fleet.configs["sys-rb"], tmp_path / "agent.log")
    agent.start()
    try:

        async def online() -> bool:
            found = await s.api.call("GET", "/v1/devices", params={"online": "true"})
            return any(d["device_id"] == "sys-rb" for d in found["devices"])

        await wait_until(online, what="sys-rb online")
        release = await _system(s, "3.0", [("one", "command", b"1"), ("two", "command", b"2"),
                                           ("three", "command", b"3")])  # fmt: skip
        r = await s.api.rollout(release["id"], target={"devices": ["sys-rb"]}, phases=[100])

        def blocked() -> str | None:
            lines = log.read_text().split("\n") if log.exists() else []
            return next((x for x in lines if x.startswith("blocked ")), None)

        await wait_for(lambda: blocked() is not None, within=90, what="rollback of two")
        line = blocked()
        assert line is not None
        agent.kill()
        os.killpg(int(line.split()[-1]), signal.SIGKILL)
        agent.start()
        target = await _target_done(s, r["id"], "sys-rb")
    finally:
        agent.terminate()
    assert target["state"] == "rolled_back"
    assert target["reason"].startswith("install_failed: component 'three'")
    assert target["reason"].endswith("rollback resumed after a restart")
    # three was rolled back before the kill and is not again; two and one after it
    assert log.read_text().split("\n")[:-1] == [
        "install one", "install two", "install three", "rollback three", line,
        "rollback two", "rollback one"]  # fmt: skip
    assert _states(target) == dict.fromkeys(("one", "two", "three"), "rolled_back")
