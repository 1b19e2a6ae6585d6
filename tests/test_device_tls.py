"""The device agent over the broker's client-certificate TLS listener, end to end.

The certificate's CN is the device id, which Mosquitto uses as the username and client id;
the agent sends no password. The orchestrator side (keyring, notice, report collector)
uses the password listener of the same broker.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from device_helpers import (
    PayloadServer,
    ReportCollector,
    make_tar,
    publish,
    wait_for,
    write_config,
)

from device_client.config import load_config
from device_client.wiring import build_agent
from fleetpush_protocol.topics import Topics
from fleetpush_sim.signing import Signer
from orchestrator.broker import MosquittoBroker

pytestmark = pytest.mark.integration

RELEASE = make_tar({"bin/app": b"#!/bin/sh\necho tls\n"})


async def test_agent_installs_over_client_certificate_tls(
    tmp_path: Path,
    tls_broker: MosquittoBroker,
    topics: Topics,
    signer: Signer,
    server: PayloadServer,
) -> None:
    b = tls_broker
    cert, key = b.add_device_cert("dev-tls")
    b.reload()
    assert b.tls_url is not None
    path = write_config(
        tmp_path / "dev-tls.toml", broker=b, topics=topics, device_id="dev-tls",
        password="unused", root_hex=signer.root_hex,
        sections={"broker": {"url": b.tls_url, "username": None, "password": None,
                             "ca_file": str(b.ca_file), "cert_file": str(cert),
                             "key_file": str(key)}},
    )  # fmt: skip
    text = path.read_text()
    assert "password" not in text
    assert "mqtts://" in text
    async with ReportCollector(b, topics) as reports:
        await publish(b, topics.keyring(1), signer.keyring(1))
        agent = build_agent(load_config(path))
        task = asyncio.create_task(agent.run())
        try:
            await wait_for(
                lambda: agent.session is not None and agent.session.connected.is_set(),
                15, "agent connected over TLS",
            )  # fmt: skip
            url = server.add("app.tar", RELEASE)
            notice, data = signer.notice("dev-tls", RELEASE, [url], topics=topics)
            await publish(b, topics.device_notice("dev-tls"), data)
            done = await reports.wait_state("succeeded", notice.notice_id)
            assert done.device_id == "dev-tls"
            assert ("dev-tls", True) in reports.presence
        finally:
            agent.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 15)
