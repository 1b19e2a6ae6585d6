"""Load: thousands of devices connected while a rollout runs and operators query the API.

The orchestrator is real: ``fleetpush serve`` as its own process (SQLite, HTTP, MQTT), its
memory read with psutil. The devices are lightweight: one raw-socket MQTT 3.1.1 client
each (``_mqtt_raw``), all in this process, that verify every keyring and notice with the
real ``fleetpush_protocol.DeviceTrust`` and answer an accepted notice with the real
sequence of ``Report`` messages (notified .. succeeded), without downloading the payload
(the HTTP side is measured by ``serving``). Meanwhile four "operators" poll the API.

Correctness is checked, not just timed: the rollout completes with every device
``succeeded``, and the orchestrator stored exactly the reports the devices sent.

    .venv/bin/python -m benchmarks load            # 5,000 devices
    .venv/bin/python -m benchmarks load --quick    # 300 devices (the CI test runs this)
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from benchmarks._mqtt_raw import RawSubscriber, connect_all
from fleetpush_protocol.driver import Accepted, DeviceTrust
from fleetpush_protocol.envelope import encode_message
from fleetpush_protocol.messages import (
    Inventory,
    Presence,
    Report,
    ReportState,
    UpdateNotice,
)
from fleetpush_protocol.topics import Topics
from fleetpush_protocol.verify import DeviceIdentity, TrustedKeyring, VerifyPolicy
from fleetpush_sim.fleet import provision_passwords
from fleetpush_sim.release import make_tar
from fleetpush_sim.stack import LocalStack
from orchestrator.mqtt import codec

STATES = [
    ReportState.NOTIFIED, ReportState.DOWNLOADING, ReportState.DOWNLOADED,
    ReportState.INSTALLING, ReportState.INSTALLED, ReportState.SUCCEEDED,
]  # fmt: skip
STEP_S = 0.2  # seconds between a simulated device's reports


@dataclass
class SimDevice:
    """One raw MQTT client that verifies like a device and reports like one."""

    device_id: str
    password: str
    topics: Topics
    trust: DeviceTrust
    version: str = "1.0"
    counter: int = 0
    done: set[str] = field(default_factory=set)
    sub: RawSubscriber | None = None
    _ids: int = 0

    def client(self) -> RawSubscriber:
        self.sub = RawSubscriber(
            self.device_id, self.device_id, self.password,
            [self.topics.keyring_filter, self.topics.device_notice(self.device_id)],
            on_publish=self.on_publish,
        )  # fmt: skip
        return self.sub

    def send(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        assert self.sub is not None
        self._ids = self._ids % 65535 + 1
        self.sub.send(codec.publish(topic, payload, 1, self._ids, retain=retain, version=4))

    def hello(self) -> None:
        now = int(time.time())
        self.send(self.topics.presence(self.device_id),
                  encode_message(Presence(device_id=self.device_id, online=True, at=now)),
                  retain=True)  # fmt: skip
        inv = Inventory(device_id=self.device_id, model="sim", groups=(), client_version="load",
                        installed=(), free_bytes=1 << 30, at=now)  # fmt: skip
        self.send(self.topics.inventory(self.device_id), encode_message(inv), retain=True)

    def on_publish(self, topic: str, payload: bytes) -> bool:
        if not payload:
            return False
        if topic.startswith(self.topics.keyring_filter[:-1]):
            self.trust.on_keyring(payload)
            return False
        identity = DeviceIdentity(self.device_id, "sim", frozenset(), self.version)
        outcome = self.trust.on_notice(payload, identity, int(time.time()))
        if not isinstance(outcome, Accepted):
            return False
        notice = outcome.verified.message
        if isinstance(notice, UpdateNotice):
            asyncio.get_running_loop().create_task(self.update(notice))
        return True

    async def update(self, notice: UpdateNotice) -> None:
        topic = notice.reply_topic.replace("{device_id}", self.device_id)
        for state in STATES:
            if state is ReportState.SUCCEEDED:
                self.version = notice.release.version
            self.counter += 1
            report = Report(
                device_id=self.device_id, notice_id=notice.notice_id,
                rollout_id=notice.rollout_id, state=state, current_version=self.version,
                counter=self.counter, reported_at=int(time.time()),
            )  # fmt: skip
            self.send(topic, encode_message(report))
            await asyncio.sleep(STEP_S)
        self.done.add(notice.notice_id)


class Operators:
    """Poll the API like people watching a rollout; record each call's latency."""

    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self.headers = {"Authorization": f"Bearer {token}"}
        self.latencies: list[float] = []
        self.errors = 0
        self.rollout_id = 0
        self._stop = asyncio.Event()

    async def run(self, session: aiohttp.ClientSession, who: int) -> None:
        paths = ["/v1/devices?limit=100", "/v1/rollouts", "/metrics"]
        i = who
        while not self._stop.is_set():
            path = paths[i % len(paths)]
            if self.rollout_id and i % 2:
                path = f"/v1/rollouts/{self.rollout_id}" if i % 4 == 1 else (
                    f"/v1/rollouts/{self.rollout_id}/targets?limit=100")  # fmt: skip
            t = time.perf_counter()
            try:
                async with session.get(self.base + path, headers=self.headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        self.errors += 1
            except aiohttp.ClientError:
                self.errors += 1
            self.latencies.append(time.perf_counter() - t)
            i += 1
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _call(session: aiohttp.ClientSession, method: str, url: str, token: str,
                **kw: Any) -> Any:  # fmt: skip
    async with session.request(method, url, headers={"Authorization": f"Bearer {token}"},
                               **kw) as resp:  # fmt: skip
        body = await resp.json(content_type=None)
        if resp.status >= 300:
            raise RuntimeError(f"{method} {url}: {resp.status} {body}")
        return body


async def _wait(check: Any, within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        result = await check()
        if result:
            return result
        await asyncio.sleep(0.25)
    raise TimeoutError(f"timed out after {within}s waiting for {what}")


def _serve(stack: LocalStack) -> tuple[Any, subprocess.Popen[bytes]]:
    log = (stack.root / "serve.log").open("ab")
    argv = [str(Path(sys.executable).with_name("fleetpush")), "serve", "--config",
            str(stack.config_path)]  # fmt: skip
    return log, subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)


async def run_load(n: int, *, within: float = 600) -> dict[str, Any]:
    """Run the scenario with ``n`` devices; raise if anything is lost or wrong."""
    out: dict[str, Any] = {"devices": n}
    with LocalStack(tick="200ms", batch_interval="50ms") as stack:
        assert stack.broker is not None
        ids = [f"ld-{i:05d}" for i in range(n)]
        passwords = provision_passwords(stack.broker, ids)
        log, proc = _serve(stack)
        rss = psutil.Process(proc.pid)
        samples: list[float] = []
        devices: list[SimDevice] = []
        try:
            async with aiohttp.ClientSession() as session:
                base, token = stack.api_url, stack.token

                async def up() -> bool:
                    try:
                        async with session.get(base + "/healthz") as resp:
                            return resp.status == 200
                    except aiohttp.ClientError:
                        return False

                await _wait(up, 60, "serve healthy")
                await asyncio.sleep(1)
                out["rss_idle_mb"] = round(rss.memory_info().rss / 2**20, 1)
                anchor = TrustedKeyring.anchor([bytes.fromhex(stack.root_key)])
                devices = [SimDevice(d, passwords[d], stack.topics,
                                     DeviceTrust(trusted=anchor, policy=VerifyPolicy()))
                           for d in ids]  # fmt: skip
                subs = [d.client() for d in devices]
                t = time.perf_counter()
                await connect_all(subs, stack.broker.host, stack.broker.port)
                for d in devices:
                    d.hello()
                out["connect_s"] = round(time.perf_counter() - t, 2)

                async def registered() -> bool:
                    body = await _call(session, "GET", base + "/v1/devices", token,
                                       params={"online": "true", "limit": str(n + 10)})  # fmt: skip
                    return len(body["devices"]) >= n

                await _wait(registered, 120, "every device registered")
                out["registered_s"] = round(time.perf_counter() - t, 2)
                out["rss_connected_mb"] = round(rss.memory_info().rss / 2**20, 1)

                operators = Operators(base, token)
                polls = [asyncio.create_task(operators.run(session, i)) for i in range(4)]

                async def sample() -> None:
                    while True:
                        samples.append(rss.memory_info().rss / 2**20)
                        await asyncio.sleep(0.5)

                sampler = asyncio.create_task(sample())
                rel = await _call(session, "POST", base + "/v1/releases", token,
                                  data=make_tar({"app/VERSION": b"2.0\n"}),
                                  params={"name": "app", "version": "2.0",
                                          "handler": "directory"})  # fmt: skip
                t0 = time.perf_counter()
                r = await _call(session, "POST", base + "/v1/rollouts", token, json={
                    "release": rel["id"], "target": {"all": True}, "phases": [1, 10, 50, 100],
                    "success_pct": 95, "soak_s": 0, "rate_per_min": 60_000,
                    "min_attempts": 1000, "device_timeout_s": 600,
                })  # fmt: skip
                operators.rollout_id = r["id"]

                async def completed() -> dict[str, Any] | None:
                    st: dict[str, Any] = await _call(
                        session, "GET", f"{base}/v1/rollouts/{r['id']}", token
                    )
                    return st if st["state"] in ("completed", "paused", "aborted") else None

                final = await _wait(completed, within, "rollout finished")
                out["rollout_s"] = round(time.perf_counter() - t0, 2)
                operators.stop()
                await asyncio.gather(*polls)
                sampler.cancel()
                await asyncio.sleep(2)
                out["rss_after_mb"] = round(rss.memory_info().rss / 2**20, 1)
                out["rss_peak_mb"] = round(max(samples, default=0.0), 1)
                lat = operators.latencies
                out["api_calls"] = len(lat)
                out["api_errors"] = operators.errors
                out["api_p50_ms"] = round(_pct(lat, 0.5) * 1000, 1)
                out["api_p99_ms"] = round(_pct(lat, 0.99) * 1000, 1)
                out["api_max_ms"] = round(max(lat, default=0.0) * 1000, 1)
                out["api_mean_ms"] = round(statistics.fmean(lat) * 1000, 1) if lat else 0.0
                out["rollout_state"] = final["state"]
                out["states"] = final["states"]
        finally:
            for s in (d.sub for d in devices):
                if s is not None:
                    await s.close()
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(30)
            log.close()
        # Correctness: every report each device sent is stored once, nothing else.
        con = sqlite3.connect(stack.data_dir / "fleetpush.db")
        try:
            stored = dict(con.execute("SELECT device_id, count(*) FROM reports GROUP BY device_id"))
            accepted = con.execute("SELECT count(*) FROM reports WHERE accepted = 1").fetchone()[0]
        finally:
            con.close()
        sent = {d.device_id: d.counter for d in devices}
        out["reports_sent"] = sum(sent.values())
        out["reports_stored"] = sum(stored.values())
        problems = []
        if out["rollout_state"] != "completed" or out["states"] != {"succeeded": n}:
            problems.append(f"rollout {out['rollout_state']} {out['states']}")
        if stored != {d: c for d, c in sent.items() if c}:
            missing = [d for d in sent if stored.get(d, 0) != sent[d]]
            problems.append(f"reports differ for {len(missing)} devices, e.g. {missing[:3]}")
        if accepted != out["reports_sent"]:
            problems.append(f"{accepted} accepted of {out['reports_sent']}")
        if out["api_errors"]:
            problems.append(f"{out['api_errors']} API errors")
        if problems:
            raise AssertionError("; ".join(problems))
    return out


def run(quick: bool = False) -> dict[str, Any]:
    return asyncio.run(run_load(300 if quick else 5000))


if __name__ == "__main__":
    import json

    print(json.dumps(run("--quick" in sys.argv), indent=2))
