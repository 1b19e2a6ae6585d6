"""Payload serving: the orchestrator's signed payload URL against nginx, same file, same run.

8 parallel ``curl`` clients each download a 32 MiB payload repeatedly over loopback (one
connection per client, reused); throughput is bytes received by all clients over the wall
time. The orchestrator runs in this process (its HTTP API answering
``/payloads/{sha256}?exp=..&sig=..`` with aiohttp's FileResponse); nginx, when installed,
serves the same file from the orchestrator's payload folder with ``sendfile on``.

Ceiling (docs/performance.md, section 10 of the reference): nginx about 2.4 GB/s, aiohttp
FileResponse about 1.8 GB/s (0.76x) on this kind of machine.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp

from fleetpush_sim.api import AsyncApi
from fleetpush_sim.limits import raise_open_files
from fleetpush_sim.stack import LocalStack
from orchestrator.broker import free_port
from orchestrator.payloads import UrlSigner

MIB = 1 << 20
CLIENTS = 8

NGINX_CONF = """\
{user}worker_processes 2;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 256; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {dir}/tmp;
    proxy_temp_path {dir}/tmp;
    fastcgi_temp_path {dir}/tmp;
    uwsgi_temp_path {dir}/tmp;
    scgi_temp_path {dir}/tmp;
    server {{
        listen 127.0.0.1:{port};
        location /payloads/ {{ alias {payloads}/; default_type application/octet-stream; }}
    }}
}}
"""


def find_nginx() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


async def _curl_load(url: str, repeats: int) -> tuple[int, float]:
    """``CLIENTS`` curl processes, each fetching ``url`` ``repeats`` times; (bytes, seconds)."""
    argv = ["curl", "-s", "-f", "-w", "%{size_download}\\n"]
    for _ in range(repeats):
        argv += ["-o", "/dev/null", url]
    t0 = time.perf_counter()
    procs = [
        await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
        for _ in range(CLIENTS)
    ]
    outs = [await p.communicate() for p in procs]
    elapsed = time.perf_counter() - t0
    if any(p.returncode for p in procs):
        raise RuntimeError(f"curl failed on {url}")
    total = sum(int(x) for out, _ in outs for x in out.split())
    return total, elapsed


def _rate(total: int, seconds: float) -> float:
    return round(total / seconds / 1e9, 2)


def _start_nginx(binary: str, root: Path, payloads: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf_dir = root / "nginx"
    (conf_dir / "tmp").mkdir(parents=True)
    user = "user root;\n" if os.getuid() == 0 else ""
    conf = conf_dir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(user=user, dir=conf_dir, port=port, payloads=payloads))
    proc = subprocess.Popen(
        [binary, "-c", str(conf), "-p", str(conf_dir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"nginx did not start; see {conf_dir / 'error.log'}")


async def _main(stack: LocalStack, size: int, repeats: int, rounds: int) -> dict[str, Any]:
    await stack.start_orchestrator()
    assert stack.config is not None
    out: dict[str, Any] = {"file_bytes": size, "clients": CLIENTS, "fetches_per_client": repeats}
    nginx: subprocess.Popen[bytes] | None = None
    try:
        async with aiohttp.ClientSession() as session:
            api = AsyncApi(session, stack.api_url, stack.token)
            release = await api.upload("bench-blob", "1.0", os.urandom(size), handler="command")
        sha = release["sha256"]
        signer = UrlSigner.from_file(stack.config.data_dir / "url-signing.key")
        orch_url = signer.sign(stack.api_url, sha, int(time.time()) + 3600)
        binary = find_nginx()
        nginx_url = None
        if binary is not None:
            nginx, port = _start_nginx(binary, stack.root, stack.config.payload_dir)
            relpath = next(stack.config.payload_dir.rglob(sha + "*")).relative_to(
                stack.config.payload_dir
            )
            nginx_url = f"http://127.0.0.1:{port}/payloads/{relpath}"
        orch_rates, nginx_rates = [], []
        for _ in range(rounds):  # interleaved, best round kept: a noisy neighbour hurts both
            orch_rates.append(_rate(*await _curl_load(orch_url, repeats)))
            if nginx_url:
                nginx_rates.append(_rate(*await _curl_load(nginx_url, repeats)))
        out["orchestrator_gb_per_s"] = max(orch_rates)
        if nginx_rates:
            out["nginx_gb_per_s"] = max(nginx_rates)
            out["ratio"] = round(max(orch_rates) / max(nginx_rates), 2)
        else:
            out["nginx_gb_per_s"] = None
            out["note"] = "nginx not installed: apt-get install -y nginx to compare"
        out["rounds"] = {"orchestrator": orch_rates, "nginx": nginx_rates}
        return out
    finally:
        if nginx is not None:
            nginx.terminate()
            try:
                nginx.wait(10)
            except subprocess.TimeoutExpired:
                nginx.kill()
                nginx.wait()
        await stack.stop_orchestrator()


def run(quick: bool = False) -> dict[str, Any]:
    raise_open_files()
    if shutil.which("curl") is None:
        return {"skipped": "curl is not installed"}
    with LocalStack() as stack:
        return asyncio.run(_main(stack, 32 * MIB, 4 if quick else 16, 1 if quick else 3))
