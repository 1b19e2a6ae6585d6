"""``fleetpush serve`` as a real process, SIGKILLed in the middle of a rollout."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from orch_helpers import (
    SERVE_START_S,
    TOKENS,
    Api,
    Fleet,
    assert_spoke,
    root_hex,
    wait_until,
    write_orchestrator,
)

from fleetpush_protocol.topics import Topics
from orchestrator.broker import MosquittoBroker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

FLEETPUSH = Path(sys.executable).with_name("fleetpush")


def _serve(config: Path, log: Path) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    try:
        return subprocess.Popen(
            [str(FLEETPUSH), "-v", "serve", "--config", str(config)],
            stdout=out, stderr=out, start_new_session=True,
        )  # fmt: skip
    finally:
        out.close()


async def _healthy(session: aiohttp.ClientSession, base: str) -> bool:
    try:
        async with session.get(base + "/healthz") as resp:
            return resp.status == 200
    except aiohttp.ClientError:
        return False


@pytest.mark.parametrize("mqtt_protocol", ["5", "3.1.1"])
async def test_orchestrator_killed_and_restarted_mid_rollout(
    tmp_path: Path, broker: MosquittoBroker, topics: Topics, mqtt_protocol: str
) -> None:
    config, port = write_orchestrator(tmp_path, broker, topics, protocol=mqtt_protocol)
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    proc = _serve(config, log)
    (tmp_path / "devices").mkdir()
    fleet = Fleet(tmp_path / "devices", broker, topics, root_hex(tmp_path), mqtt_protocol)
    ids = [f"k-{i}" for i in range(6)]
    for d in ids:
        fleet.provision(d)
    broker.reload()
    try:
        async with aiohttp.ClientSession() as session:
            await wait_until(
                lambda: _healthy(session, base), within=SERVE_START_S, what="serve healthy"
            )
            api = Api(session, base, TOKENS["operator"])
            for d in ids:
                fleet.start(d)

            async def registered() -> bool:
                devs = await api.call("GET", "/v1/devices", params={"online": "true"})
                return len(devs["devices"]) == len(ids)

            await wait_until(registered, what="devices registered")
            rel = await api.upload("app", "9.0")
            r = await api.rollout(rel["id"], target={"devices": ids}, phases=[34, 100],
                                  soak_s=4)  # fmt: skip

            async def first_phase_done() -> dict | None:
                st = await api.status(r["id"])
                return st if st["phases"][0]["succeeded"] == 3 else None

            await wait_until(first_phase_done, what="phase 1 succeeded")
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            await asyncio.sleep(0.5)
            proc = _serve(config, log)
            await wait_until(lambda: _healthy(session, base), what="serve healthy again")
            st = await api.status(r["id"])
            assert st["state"] == "running"
            assert st["phases"][0]["succeeded"] == 3

            async def completed() -> dict | None:
                st = await api.status(r["id"])
                return st if st["state"] in ("completed", "paused") else None

            done = await wait_until(completed, within=60, what="rollout completed")
            assert done["state"] == "completed", done
            assert done["states"] == {"succeeded": 6}
            assert_spoke(broker, mqtt_protocol, [broker.ORCHESTRATOR_USER, *ids])
    finally:
        await fleet.stop_all()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
