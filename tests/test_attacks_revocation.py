"""Revocation sticks (issue 12, hole 3), end to end: a real agent, Mosquitto and HTTP server.

The attack: keyring v2 revokes the signing key S2, keyring v3 (genuinely root-signed, by
an operator error or a restored backup) lists S2 again and forgets the revocation, and the
holder of the stolen S2 signs a notice. The device must refuse it with ``key_revoked``
and install nothing, also after an agent restart (the set of every key ever seen revoked
is persisted with the trust state, not derived from the current keyring).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from device_helpers import PayloadServer, ReportCollector, Signer, publish, wait_for
from fault_helpers import DeviceRig, release_tar

from fleetpush_protocol.envelope import sign_message
from fleetpush_protocol.keys import KeyPair
from fleetpush_protocol.topics import Topics
from fleetpush_sim.signing import DAY, make_keyring
from orchestrator.broker import MosquittoBroker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

V1 = release_tar("1.0.0")
V2 = release_tar("2.0.0")
DEV = "dev-001"


def _ring(signer: Signer, version: int, signing: list[KeyPair], revoked: list[KeyPair]) -> bytes:
    now = int(time.time())
    ring = make_keyring(
        version, [signer.root], signing, revoked=revoked,
        not_before=now - DAY, not_after=now + DAY, issued_at=now - 60 + version,
    )  # fmt: skip
    return sign_message(ring, [signer.root])


@pytest.mark.parametrize("restart", [False, True], ids=["same-run", "after-restart"])
async def test_key_revoked_then_relisted_stays_refused(
    restart: bool, tmp_path: Path, broker: MosquittoBroker, topics: Topics, server: PayloadServer
) -> None:
    signer = Signer()
    s2 = signer.signing  # the key the attacker stole
    s1 = KeyPair.generate()
    rig = DeviceRig(tmp_path, broker, topics, signer)
    rig.provision()
    async with ReportCollector(broker, topics) as reports:
        await publish(broker, topics.keyring(1), _ring(signer, 1, [s1, s2], []))
        agent = await rig.start()
        genuine, data = signer.notice(DEV, V1, [server.add("v1.tar", V1)], version="1.0.0",
                                      topics=topics, key=s1)  # fmt: skip
        await publish(broker, topics.device_notice(DEV), data)
        await reports.wait_state("succeeded", genuine.notice_id)
        try:
            await publish(broker, topics.keyring(2), _ring(signer, 2, [s1], [s2]))
            await publish(broker, topics.keyring(3), _ring(signer, 3, [s1, s2], []))
            await wait_for(lambda: agent.trust.trusted.keyring.version == 3, 10, "keyring 3")
            if restart:
                await rig.stop()
                agent = await rig.start()
                assert agent.trust.trusted.keyring.version == 3
            evil = server.add("evil.tar", V2)
            notice, attack = signer.notice(DEV, V2, [evil], version="2.0.0", topics=topics, key=s2)
            await rig.attack(topics.device_notice(DEV), attack)
            got = await reports.wait_state("rejected", notice.notice_id, within=30)
            assert got.error is not None
            assert got.error.code == "key_revoked", got.error
            assert got.current_version == "1.0.0"
            # The keyring itself was accepted: S1 still signs, and what it signs installs.
            url = server.add("v2.tar", V2)
            good, data = signer.notice(DEV, V2, [url], version="2.0.0", topics=topics, key=s1)
            await publish(broker, topics.device_notice(DEV), data)
            await reports.wait_state("succeeded", good.notice_id)
            assert reports.states(notice.notice_id) == ["rejected"]
            assert "evil.tar" not in {n for n, _ in server.ranges}
            assert (rig.slots / "current" / "VERSION").read_text() == "2.0.0\n"
        finally:
            await rig.stop()
