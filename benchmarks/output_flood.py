"""What draining a step's output costs the agent (issue 18): a child printing 50 MB.

``run_command`` reads both pipes into rolling tails while the child writes; the ceiling of
the same run is the same child with both streams on /dev/null (no reading at all). Runs
alternate, ``ROUNDS`` times; the median, the spread (min..max) and the ratio of medians
are given, with the Python heap's peak during a drained run (tracemalloc) and the load
average. Goal: the peak stays under 2 MiB whatever the child prints.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
from typing import Any

from device_client.commands import run_command

ROUNDS = 5
CHILD = (
    "import sys\n"
    "line = b'y' * 1023 + b'\\n'\n"
    "for _ in range({n}): sys.stdout.buffer.write(line); sys.stderr.buffer.write(line)\n"
)


def _ceiling(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def _drained(argv: list[str]) -> tuple[float, int]:
    tracemalloc.start()
    try:
        start = time.perf_counter()
        result = asyncio.run(run_command(argv, timeout_s=600))
        took = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    if result.returncode != 0:
        raise RuntimeError(result.describe())
    return took, peak


def run(quick: bool = False) -> dict[str, Any]:
    mib = 10 if quick else 50
    argv = [sys.executable, "-c", CHILD.format(n=mib * 512)]  # half on each stream
    drained: list[float] = []
    ceiling: list[float] = []
    peaks: list[int] = []
    load = os.getloadavg()[0]
    for _ in range(ROUNDS):
        ceiling.append(_ceiling(argv))
        took, peak = _drained(argv)
        drained.append(took)
        peaks.append(peak)
    d, c = statistics.median(drained), statistics.median(ceiling)
    return {
        "printed_mib": mib,
        "drained_s": {"median": round(d, 3), "min": round(min(drained), 3),
                      "max": round(max(drained), 3)},
        "ceiling_devnull_s": {"median": round(c, 3), "min": round(min(ceiling), 3),
                              "max": round(max(ceiling), 3)},
        "ratio_to_ceiling": round(d / c, 2),
        "drained_mib_per_s": round(mib / d, 1),
        "peak_heap_kib": round(max(peaks) / 1024, 1),
        "load_avg_1m": {"before": round(load, 2), "after": round(os.getloadavg()[0], 2)},
    }  # fmt: skip
