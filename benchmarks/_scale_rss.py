"""The orchestrator's memory with a million-device fleet: a fresh process (as ``fleetpush
serve`` would be) opens the store, creates a rollout for every device, runs the database
side of one engine pass and reads 100 device pages; it prints its peak RSS (VmHWM).

Run by ``benchmarks.scale`` as ``python -m benchmarks._scale_rss URL``, after the fleet is
registered, so the figure leaves out the benchmark's own lists of a million devices.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmarks.scale import create_like_api, engine_pass
from orchestrator.config import DatabaseConfig
from orchestrator.rollouts import TargetSpec
from orchestrator.rules import RolloutSpec
from orchestrator.store import DeviceFilter, open_store


def _mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def main(url: str) -> None:
    base = _mb("VmRSS")
    store = open_store(DatabaseConfig(url=url))
    try:
        rel = store.list_releases()[0]
        rid, _ = create_like_api(store, rel, TargetSpec(all=True), RolloutSpec(phases=(1.0, 100.0)))
        engine_pass(store, rid, prefix="rss")
        after = None
        for _ in range(100):
            page = store.list_devices(DeviceFilter(limit=100, after=after))
            after = page[-1].device_id
    finally:
        store.close()
    print(json.dumps({"start_mb": base, "peak_mb": _mb("VmHWM"), "now_mb": _mb("VmRSS")}))


if __name__ == "__main__":
    main(sys.argv[1])
