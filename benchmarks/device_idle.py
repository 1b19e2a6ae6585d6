"""Idle cost of one device agent: resident memory, CPU over a minute, network per hour.

The agent runs as its own process (``python -m device_client``) against a local Mosquitto,
through a TCP proxy that counts every byte. Network per hour is measured twice: the idle
keepalive traffic (PINGREQ/PINGRESP, measured with a short keepalive and scaled to the
default 60 s), against an HTTPS poll every 30 minutes as polling updaters do (a fresh TLS
connection per poll, measured through the same proxy against a local TLS server answering
"no update" with 204, Mender's answer). Goal: idle RSS under 40 MB.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from benchmarks.device_support import (
    CountingProxy,
    Watcher,
    publish,
    spawn_agent,
    stop_agent,
    write_config,
)
from fleetpush_protocol.topics import Topics
from fleetpush_sim.signing import Signer
from orchestrator.broker import MosquittoBroker

DEFAULT_KEEPALIVE_S = 60
POLLS_PER_HOUR = 2  # one HTTPS poll every 30 minutes (Mender's default interval)
TOKEN = "x" * 600  # a device JWT as sent by polling clients: about 600 bytes


async def _agent(
    tmp: Path, broker: MosquittoBroker, topics: Topics, signer: Signer, keepalive: int
) -> tuple[Any, CountingProxy]:
    proxy = CountingProxy(broker.host, broker.port)
    await proxy.start()
    password = broker.add_device("bench-dev")
    broker.reload()
    folder = tmp / f"agent-{keepalive}"
    folder.mkdir()
    config = folder / "device.toml"
    write_config(config, port=proxy.port, password=password, prefix=topics.prefix,
                 root=signer.root.public_key, keepalive=keepalive, health=[])  # fmt: skip
    return spawn_agent(config), proxy


async def _idle(tmp: Path, quick: bool) -> dict[str, Any]:
    topics = Topics("bench-idle")
    broker = MosquittoBroker(tmp / "broker", topics=topics)
    broker.start()
    signer = Signer()
    try:
        await publish(broker, topics.keyring(1), signer.keyring())
        async with Watcher(broker, topics) as watcher:
            proc, proxy = await _agent(tmp, broker, topics, signer, DEFAULT_KEEPALIVE_S)
            try:
                await asyncio.wait_for(watcher.online.wait(), 30)
                await asyncio.sleep(2)  # let the connect traffic finish
                connect_bytes = proxy.up + proxy.down
                ps = psutil.Process(proc.pid)
                window = 10.0 if quick else 60.0
                cpu0 = ps.cpu_times()
                t0 = time.perf_counter()
                await asyncio.sleep(window)
                cpu1 = ps.cpu_times()
                elapsed = time.perf_counter() - t0
                cpu_s = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
                rss = ps.memory_info().rss
                uss = ps.memory_full_info().uss
            finally:
                stop_agent(proc)
                await proxy.stop()
            # Keepalive traffic: a short keepalive so that a minute holds many pings.
            watcher.online.clear()
            short = 5  # seconds, the smallest keepalive the agent accepts
            proc, proxy = await _agent(tmp, broker, topics, signer, short)
            try:
                await asyncio.wait_for(watcher.online.wait(), 30)
                await asyncio.sleep(1)
                proxy.reset()
                ping_window = 10.0 if quick else 30.0
                await asyncio.sleep(ping_window)
                ping_bytes = proxy.up + proxy.down
            finally:
                stop_agent(proc)
                await proxy.stop()
    finally:
        broker.stop()
    exchanges = ping_window / short
    per_exchange = ping_bytes / exchanges
    mqtt_per_hour = per_exchange * 3600 / DEFAULT_KEEPALIVE_S
    return {
        "rss_mb": round(rss / 1e6, 1),
        "uss_mb": round(uss / 1e6, 1),
        "rss_goal_mb": 40,
        "rss_ok": rss < 40e6,
        "cpu_window_s": round(elapsed, 1),
        "cpu_percent": round(100 * cpu_s / elapsed, 3),
        "cpu_seconds_in_window": round(cpu_s, 3),
        "connect_bytes": connect_bytes,
        "keepalive_bytes_per_exchange": round(per_exchange, 1),
        "mqtt_idle_bytes_per_hour_app_layer": round(mqtt_per_hour),
        # On the wire each exchange is about 3 TCP segments (PINGREQ, PINGRESP, an ACK) of
        # 66 B of Ethernet+IPv4+TCP headers each: an estimate, not a capture.
        "mqtt_idle_bytes_per_hour_wire_estimate": round((per_exchange + 3 * 66) * 60),
        "mqtt_idle_bytes_per_hour_wire_estimate_keepalive_300s": round(
            (per_exchange + 3 * 66) * 12
        ),
    }


def _cert(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "poll.pem", tmp / "poll.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def _https_poll(tmp: Path) -> dict[str, Any]:
    cert, key = _cert(tmp)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    app = web.Application()

    async def next_deployment(_: web.Request) -> web.Response:
        return web.Response(status=204)  # "no update", as Mender answers

    app.router.add_get("/api/devices/v1/deployments/device/deployments/next", next_deployment)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    port = runner.addresses[0][1]
    proxy = CountingProxy("127.0.0.1", port)
    await proxy.start()
    client_ctx = ssl.create_default_context(cafile=str(cert))
    sizes = []
    try:
        for _ in range(5):
            proxy.reset()
            # A fresh connection per poll: 30 minutes apart, no connection survives NAT.
            connector = aiohttp.TCPConnector(ssl=client_ctx, force_close=True)
            async with aiohttp.ClientSession(connector=connector) as s:
                url = (
                    f"https://127.0.0.1:{proxy.port}/api/devices/v1/deployments/device/"
                    "deployments/next?artifact_name=release-1.0.0&device_type=rpi4"
                )
                async with s.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                    assert r.status == 204
            await asyncio.sleep(0.1)
            sizes.append(proxy.up + proxy.down)
    finally:
        await proxy.stop()
        await runner.cleanup()
    per_poll = sorted(sizes)[len(sizes) // 2]
    return {
        "https_poll_bytes_each_app_layer": per_poll,
        "https_poll_bytes_per_hour_app_layer": per_poll * POLLS_PER_HOUR,
        # A fresh TLS connection per poll is about 16 TCP segments (handshakes, request,
        # response, close) of 66 B of headers each: an estimate, not a capture.
        "https_poll_bytes_per_hour_wire_estimate": (per_poll + 16 * 66) * POLLS_PER_HOUR,
    }


def run(quick: bool = False) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            idle = await _idle(tmp, quick)
            poll = await _https_poll(tmp)
        result = {**idle, **poll}
        result["push_vs_poll_app_layer"] = round(
            result["mqtt_idle_bytes_per_hour_app_layer"]
            / result["https_poll_bytes_per_hour_app_layer"],
            3,
        )
        result["push_vs_poll_wire_estimate"] = round(
            result["mqtt_idle_bytes_per_hour_wire_estimate"]
            / result["https_poll_bytes_per_hour_wire_estimate"],
            2,
        )
        return result

    return asyncio.run(main())
