"""The evidence of a failure (issue 18) end to end: real agents, a real Mosquitto, the
orchestrator's real HTTP API and the CLI against it.

A failing health check and a failing command handler: the end of what they printed
reaches ``GET /v1/devices/{id}/logs``, ``fleetpush devices logs`` and ``devices show``. A
handler printing 50 MB: the agent drains it, the report stays bounded. A hostile device
publishing straight to the broker: each case of the table has one clear outcome.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import msgspec
import pytest
from click.testing import CliRunner, Result
from orch_helpers import (
    PAYLOAD,
    TOKENS,
    Setup,
    setup,
    setup_any_backend,
    start_devices,
    wait_until,
)

from fleetpush_protocol.envelope import encode_message
from fleetpush_protocol.messages import ErrorInfo, Report, ReportState, StepOutput
from orchestrator.cli.main import main

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
__all__ = ["setup", "setup_any_backend"]  # the fixtures

ENV = {"FLEETPUSH_SERVER": "", "FLEETPUSH_TOKEN": "", "FLEETPUSH_CONFIG": ""}


async def cli(s: Setup, *args: str) -> Result:
    full = [*args, "--server", s.api.base, "--token", TOKENS["viewer"]]
    return await asyncio.to_thread(CliRunner().invoke, main, full, env=ENV)


async def logs(s: Setup, device_id: str, **params: str) -> list[dict[str, Any]]:
    found = await s.api.call("GET", f"/v1/devices/{device_id}/logs", params=params)
    entries: list[dict[str, Any]] = found["logs"]
    return entries


async def first_log(s: Setup, device_id: str, within: float = 90) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        entries = await logs(s, device_id)
        return entries[0] if entries else None

    found: dict[str, Any] = await wait_until(check, within=within, what=f"{device_id} logs")
    return found


async def rollout_to(s: Setup, device_id: str, version: str, handler: str = "directory") -> int:
    rel = await s.api.call(
        "POST", "/v1/releases", data=PAYLOAD, expect=201,
        params=[("name", "app"), ("version", version), ("handler", handler)],
    )  # fmt: skip
    r = await s.api.rollout(rel["id"], target={"devices": [device_id]})
    rollout_id: int = r["id"]
    return rollout_id


SELF_TEST = (
    "echo 'checking the app on :8080'; echo 'GET / -> connection refused' >&2; "
    "echo 'self-test failed' >&2; exit 1"
)


async def test_a_failing_health_checks_output_reaches_the_api_and_devices_logs(
    setup_any_backend: Setup,
) -> None:
    s = setup_any_backend
    health = {"command": ["/bin/sh", "-c", SELF_TEST], "timeout": "10s"}
    await start_devices(s, "dev-h", sections={"health": health})
    rollout_id = await rollout_to(s, "dev-h", "2.0")
    entry = await first_log(s, "dev-h")
    assert (entry["state"], entry["error_code"]) == ("rolled_back", "health_check_failed")
    assert entry["release"] == "app@2.0"
    assert entry["rollout_id"] == rollout_id
    assert (
        entry["error_message"]
        == "health check exit 1: GET / -> connection refused\nself-test failed"
    )
    [out] = entry["output"]
    assert out == {
        "step": "health_check", "printed": len(b"checking the app on :8080\n")
        + len(b"GET / -> connection refused\nself-test failed\n"),
        "stdout": "checking the app on :8080\n",
        "stderr": "GET / -> connection refused\nself-test failed\n",
    }  # fmt: skip
    device = await s.api.call("GET", "/v1/devices/dev-h")
    assert device["last_output"] == entry

    text = await cli(s, "devices", "logs", "dev-h", "--rollout", str(rollout_id))
    assert text.exit_code == 0, text.output
    assert "rolled_back at " in text.output
    assert f"release app@2.0, rollout {rollout_id}" in text.output
    assert "--- health_check stderr:\nGET / -> connection refused\nself-test failed" in text.output
    assert "--- health_check stdout:\nchecking the app on :8080" in text.output
    as_json = await cli(s, "devices", "logs", "dev-h", "--json")
    assert json.loads(as_json.output)["logs"] == [entry]
    other = await cli(s, "devices", "logs", "dev-h", "--rollout", str(rollout_id + 1))
    assert "dev-h: no failure output stored" in other.output
    show = await cli(s, "devices", "show", "dev-h")
    assert "last failure's output" in show.output
    assert "self-test failed" in show.output
    missing = await s.api.call("GET", "/v1/devices/nobody/logs", expect=404)
    assert "nobody" in missing["error"]


async def test_a_failing_command_handlers_output_is_reported(setup: Setup) -> None:
    s = setup
    install = {
        "handler": "command",
        "install": ["/bin/sh", "-c",
                    "echo 'unpacking firmware'; echo 'flash: no space' >&2; exit 4"],
    }  # fmt: skip
    await start_devices(s, "dev-c", sections={"install": install})
    await rollout_to(s, "dev-c", "2.0", handler="command")
    entry = await first_log(s, "dev-c")
    assert (entry["state"], entry["error_code"]) == ("failed", "install_failed")
    assert entry["output"] == [{
        "step": "install", "printed": len(b"unpacking firmware\nflash: no space\n"),
        "stdout": "unpacking firmware\n", "stderr": "flash: no space\n",
    }]  # fmt: skip


FLOOD = (
    "import sys\n"
    "line = b'y' * 1023 + b'\\n'\n"
    "for _ in range(25 * 1024): sys.stdout.buffer.write(line)\n"  # 25 MiB each
    "for _ in range(25 * 1024): sys.stderr.buffer.write(line)\n"
    "sys.stdout.write('last stdout line'); sys.stderr.write('last stderr line')\n"
    "sys.exit(1)\n"
)


async def test_a_handler_printing_50_mb_is_drained_and_its_report_stays_bounded(
    setup: Setup, tmp_path: Path
) -> None:
    s = setup
    script = tmp_path / "flood.py"
    script.write_text(FLOOD)
    install = {"handler": "command", "install": [sys.executable, str(script)]}
    await start_devices(
        s, "dev-f", sections={"install": install, "evidence": {"output_tail": "6KiB"}}
    )
    await rollout_to(s, "dev-f", "2.0", handler="command")
    entry = await first_log(s, "dev-f", within=150)
    [out] = entry["output"]
    assert out["printed"] == 50 * 1024 * 1024 + len("last stdout line") + len("last stderr line")
    assert out["stdout"].endswith("last stdout line")
    assert out["stderr"].endswith("last stderr line")
    assert len(out["stdout"].encode()) + len(out["stderr"].encode()) <= 6144
    agent = s.fleet.agents["dev-f"]
    assert not agent.state.outbox.dropped


# --- a hostile device, straight to the broker ----------------------------------------------

Build = Callable[[int], bytes]


def _report(counter: int, notice_id: str, rollout_id: int, **out: Any) -> Report:
    step = {"step": "install", "printed": 10, "stdout": "", "stderr": "", **out}
    return Report(
        device_id="dev-x", notice_id=notice_id, rollout_id=str(rollout_id),
        state=ReportState.FAILED, current_version="1.0", counter=counter, reported_at=1,
        error=ErrorInfo(code="install_failed", message="install exit 1"),
        output=(StepOutput(**step),),
    )  # fmt: skip


def _raw(report: Report, **body: Any) -> bytes:
    """A report whose body the protocol's own encoder would not write."""
    enc = msgspec.msgpack.Encoder(order="deterministic")
    return enc.encode({"body": enc.encode({**report.to_body(), **body}), "signatures": []})


