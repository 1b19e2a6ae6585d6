"""A device reports on its own report topic whatever ``reply_topic`` says (docs/protocol.md,
"MQTT contract for device clients"): the broker's ACL would refuse any other topic, and
the reports would be lost. Real agent, real Mosquitto with its ACL, real HTTP server.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from device_helpers import PayloadServer, ReportCollector, Signer, publish
from fault_helpers import DeviceRig, release_tar
from msgspec.structs import replace

from fleetpush_protocol.envelope import sign_message
from fleetpush_protocol.topics import Topics
from orchestrator.broker import MosquittoBroker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

DEV = "dev-001"


@pytest.mark.parametrize("reply_topic", ["{p}/device/dev-002/report", "{p}/elsewhere"])
async def test_reports_go_to_the_own_report_topic(
    reply_topic: str, tmp_path: Path, broker: MosquittoBroker, topics: Topics, server: PayloadServer
) -> None:
    signer = Signer()
    rig = DeviceRig(tmp_path, broker, topics, signer)
    rig.provision()
    async with ReportCollector(broker, topics) as reports:
        await publish(broker, topics.keyring(1), signer.keyring(1))
        await rig.start()
        try:
            v1 = release_tar("1.0.0")
            notice, _ = signer.notice(DEV, v1, [server.add("v1.tar", v1)], topics=topics)
            notice = replace(notice, reply_topic=reply_topic.format(p=topics.prefix))
            await publish(broker, topics.device_notice(DEV), sign_message(notice, [signer.signing]))
            got = await reports.wait_state("succeeded", notice.notice_id)
            assert got.device_id == DEV
            assert reports.states(notice.notice_id)[0] == "notified"
        finally:
            await rig.stop()
