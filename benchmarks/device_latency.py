"""Time from publishing a notice to the device's ``succeeded`` report, for a 10 MiB payload
on loopback, against ``curl`` downloading the same file from the same server in the same
run. Goal: notice-to-succeeded within 1.5x the bare download.

The agent runs as its own process; the notice path is all of it: MQTT delivery, Ed25519
verification, the persisted state machine (fsync before each step), the download with
Range support and SHA-256, the directory handler (tar unpack, fsync of every file, atomic
symlink switch), the health check (``/bin/true``) and the reports over MQTT.
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.device_support import (
    Watcher,
    file_server,
    publish,
    spawn_agent,
    stop_agent,
    write_config,
)
from fleetpush_protocol.testing import Signer
from fleetpush_protocol.topics import Topics
from orchestrator.broker import MosquittoBroker

SIZE = 10 * 1024 * 1024  # bytes


def _payload() -> bytes:
    buf = io.BytesIO()
    data = os.urandom(SIZE - 10240)  # the tar adds headers and padding
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("app.bin")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _curl(url: str, out: Path) -> float:
    result = subprocess.run(
        ["curl", "-s", "-o", str(out), "-w", "%{time_total}", url],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(result.stdout)


def _fsync_cost(path: Path) -> float:
    """What making the downloaded bytes durable costs (write again + fsync), seconds."""
    data = path.read_bytes()
    start = time.perf_counter()
    with (path.parent / "durable.out").open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return time.perf_counter() - start


async def _run(quick: bool) -> dict[str, Any]:
    runs = 3 if quick else 7
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        www = tmp / "www"
        www.mkdir()
        payload = _payload()
        topics = Topics("bench-latency")
        broker = MosquittoBroker(tmp / "broker", topics=topics)
        broker.start()
        signer = Signer()
        agent_times: list[float] = []
        curl_times: list[float] = []
        fsync_times: list[float] = []
        try:
            await publish(broker, topics.keyring(1), signer.keyring())
            password = broker.add_device("bench-dev")
            broker.reload()
            config = tmp / "agent" / "device.toml"
            config.parent.mkdir()
            write_config(
                config, port=broker.port, password=password, prefix=topics.prefix,
                root=signer.root.public_key, keepalive=60, health=["/bin/true"],
            )  # fmt: skip
            async with file_server(www) as port, Watcher(broker, topics) as watcher:
                proc = spawn_agent(config)
                try:
                    await asyncio.wait_for(watcher.online.wait(), 30)
                    for i in range(runs + 1):  # the first run warms up (imports aiohttp)
                        name = f"app-{i}.tar"
                        (www / name).write_bytes(payload)
                        url = f"http://127.0.0.1:{port}/{name}"
                        bare = await asyncio.to_thread(_curl, url, tmp / "curl.out")
                        notice, data = signer.notice(
                            "bench-dev",
                            payload,
                            [url],
                            version=f"1.{i}",
                            rollout_id=f"r-{i}",
                            topics=topics,
                        )
                        nid = notice.notice_id
                        start = time.perf_counter()
                        await publish(broker, topics.device_notice("bench-dev"), data)
                        done = await watcher.wait_state(nid, "succeeded")
                        if i:
                            agent_times.append(done - start)
                            curl_times.append(bare)
                            fsync_times.append(_fsync_cost(tmp / "curl.out"))
                        (www / name).unlink()
                finally:
                    stop_agent(proc)
        finally:
            broker.stop()
            shutil.rmtree(www, ignore_errors=True)
    agent = statistics.median(agent_times)
    bare = statistics.median(curl_times)
    return {
        "payload_bytes": len(payload),
        "runs": runs,
        "notice_to_succeeded_s_median": round(agent, 4),
        "notice_to_succeeded_s_all": [round(t, 4) for t in agent_times],
        "curl_download_s_median": round(bare, 4),
        "curl_download_s_all": [round(t, 4) for t in curl_times],
        "ratio": round(agent / bare, 2),
        "write_and_fsync_10mib_s_median": round(statistics.median(fsync_times), 4),
        # The floor of any durable install: fetch the bytes, then make them durable once.
        "ratio_vs_download_plus_fsync": round(agent / (bare + statistics.median(fsync_times)), 2),
        "goal_ratio": 1.5,
        "ok": agent / bare <= 1.5,
    }


def run(quick: bool = False) -> dict[str, Any]:
    return asyncio.run(_run(quick))