def _invalid_utf8(report: Report) -> bytes:
    data = encode_message(report)
    assert data.count(b"PLACEHOLDER") == 1
    return data.replace(b"PLACEHOLDER", b"\xff\xfe\xc3(\xa0\xa1\xe2\x28\xa1ab")


# (name, build(counter, notice, rollout) -> bytes, expected: stored text or a drop reason)
HOSTILE: list[tuple[str, Callable[[int, str, int], bytes], str]] = [
    ("ansi escapes, NUL, C1 and bidi controls are stripped",
     lambda c, n, r: encode_message(
         _report(c, n, r, stdout="\x1b[31mFAIL\x1b[0m\x00\x85 a\u202eb\r\n")),
     "FAIL ab\n"),
    ("markup is stored as text (the dashboard sets it as text)",
     lambda c, n, r: encode_message(_report(c, n, r, stderr="<script>alert(1)</script>[bold]x")),
     "<script>alert(1)</script>[bold]x"),
    ("within the protocol, over the orchestrator's cap: its end is kept",
     lambda c, n, r: encode_message(_report(c, n, r, stdout="a" * 3000 + "b" * 4000)),
     "a" * 2144 + "b" * 4000),
    ("invalid UTF-8 in a string: malformed, dropped",
     lambda c, n, r: _invalid_utf8(_report(c, n, r, stdout="PLACEHOLDER")), "malformed"),
    ("longer than a report may be: dropped before decoding",
     lambda c, n, r: encode_message(_report(c, n, r, stdout="z" * 8000, stderr="z" * 1000)),
     "oversized"),
    ("a step name that is markup: malformed",
     lambda c, n, r: _raw(_report(c, n, r), output=[{"step": "<img src=x onerror=alert(1)>",
                                                     "printed": 1, "stdout": "", "stderr": ""}]),
     "malformed"),
    ("more steps than the protocol allows: malformed",
     lambda c, n, r: _raw(_report(c, n, r), output=[{"step": "install", "printed": 1,
                                                     "stdout": "x", "stderr": ""}] * 5),
     "malformed"),
    ("output on a succeeded report: malformed",
     lambda c, n, r: _raw(_report(c, n, r), state="succeeded", error=None), "malformed"),
]  # fmt: skip


