"""Time from publishing a notice to the device's ``succeeded`` report, for a 10 MiB payload
on loopback, against ``curl`` downloading the same file from the same server in the same
run. Goal: notice-to-succeeded within 1.5x the bare download.

The agent runs as its own process; the notice path is all of it: MQTT delivery, Ed25519
verification, the persisted state machine (fsync before each step), the download with
Range support and SHA-256, the directory handler (tar unpack, fsync of every file, atomic
symlink switch), the health check (``/bin/true``) and the reports over MQTT.

``extraction`` measures, in the same run, what the payload checks of issue 12 cost: the
device's ``unpack`` (header pass with every check, then its own O_NOFOLLOW writes and
fsyncs) against the ceiling it replaced, ``tarfile``'s ``extractall(filter="data")`` plus
an fsync of every file and folder, and the header pass alone, on the same 10 MiB payload
and on 5,000 small files with symlinks (where per-member checks weigh most), with the
floor of any header pass (``tarfile`` listing the members, nothing checked). Rounds are
interleaved so a slow disk moment hits every variant alike.
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
from device_client.handlers.extract import check_archive, unpack
from fleetpush_common.atomic import fsync_dir
from fleetpush_protocol.topics import Topics
from fleetpush_sim.signing import Signer
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


def _many_files(n: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for i in range(n):
            data = os.urandom(1024)
            info = tarfile.TarInfo(f"app/d{i % 50:02d}/f{i:05d}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for i in range(n // 10):
            link = tarfile.TarInfo(f"app/links/l{i:05d}")
            link.type = tarfile.SYMTYPE
            link.linkname = f"../d{i % 50:02d}/f{i:05d}"
            tar.addfile(link)
    return buf.getvalue()


def _tarfile_unpack(payload: Path, dest: Path) -> None:
    """The ceiling: what the device did before issue 12 (tarfile's filter, then fsync)."""
    dest.mkdir()
    with tarfile.open(payload, "r:*") as tar:
        tar.extractall(dest, filter="data")
    for folder, _dirs, files in os.walk(dest):
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                fd = os.open(path, os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)
        fsync_dir(Path(folder))


def _tarfile_headers(payload: Path) -> None:
    """The floor of any header pass: tarfile reading the member list, nothing checked."""
    with tarfile.open(payload, "r:*") as tar:
        tar.getmembers()


def _timed(step: Any, *args: Any) -> float:
    start = time.perf_counter()
    step(*args)
    return time.perf_counter() - start


def _extraction(tmp: Path, payload: bytes, rounds: int) -> dict[str, Any]:
    cases = {"10mib_one_file": payload, "5000_files_500_symlinks_gz": _many_files(5000)}
    out: dict[str, Any] = {}
    for case, data in cases.items():
        path = tmp / f"{case}.tar"
        path.write_bytes(data)
        times: dict[str, list[float]] = {
            "tarfile_data_filter": [], "unpack": [], "checks": [], "tarfile_headers": []
        }  # fmt: skip
        for r in range(rounds + 1):  # round 0 warms the page cache and imports
            got = {
                "tarfile_data_filter": _timed(_tarfile_unpack, path, tmp / f"old-{r}"),
                "unpack": _timed(unpack, path, tmp / f"new-{r}"),
                "checks": _timed(check_archive, path),
                "tarfile_headers": _timed(_tarfile_headers, path),
            }
            shutil.rmtree(tmp / f"old-{r}")
            shutil.rmtree(tmp / f"new-{r}")
            if r:
                for name, t in got.items():
                    times[name].append(t)
        med = {name: statistics.median(ts) for name, ts in times.items()}
        out[case] = {
            "payload_bytes": len(data),
            **{f"{name}_ms_median": round(m * 1000, 2) for name, m in med.items()},
            **{f"{name}_ms_all": [round(t * 1000, 2) for t in ts] for name, ts in times.items()},
            "unpack_vs_tarfile": round(med["unpack"] / med["tarfile_data_filter"], 2),
            "checks_share_of_unpack": round(med["checks"] / med["unpack"], 2),
            "checks_vs_tarfile_headers": round(med["checks"] / med["tarfile_headers"], 2),
        }
    return out


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
        extraction = await asyncio.to_thread(_extraction, tmp, payload, runs)
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
        "extraction": extraction,
    }


def run(quick: bool = False) -> dict[str, Any]:
    return asyncio.run(_run(quick))
