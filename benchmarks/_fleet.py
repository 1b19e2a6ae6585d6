"""Parent side of the benchmark fleet: device agents spread over worker processes
(``benchmarks._fleetproc``), plus the broker, keys and publisher the benchmarks share."""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetpush_protocol.topics import Topics, device_scope, group_scope
from fleetpush_sim.signing import Signer

REPO = Path(__file__).resolve().parents[1]
PER_WORKER = 2500  # device agents per worker process


@dataclass
class BenchSigner(Signer):
    """The test operator, sending the held notices of the fleet benchmarks."""

    def held_notice(
        self, rollout_id: str, *, group: str | None = None, device: str | None = None,
        seq: int = 1, topics: Topics,
    ) -> bytes:  # fmt: skip
        """A notice to ``group`` or to ``device``; the devices hold it (nothing downloads)."""
        name = group or str(device)
        _, data = self.notice(
            name, b"never downloaded: the devices hold updates", ["http://127.0.0.1:9/p"],
            version="9.9.9", notice_id=f"{rollout_id}-{name}", rollout_id=rollout_id,
            scope=group_scope(name) if group else device_scope(name),
            targets=() if group else (name,), groups=(name,) if group else (), seq=seq,
            topics=topics,
        )  # fmt: skip
        return data


class WorkerFleet:
    """Device agents in ``ceil(n / PER_WORKER)`` worker processes."""

    def __init__(self, config: dict[str, Any], devices: list[tuple[str, str]], log: Path) -> None:
        self.config = config
        self.devices = devices
        self.log = log
        self.procs: list[asyncio.subprocess.Process] = []

    async def _send(self, proc: asyncio.subprocess.Process, obj: dict[str, Any]) -> None:
        assert proc.stdin is not None
        proc.stdin.write((json.dumps(obj) + "\n").encode())
        await proc.stdin.drain()

    async def _recv(self, proc: asyncio.subprocess.Process, timeout_s: float) -> dict[str, Any]:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout_s)
        if not line:
            tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"a fleet worker exited:\n{tail}")
        data: dict[str, Any] = json.loads(line)
        return data

    async def start(self, timeout_s: float = 300) -> dict[str, Any]:
        """Start the workers and wait until every agent is connected and trusts keyring v1."""
        workers = max(1, math.ceil(len(self.devices) / PER_WORKER))
        per = math.ceil(len(self.devices) / workers)
        log = self.log.open("ab")
        started = time.perf_counter()
        for i in range(workers):
            share = self.devices[i * per : (i + 1) * per]
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "benchmarks._fleetproc", cwd=REPO,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log,
                limit=1 << 20,
            )  # fmt: skip
            self.procs.append(proc)
            await self._send(proc, {"config": {**self.config, "devices": share}})
        log.close()
        answers = [await self._recv(p, timeout_s) for p in self.procs]
        ready = sum(a["ready"] for a in answers)
        return {
            "workers": workers,
            "ready": ready,
            "connect_s": round(time.perf_counter() - started, 2),
            "max_worker_rss_mb": round(max(a["rss_kb"] for a in answers) / 1024, 1),
        }

    async def watch(
        self, rollout_id: str, timeout_s: float = 120, until: str | None = None
    ) -> None:
        """Time each agent's first report of ``rollout_id`` and, with ``until``, its first
        report of that state too (``collect`` waits for both)."""
        for p in self.procs:
            await self._send(p, {"watch": rollout_id, "timeout": timeout_s, "until": until})

    async def collect(self, timeout_s: float = 150) -> dict[str, Any]:
        """After ``watch``: how many agents verified the notice, and the last one's time."""
        answers = [await self._recv(p, timeout_s) for p in self.procs]
        lasts = [a["last"] for a in answers if a["last"] is not None]
        until = [a["until_last"] for a in answers if a.get("until_last") is not None]
        return {"count": sum(a["count"] for a in answers), "last": max(lasts, default=None),
                "cpu_s": sum(a["cpu_s"] for a in answers),
                "until_count": sum(a.get("until_count", 0) for a in answers),
                "until_last": max(until, default=None)}  # fmt: skip

    async def stop(self) -> None:
        for p in self.procs:
            if p.returncode is None:
                try:
                    await self._send(p, {"stop": True})
                    await self._recv(p, 60)
                except (RuntimeError, TimeoutError, ConnectionError, OSError):
                    pass
        for p in self.procs:
            try:
                await asyncio.wait_for(p.wait(), 30)
            except TimeoutError:
                p.kill()
                await p.wait()
        self.procs.clear()