async def test_hostile_device_output_is_cleaned_bounded_or_dropped(setup: Setup) -> None:
    s = setup
    s.fleet.provision("dev-x")
    s.broker.reload()
    password = tomllib.loads(s.fleet.configs["dev-x"].read_text())["broker"]["password"]
    rollout_id = await rollout_to(s, "dev-x", "2.0")

    async def notice() -> str | None:
        [target] = await s.api.targets(rollout_id)
        return target["notice_id"]

    notice_id = await wait_until(notice, what="a notice for dev-x")
    ingestor = s.orch.ingestor
    assert ingestor is not None
    topics = s.fleet.topics
    async with aiomqtt.Client(s.broker.host, s.broker.port, username="dev-x",
                              password=password, identifier="dev-x") as client:  # fmt: skip
        for counter, (name, build, expected) in enumerate(HOSTILE, start=1):
            stats = (ingestor.stats.malformed, ingestor.stats.oversized)
            await client.publish(
                topics.report("dev-x"), build(counter, notice_id, rollout_id), qos=1
            )
            if expected in ("malformed", "oversized"):
                which = 0 if expected == "malformed" else 1

                async def dropped() -> bool:
                    now = (ingestor.stats.malformed, ingestor.stats.oversized)
                    return now[which] == stats[which] + 1  # noqa: B023 - awaited at once

                await wait_until(dropped, what=f"{name}: {expected}")
                continue

            async def stored() -> dict[str, Any] | None:
                entries = await logs(s, "dev-x")
                return next((e for e in entries if e["counter"] == counter), None)  # noqa: B023

            entry = await wait_until(stored, what=f"{name}: stored")
            [out] = entry["output"]
            kept = out["stdout"] + out["stderr"]
            assert kept == expected, name
            assert len(kept.encode()) <= 6144, name
    counters = [e["counter"] for e in await logs(s, "dev-x")]
    assert counters == [3, 2, 1]  # only the cleaned and bounded ones, newest first
    # The CLI prints it as it is stored: no escape, markup not read (rich would eat [bold]).
    printed = await cli(s, "devices", "logs", "dev-x")
    assert "<script>alert(1)</script>[bold]x" in printed.output
    assert "\x1b" not in printed.output


async def test_a_system_components_failing_step_is_reported_under_its_name(setup: Setup) -> None:
    """A system update (item 2 of issue 18): the output is named ``component:step``."""
    s = setup
    sections = {
        "components.app": {"handler": "directory"},
        "components.cfg": {"handler": "command", "install": [
            "/bin/sh", "-c", "echo 'writing /etc/app.conf'; echo 'bad key: port' >&2; exit 2"],
            "rollback": ["/bin/true"]},
    }  # fmt: skip
    await start_devices(s, "dev-s", sections=sections)
    components = []
    for name, handler, data in (("app", "directory", PAYLOAD), ("cfg", "command", b"port=x\n")):
        stored = await s.api.call("POST", "/v1/payloads", data=data,
                                  params={"handler": handler}, expect=201)  # fmt: skip
        components.append({"name": name, "handler": handler, "sha256": stored["sha256"]})
    release = await s.api.call("POST", "/v1/systems", expect=201, json={
        "name": "edge", "version": "2.0", "components": components})  # fmt: skip
    await s.api.rollout(release["id"], target={"devices": ["dev-s"]})
    entry = await first_log(s, "dev-s")
    assert (entry["state"], entry["error_code"]) == ("rolled_back", "install_failed")
    assert entry["release"] == "edge@2.0"
    assert entry["output"] == [{
        "step": "cfg:install", "printed": len(b"writing /etc/app.conf\nbad key: port\n"),
        "stdout": "writing /etc/app.conf\n", "stderr": "bad key: port\n",
    }]  # fmt: skip
