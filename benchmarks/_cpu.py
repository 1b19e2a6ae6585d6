"""Where a benchmark's CPU went: seconds per component, and how busy the machine was.

On a shared 2-core machine a throughput figure alone cannot say whether a ceiling is a
component's own or the machine's: these samples can. A component is a set of root pids,
counted with their children (PostgreSQL's backends are children of its postmaster), but
not with a child that is another component's root (the replicas are the benchmark
process's children, and are counted once, as replicas). A child that exits between two
samples takes its time with it, so take the last sample before anything stops.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import psutil

__all__ = ["CpuSample", "CpuWatch"]


def _tree_seconds(pid: int, others: set[int]) -> dict[int, float]:
    """CPU seconds of ``pid`` and its descendants, leaving out the subtrees of ``others``."""
    out: dict[int, float] = {}
    todo = [pid]
    while todo:
        try:
            p = psutil.Process(todo.pop())
            t = p.cpu_times()
            children = p.children()
        except psutil.NoSuchProcess:
            continue
        out[p.pid] = t.user + t.system
        todo += [c.pid for c in children if c.pid not in others]
    return out


@dataclass(frozen=True)
class CpuSample:
    at: float
    machine_busy_s: float
    per_pid: Mapping[str, Mapping[int, float]]


class CpuWatch:
    """Samples the CPU seconds of named components (``name -> root pids``)."""

    def __init__(self, components: Callable[[], Mapping[str, list[int]]]) -> None:
        self._components = components

    def sample(self) -> CpuSample:
        t = psutil.cpu_times()
        busy = (
            t.user
            + t.system
            + getattr(t, "nice", 0.0)
            + getattr(t, "softirq", 0.0)
            + (getattr(t, "irq", 0.0))
        )
        components = self._components()
        per_pid: dict[str, dict[int, float]] = {}
        for name, roots in components.items():
            others = {pid for n, pids in components.items() if n != name for pid in pids}
            found: dict[int, float] = {}
            for pid in roots:
                found.update(_tree_seconds(pid, others))
            per_pid[name] = found
        return CpuSample(time.perf_counter(), busy, per_pid)

    @staticmethod
    def between(a: CpuSample, b: CpuSample) -> dict[str, float]:
        """Cores each component kept busy from ``a`` to ``b`` (1.0 = one whole core), and
        ``machine``: the whole machine's, all processes (others' jobs too)."""
        wall = max(b.at - a.at, 1e-9)
        out = {}
        for name, now in b.per_pid.items():
            before = a.per_pid.get(name, {})
            spent = sum(s - before.get(pid, 0.0) for pid, s in now.items())
            out[name] = round(spent / wall, 2)
        out["machine"] = round((b.machine_busy_s - a.machine_busy_s) / wall, 2)
        out["machine_cores"] = psutil.cpu_count() or 1
        return out
