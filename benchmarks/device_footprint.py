"""What a device-only install costs: installed size, and the idle RSS of its running agent.

Three fresh virtualenvs in a temporary folder: an empty one, one with ``pip install .`` (the
device agent alone: device_client, fleetpush_protocol, fleetpush_common and their
dependencies) and one with ``pip install '.[orchestrator]'`` (everything, the ceiling of the
same run). Installed size is the disk usage of each ``site-packages`` less the empty one's.
The device-only venv is also checked to hold none of the service's dependencies.

Idle RSS: ``fleetpush-device`` from each venv's own ``bin/`` (so the checkout is not on its
path) runs against a real local Mosquitto, trusts keyring 1, and sits idle for a window;
then its RSS and USS are read. Runs alternate between the two venvs, ``ROUNDS`` times, and
the median and spread are given. Goals: the device-only install holds none of the service's
dependencies; its agent's idle RSS is under 40 MB (as device_idle) and no more than the
full install's (ratio 1.0). The install's size is reported with its largest parts, against
the full install of the same run. Needs the package index (pip) and Mosquitto.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.device_support import REPO, Watcher, publish, stop_agent, write_config
from fleetpush_protocol.topics import Topics
from fleetpush_sim.signing import Signer
from orchestrator.broker import MosquittoBroker

ROUNDS = 3
RSS_GOAL_MB = 40
SERVICE_ONLY = ("click", "rich", "cryptography", "psycopg", "psycopg_pool")


def _venv(path: Path, spec: str | None) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    if spec is not None:
        done = subprocess.run(
            [str(path / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", spec],
            capture_output=True, text=True, cwd=path, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"pip install {spec} failed:\n{done.stderr[-4000:]}")
    return path


def _site_packages(venv: Path) -> Path:
    found = list((venv / "lib").glob("python3*/site-packages"))
    assert len(found) == 1, found
    return found[0]


def _disk_usage(folder: Path) -> int:
    """Bytes on disk, as ``du`` counts them (allocated blocks, hard links once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            st = os.lstat(os.path.join(root, name))
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


def _largest(site: Path, empty: Path, n: int = 6) -> dict[str, float]:
    """The biggest top-level entries that the install added to ``site``, in MB."""
    before = {p.name for p in empty.iterdir()}
    sizes = {
        p.name: _disk_usage(p) if p.is_dir() else p.lstat().st_blocks * 512
        for p in site.iterdir()
        if p.name not in before and not p.name.endswith(".dist-info")
    }
    top = sorted(sizes.items(), key=lambda kv: -kv[1])[:n]
    return {name: round(size / 1e6, 1) for name, size in top}


def _importable(venv: Path, modules: tuple[str, ...]) -> list[str]:
    code = (
        "import importlib.util, sys\n"
        f"print(' '.join(m for m in {list(modules)!r} if importlib.util.find_spec(m)))"
    )
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code],
        check=True, capture_output=True, text=True, cwd=venv,
    )  # fmt: skip
    return out.stdout.split()


def _spawn(venv: Path, folder: Path, config: dict[str, Any]) -> subprocess.Popen[bytes]:
    """The venv's own ``fleetpush-device``, run from ``folder`` (not the checkout)."""
    folder.mkdir()
    path = folder / "device.toml"
    write_config(path, **config)
    with (folder / "agent.log").open("ab") as log:
        return subprocess.Popen(
            [str(venv / "bin" / "fleetpush-device"), "--config", str(path)],
            stdout=log, stderr=log, cwd=folder,
        )  # fmt: skip


async def _idle_rss(
    venv: Path, folder: Path, watcher: Watcher, config: dict[str, Any], window_s: float
) -> tuple[float, float]:
    watcher.online.clear()
    proc = _spawn(venv, folder, config)
    try:
        await asyncio.wait_for(watcher.online.wait(), 30)
        await asyncio.sleep(window_s)  # idle: what a connected device holds between updates
        ps = psutil.Process(proc.pid)
        rss, uss = ps.memory_info().rss, ps.memory_full_info().uss
    finally:
        stop_agent(proc)
    return rss / 1e6, uss / 1e6


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 1),
        "min": round(min(values), 1),
        "max": round(max(values), 1),
    }


async def _rss(tmp: Path, venvs: dict[str, Path], window_s: float) -> dict[str, Any]:
    topics = Topics("bench-footprint")
    broker = MosquittoBroker(tmp / "broker", topics=topics)
    broker.start()
    signer = Signer()
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in venvs}
    try:
        await publish(broker, topics.keyring(1), signer.keyring())
        password = broker.add_device("bench-dev")
        broker.reload()
        config = {"port": broker.port, "password": password, "prefix": topics.prefix,
                  "root": signer.root.public_key, "keepalive": 60, "health": []}  # fmt: skip
        async with Watcher(broker, topics) as watcher:
            for i in range(ROUNDS):
                for name, venv in venvs.items():
                    folder = tmp / f"agent-{name}-{i}"
                    rss = await _idle_rss(venv, folder, watcher, config, window_s)
                    samples[name].append(rss)
    finally:
        broker.stop()
    out: dict[str, Any] = {}
    for name, runs in samples.items():
        out[f"{name}_rss_mb"] = _spread([r for r, _ in runs])
        out[f"{name}_uss_mb"] = _spread([u for _, u in runs])
    device = statistics.median(r for r, _ in samples["device"])
    full = statistics.median(r for r, _ in samples["full"])
    out["rss_ratio_device_to_full"] = round(device / full, 2)
    out["rss_goal_mb"] = RSS_GOAL_MB
    out["rss_ok"] = device < RSS_GOAL_MB
    return out


def run(quick: bool = False) -> dict[str, Any]:
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with tempfile.TemporaryDirectory(prefix="fp-footprint-") as t:
        tmp = Path(t)
        empty = _venv(tmp / "venv-empty", None)
        device = _venv(tmp / "venv-device", str(REPO))
        full = _venv(tmp / "venv-full", f"{REPO}[orchestrator]")
        base = _disk_usage(_site_packages(empty))
        device_bytes = _disk_usage(_site_packages(device)) - base
        full_bytes = _disk_usage(_site_packages(full)) - base
        leaked = _importable(device, SERVICE_ONLY)
        result: dict[str, Any] = {
            "date": started,
            "device_install_mb": round(device_bytes / 1e6, 1),
            "full_install_mb": round(full_bytes / 1e6, 1),
            "size_ratio_device_to_full": round(device_bytes / full_bytes, 2),
            "device_largest_mb": _largest(_site_packages(device), _site_packages(empty)),
            "service_deps_in_device_install": leaked,
            "service_deps_ok": not leaked,
        }
        window = 5.0 if quick else 20.0
        result["idle_window_s"] = window
        result |= asyncio.run(_rss(tmp, {"device": device, "full": full}, window))
    return result


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
