"""Parent side of the benchmark fleet: device agents spread over worker processes
(``benchmarks._fleetproc``), plus the broker, keys and publisher the benchmarks share."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetpush_protocol.envelope import sign_message
from fleetpush_protocol.keys import KeyPair
from fleetpush_protocol.messages import (
    Keyring,
    Payload,
    Release,
    SigningKeyInfo,
    Target,
    UpdateNotice,
)
from fleetpush_protocol.topics import Topics, device_scope, group_scope

REPO = Path(__file__).resolve().parents[1]
DAY = 86_400
PER_WORKER = 2500  # device agents per worker process


@dataclass
class BenchSigner:
    """An operator's keys: root, signing key, keyring v1, and notices to groups or devices."""

    root: KeyPair = field(default_factory=KeyPair.generate)
    signing: KeyPair = field(default_factory=KeyPair.generate)

    @property
    def root_hex(self) -> str:
        return self.root.public_key.hex()

    def keyring(self) -> bytes:
        now = int(time.time())
        ring = Keyring(
            version=1, root_keys=(self.root.public_key,), root_threshold=1,
            signing_keys=(SigningKeyInfo(public_key=self.signing.public_key,
                                         not_before=now - DAY, not_after=now + DAY),),
            signing_threshold=1, revoked=(), issued_at=now - 60,
        )  # fmt: skip
        return sign_message(ring, [self.root])

    def notice(
        self, rollout_id: str, *, group: str | None = None, device: str | None = None,
        seq: int = 1, topics: Topics,
    ) -> bytes:  # fmt: skip
        now = int(time.time())
        payload = b"never downloaded: the devices hold updates"
        scope = group_scope(group) if group else device_scope(str(device))
        notice = UpdateNotice(
            notice_id=f"{rollout_id}-{device or group}", rollout_id=rollout_id,
            release=Release(name="app", version="9.9.9"),
            payload=Payload(urls=("http://127.0.0.1:9/p",), size=len(payload),
                            sha256=hashlib.sha256(payload).digest()),
            handler="directory", handler_args={},
            target=Target(groups=(group,)) if group else Target(devices=(str(device),)),
            issued_at=now, expires_at=now + DAY, scope=scope, seq=seq,
            reply_topic=topics.prefix + "/device/{device_id}/report",
        )  # fmt: skip
        return sign_message(notice, [self.signing])


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

    async def watch(self, rollout_id: str, timeout_s: float = 120) -> None:
        for p in self.procs:
            await self._send(p, {"watch": rollout_id, "timeout": timeout_s})

    async def collect(self, timeout_s: float = 150) -> dict[str, Any]:
        """After ``watch``: how many agents verified the notice, and the last one's time."""
        answers = [await self._recv(p, timeout_s) for p in self.procs]
        lasts = [a["last"] for a in answers if a["last"] is not None]
        return {"count": sum(a["count"] for a in answers), "last": max(lasts, default=None),
                "cpu_s": sum(a["cpu_s"] for a in answers)}  # fmt: skip

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
