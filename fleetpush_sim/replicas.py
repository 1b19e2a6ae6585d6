"""Several ``fleetpush serve`` replicas on one database, for the demo and the tests.

``ReplicaSet`` writes one configuration per replica next to a base ``orchestrator.toml``
(``write_orchestrator_files``): its own broker identity (the MQTT client id), its own HTTP
port, ``public_url`` on a ``Balancer``; the data folder (keys, URL-signing key, payloads)
and the database are shared, as replicas on one machine share them (docs/scaling.md).
Each replica is a real ``fleetpush -v serve`` process in its own process group, with its
log beside its configuration.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
from aiohttp import web

from fleetpush_common.atomic import write_secret
from orchestrator.broker import MosquittoBroker, free_port

__all__ = ["Balancer", "Replica", "ReplicaSet", "ServeProcess"]


class ServeProcess:
    """``fleetpush -v serve --config CONFIG`` in its own process group, its output in
    ``log``: started, SIGTERMed or SIGKILLed at will (the replicas, the fault tests)."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [str(Path(sys.executable).with_name("fleetpush")), "-v", "serve", "--config",
                str(self.config)]  # fmt: skip
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=out, start_new_session=True)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, the whole process group."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        """SIGTERM (a replica gives up its leases), SIGKILL after 15 s."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


class Replica(ServeProcess):
    """One replica: its broker identity (= MQTT client id = replica id) and HTTP port."""

    def __init__(self, name: str, config: Path, port: int) -> None:
        super().__init__(config, config.with_suffix(".log"))
        self.name = name
        self.port = port

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class ReplicaSet:
    """``n`` replica configurations derived from ``root/orchestrator.toml``."""

    def __init__(
        self, root: Path, broker: MosquittoBroker, n: int, *, lease: str = "3s", public_url: str
    ) -> None:
        text = (root / "orchestrator.toml").read_text()
        self.items: list[Replica] = []
        for i in range(n):
            name = f"{broker.topics.prefix}-r{i + 1}"
            write_secret(root / f"r{i + 1}.password", broker.add_orchestrator(name).encode())
            port = free_port()
            lines = []
            for original in text.splitlines():
                line = original
                if line.startswith("listen = "):
                    line = f'listen = "127.0.0.1:{port}"'
                elif line.startswith("username = "):
                    line = f'username = "{name}"'
                elif line.startswith("password_file = "):
                    line = f'password_file = "r{i + 1}.password"'
                elif line == "[http]":
                    line += f'\npublic_url = "{public_url}"'
                elif line == "[rollouts]":
                    line += f'\nlease = "{lease}"'
                lines.append(line)
            config = root / f"r{i + 1}.toml"
            config.write_text("\n".join(lines) + "\n")
            self.items.append(Replica(name, config, port))
        broker.reload()

    def start(self) -> None:
        for r in self.items:
            r.start()

    def stop(self) -> None:
        for r in self.items:
            r.stop()

    def by_name(self, name: str) -> Replica:
        return next(r for r in self.items if r.name == name)


class Balancer:
    """A minimal HTTP load balancer over the replicas (what ``[http] public_url`` points at
    in production): each request goes to the next replica that answers, so a device
    notified by a replica that died still fetches its payload from another, and API
    clients keep working. Bodies are read whole (demo- and test-sized)."""

    def __init__(self) -> None:
        self.backends: list[str] = []
        self.port = free_port()
        self._next = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        if self._session is None or not self.backends:
            return web.Response(status=503, text="no replicas")
        passed = ("range", "authorization", "content-type")
        headers = {k: v for k, v in request.headers.items() if k.lower() in passed}
        keep = ("content-type", "content-range", "accept-ranges", "etag")
        data = await request.read()
        for _ in range(len(self.backends)):
            self._next = (self._next + 1) % len(self.backends)
            url = self.backends[self._next] + request.path_qs
            try:
                async with self._session.request(
                    request.method, url, headers=headers, data=data or None
                ) as up:
                    body = await up.read()
                    out = {k: v for k, v in up.headers.items() if k.lower() in keep}
                    return web.Response(status=up.status, body=body, headers=out)
            except aiohttp.ClientError:
                continue  # that replica is down (or died answering): the next one
        return web.Response(status=502, text="no replica answers")
