"""Attacks end to end: a real device agent, a real Mosquitto, a real HTTP server.

Every row is one attack from docs/security.md. The attacker holds broker credentials with
the orchestrator's rights (``DeviceRig.attack``: it may publish, retained or not, to every
notice and keyring topic) but no signing key, unless the row says otherwise. Each row
first installs a genuine release (``1.0.0``), then attacks, then asserts that:

* the device reports exactly the expected state and error code (or nothing, for the
  duplicate);
* ``current`` still points at the genuine slot, and nothing else was unpacked or left in
  the downloads folder.

Attacks already covered one-by-one in tests/test_device_agent.py are not repeated here:
unknown signing key (test_notice_signed_by_unknown_key_is_rejected), replay after a newer
notice (test_replayed_old_notice_is_rejected), another device's id
(test_notice_for_another_device_is_rejected), a tampered payload
(test_tampered_payload_fails_with_hash_mismatch) and an endless stream of the right
bytes (test_endless_data_stops_at_signed_size). Verifier-level rows for every error code
are in tests/test_protocol_attacks.py.

The hostile-payload rows (issue 12) are signed by the operator's own key: a payload built
by a compromised pipeline, or signed with a stolen key, must still stay inside its slot
and within the ``[unpack]`` limits (table-driven unit rows: tests/test_device_archive.py).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from archive_helpers import (
    gzip_bomb,
    link,
    many_entries,
    regular,
    sparse_tar,
    symlink_chain,
    tar_of,
)
from device_helpers import PayloadServer, ReportCollector, Signer, publish, wait_for
from fault_helpers import DeviceRig, release_tar
from msgspec.structs import replace

from fleetpush_protocol import canonical
from fleetpush_protocol.envelope import sign_message
from fleetpush_protocol.keys import KeyPair
from fleetpush_protocol.messages import Keyring, SigningKeyInfo, Target, UpdateNotice
from fleetpush_protocol.topics import Topics
from orchestrator.broker import MosquittoBroker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

V1 = release_tar("1.0.0")
V2 = release_tar("2.0.0")
DEV = "dev-001"
DAY = 86_400


@dataclass
class Ctx:
    rig: DeviceRig
    server: PayloadServer
    reports: ReportCollector
    signer: Signer
    topics: Topics
    genuine: UpdateNotice  # the installed notice (seq 1)
    genuine_bytes: bytes

    @property
    def notice_topic(self) -> str:
        return self.topics.device_notice(DEV)

    def v2(self, **kw: Any) -> tuple[UpdateNotice, bytes]:
        url = self.server.add("v2.tar", V2)
        return self.signer.notice(DEV, V2, [url], version="2.0.0", topics=self.topics, **kw)


def resign(notice: UpdateNotice, key: KeyPair, **changes: Any) -> tuple[UpdateNotice, bytes]:
    changed = replace(notice, **changes)
    return changed, sign_message(changed, [key])


def keyring(
    version: int, roots: list[KeyPair], signing: list[KeyPair], *, revoked: tuple[KeyPair, ...] = ()
) -> Keyring:
    now = int(time.time())
    return Keyring(
        version=version,
        root_keys=tuple(k.public_key for k in roots),
        root_threshold=1,
        signing_keys=tuple(
            SigningKeyInfo(public_key=k.public_key, not_before=now - DAY, not_after=now + DAY)
            for k in signing
        ),
        signing_threshold=1,
        revoked=tuple(k.public_key for k in revoked),
        issued_at=now - 60,
    )


async def barrier(c: Ctx) -> None:
    """Return once the agent handled everything published to its notice topic before.

    A notice signed with a key the device does not know, published after them on the same
    topic: the broker delivers one topic's messages in order and the agent handles them in
    order, so its rejection report proves the earlier messages were handled (a fixed sleep
    would only make that likely).
    """
    probe, data = c.v2(key=KeyPair.generate())
    await c.rig.attack(c.notice_topic, data, retain=False)
    await c.reports.wait_state("rejected", probe.notice_id)


# --- the attacks: each publishes something and returns the notice id to look for -----------


async def forged_own_key(c: Ctx) -> str:
    notice, data = c.v2(key=KeyPair.generate())
    await c.rig.attack(c.notice_topic, data)
    return notice.notice_id


async def forged_unsigned(c: Ctx) -> str:
    notice, _ = c.v2()
    body = canonical.encode(notice.to_body())
    await c.rig.attack(c.notice_topic, canonical.encode({"body": body, "signatures": []}))
    return notice.notice_id


async def edited_url(c: Ctx) -> str:
    """A genuine notice whose payload URL the broker points at its own server."""
    notice, data = c.v2()
    outer = canonical.decode(data, max_bytes=1 << 20)
    body = canonical.decode(outer["body"], max_bytes=1 << 20)
    body["payload"]["urls"] = [c.server.add("evil.tar", release_tar("6.6.6"))]
    outer["body"] = canonical.encode(body)
    await c.rig.attack(c.notice_topic, canonical.encode(outer))
    return notice.notice_id


async def rollback_lower_seq(c: Ctx) -> str:
    """A freshly signed notice for an old release, with a sequence below the last one."""
    _, newer = c.v2()  # seq 2, genuinely delivered and installed first
    await publish(c.rig.broker, c.notice_topic, newer)
    await c.reports.wait_state("succeeded", f"n-{DEV}-2")
    # The attacker kept a notice signed long ago with seq 1 for another release:
    old, data = resign(c.genuine, c.signer.signing, notice_id="n-old-release",
                       release=replace(c.genuine.release, version="0.9.0"))  # fmt: skip
    await c.rig.attack(c.notice_topic, data)
    return old.notice_id


async def replay_superseded(c: Ctx) -> str:
    """The exact bytes of the installed notice, after a cancel moved the sequence on."""
    await publish(c.rig.broker, c.notice_topic, c.signer.cancel(DEV, rollout_id="r-none"))
    await barrier(c)  # the cancel moved the sequence on
    await c.rig.attack(c.notice_topic, c.genuine_bytes, retain=False)
    return c.genuine.notice_id


async def freeze_expired(c: Ctx) -> str:
    notice, _ = c.v2()
    now = int(time.time())
    notice, data = resign(notice, c.signer.signing, issued_at=now - 3600,
                          expires_at=now - 1000)  # fmt: skip
    await c.rig.attack(c.notice_topic, data)
    return notice.notice_id


async def mix_and_match(c: Ctx) -> str:
    """A valid signature over a notice for other targets, glued to a body for this one."""
    other, other_bytes = c.signer.notice(
        "dev-002", V2, [c.server.add("v2.tar", V2)], version="2.0.0", topics=c.topics
    )
    mine, _ = c.v2()
    outer = canonical.decode(other_bytes, max_bytes=1 << 20)
    outer["body"] = canonical.encode(mine.to_body())
    await c.rig.attack(c.notice_topic, canonical.encode(outer))
    del other
    return mine.notice_id


async def other_model(c: Ctx) -> str:
    notice, _ = c.v2()
    notice, data = resign(notice, c.signer.signing,
                          target=Target(devices=(DEV,), models=("esp32",)))  # fmt: skip
    await c.rig.attack(c.notice_topic, data)
    return notice.notice_id


async def other_group_scope(c: Ctx) -> str:
    """A genuine group notice for a group this device is not in, pushed to its topic."""
    notice, _ = c.v2()
    notice, data = resign(notice, c.signer.signing, scope="group/other",
                          target=Target(groups=("other",)))  # fmt: skip
    await c.rig.attack(c.notice_topic, data)
    return notice.notice_id


async def payload_swapped_same_size(c: Ctx) -> str:
    swapped = bytearray(V2)
    swapped[-1024:] = b"\xee" * 1024
    notice, data = c.signer.notice(DEV, V2, [c.server.add("swapped.tar", bytes(swapped))],
                                   version="2.0.0", topics=c.topics)  # fmt: skip
    await publish(c.rig.broker, c.notice_topic, data)
    return notice.notice_id


async def payload_swapped_longer(c: Ctx) -> str:
    notice, data = c.signer.notice(DEV, V2, [c.server.add("long.tar", V2 + b"\0" * 10240)],
                                   version="2.0.0", topics=c.topics)  # fmt: skip
    await publish(c.rig.broker, c.notice_topic, data)
    return notice.notice_id


async def endless_garbage(c: Ctx) -> str:
    url = c.server.add("endless.tar", b"\xab" * 1000, endless=True)
    notice, data = c.signer.notice(DEV, V2, [url], version="2.0.0", topics=c.topics)
    await publish(c.rig.broker, c.notice_topic, data)
    return notice.notice_id


async def slow_stall(c: Ctx) -> str:
    """The server sends the first chunk, then nothing (read timeout)."""
    url = c.server.add("stall.tar", V2, rate=2000, chunk=8192)  # then 4 s of silence
    notice, data = c.signer.notice(DEV, V2, [url], version="2.0.0", topics=c.topics)
    await publish(c.rig.broker, c.notice_topic, data)
    return notice.notice_id


async def slow_trickle(c: Ctx) -> str:
    """A byte a second: never silent long enough for the read timeout, never done."""
    url = c.server.add("trickle.tar", V2, rate=2, chunk=1)
    notice, data = c.signer.notice(DEV, V2, [url], version="2.0.0", topics=c.topics)
    await publish(c.rig.broker, c.notice_topic, data)
    return notice.notice_id


async def revoked_key(c: Ctx) -> str:
    """Keyring v2 revokes the signing key; a notice it signs afterwards is refused."""
    fresh = KeyPair.generate()
    ring = sign_message(keyring(2, [c.signer.root], [fresh], revoked=(c.signer.signing,)),
                        [c.signer.root])  # fmt: skip
    await publish(c.rig.broker, c.topics.keyring(2), ring)
    agent = c.rig.agent
    assert agent is not None
    await wait_for(lambda: agent.trust.trusted.keyring.version == 2, 10, "keyring 2")
    notice, data = c.v2()  # signed with the stolen, now revoked key
    await c.rig.attack(c.notice_topic, data)
    return notice.notice_id


async def rotation_without_old_root(c: Ctx) -> str:
    """The attacker makes its own root and signing key and signs keyring v2 with it only."""
    evil_root, evil_signing = KeyPair.generate(), KeyPair.generate()
    ring = sign_message(keyring(2, [evil_root], [evil_signing]), [evil_root])
    await c.rig.attack(c.topics.keyring(2), ring)
    notice, data = c.v2(key=evil_signing)
    await c.rig.attack(c.notice_topic, data)
    # The notice's rejection comes after the keyring was handled (one receive loop, in order).
    await c.reports.wait_state("rejected", notice.notice_id)
    assert c.rig.agent is not None
    assert c.rig.agent.trust.trusted.keyring.version == 1
    return notice.notice_id


async def stale_retained_after_restart(c: Ctx) -> str:
    """The device moved on to seq 2; the broker (restored from an old backup, or
    malicious) serves the seq-1 notice retained again when the device reconnects."""
    _, newer = c.v2()
    await publish(c.rig.broker, c.notice_topic, newer)
    await c.reports.wait_state("succeeded", f"n-{DEV}-2")
    await c.rig.stop()
    await c.rig.attack(c.notice_topic, c.genuine_bytes, retain=True)
    await c.rig.start()
    return c.genuine.notice_id


def hostile_payload(payload: bytes) -> Callable[[Ctx], Awaitable[str]]:
    """A genuinely signed notice for a payload built to escape or exhaust the slot."""

    async def run(c: Ctx) -> str:
        url = c.server.add("hostile.tar", payload)
        notice, data = c.signer.notice(DEV, payload, [url], version="2.0.0", topics=c.topics)
        await publish(c.rig.broker, c.notice_topic, data)
        return notice.notice_id

    return run


async def duplicate_qos1(c: Ctx) -> str:
    """The genuine notice delivered again (QoS 1 redelivery): ignored, no report."""
    for _ in range(3):
        await c.rig.attack(c.notice_topic, c.genuine_bytes, retain=False)
    await barrier(c)  # every duplicate was handled: any report it caused has been sent
    return c.genuine.notice_id


@dataclass
class Attack:
    run: Callable[[Ctx], Awaitable[str]]
    state: str | None  # expected report state for the attack's notice (None: no report)
    code: str | None
    download_config: dict[str, Any] = field(default_factory=dict)
    unpack_config: dict[str, Any] = field(default_factory=dict)
    installed: str = f"slot-n-{DEV}-1"  # where `current` must point afterwards
    version: str = "1.0.0"


AFTER_V2 = f"slot-n-{DEV}-2"
ATTACKS: dict[str, Attack] = {
    "compromised broker, own signing key": Attack(forged_own_key, "rejected", "unknown_key"),
    "compromised broker, no signature": Attack(forged_unsigned, "rejected", "signature_missing"),
    "compromised broker, edits the payload URL": Attack(edited_url, "rejected", "bad_signature"),
    "rollback to an older sequence": Attack(
        rollback_lower_seq, "rejected", "rollback", installed=AFTER_V2, version="2.0.0"
    ),
    "replay after a cancel moved the sequence": Attack(replay_superseded, "rejected", "rollback"),
    "freeze: expired notice": Attack(freeze_expired, "rejected", "expired"),
    "mix-and-match signature": Attack(mix_and_match, "rejected", "bad_signature"),
    "other hardware model": Attack(other_model, "rejected", "wrong_model"),
    "other group's scope": Attack(other_group_scope, "rejected", "not_addressed"),
    "payload swapped, same size": Attack(payload_swapped_same_size, "failed", "hash_mismatch"),
    "payload swapped, longer": Attack(payload_swapped_longer, "failed", "size_mismatch"),
    "endless garbage payload": Attack(endless_garbage, "failed", "hash_mismatch"),
    "slow retrieval: stall": Attack(
        slow_stall,
        "failed",
        "download_failed",
        download_config={"read_timeout": "1s", "max_attempts": 1},
    ),
    "slow retrieval: trickle": Attack(
        slow_trickle,
        "failed",
        "download_failed",
        download_config={"read_timeout": "1s", "max_attempts": 1, "min_bytes_per_s": 1024},
    ),
    "revoked signing key": Attack(revoked_key, "rejected", "key_revoked"),
    "root rotation without the old root": Attack(
        rotation_without_old_root, "rejected", "unknown_key"
    ),
    "stale retained notice after moving on": Attack(
        stale_retained_after_restart,
        "rejected",
        "rollback",
        installed=AFTER_V2,
        version="2.0.0",
    ),
    "duplicate QoS 1 delivery": Attack(duplicate_qos1, None, None),
    "payload: symlink chain built by member order": Attack(
        hostile_payload(symlink_chain(("t", "dirs", "s"))), "failed", "payload_invalid"
    ),
    "payload: gzip bomb, 1 MB to 1 GiB": Attack(
        hostile_payload(gzip_bomb(1 << 30)), "failed", "payload_invalid"
    ),
    "payload: sparse file of 1 TiB": Attack(
        hostile_payload(sparse_tar(1 << 40)), "failed", "payload_invalid"
    ),
    "payload: more members than max_members": Attack(
        hostile_payload(many_entries(60)),
        "failed",
        "payload_invalid",
        unpack_config={"max_members": 50},
    ),
    "payload: hard link to a missing member": Attack(
        hostile_payload(tar_of([regular("app/a"), link("app/h", "app/gone", b"1")])),
        "failed",
        "payload_invalid",
    ),
    "payload: control characters in a name": Attack(
        hostile_payload(tar_of([regular("app/VERSION\n\x1b[2Jok")])), "failed", "payload_invalid"
    ),
}


@pytest.mark.parametrize("name", list(ATTACKS))
async def test_attack_installs_nothing(
    name: str, tmp_path: Path, broker: MosquittoBroker, topics: Topics, server: PayloadServer
) -> None:
    attack = ATTACKS[name]
    signer = Signer()
    sections = {"download": attack.download_config}
    if attack.unpack_config:
        sections["unpack"] = attack.unpack_config
    rig = DeviceRig(tmp_path, broker, topics, signer, sections=sections)
    rig.provision()
    async with ReportCollector(broker, topics) as reports:
        await publish(broker, topics.keyring(1), signer.keyring(1))
        await rig.start()
        genuine, genuine_bytes = signer.notice(DEV, V1, [server.add("v1.tar", V1)],
                                               version="1.0.0", topics=topics)  # fmt: skip
        await publish(broker, topics.device_notice(DEV), genuine_bytes)
        await reports.wait_state("succeeded", genuine.notice_id)
        ctx = Ctx(rig, server, reports, signer, topics, genuine, genuine_bytes)
        try:
            notice_id = await attack.run(ctx)
            if attack.state is None:
                # The attack ended on a barrier: a report the duplicates caused came before.
                assert reports.states(notice_id) == [
                    "notified", "downloading", "downloaded", "installing", "installed",
                    "succeeded",
                ], "a duplicate must not start a second install"  # fmt: skip
            else:
                got = await reports.wait_state(attack.state, notice_id, within=30)
                assert got.error is not None
                assert got.error.code == attack.code, got.error
                assert got.current_version == attack.version
                # Reported once, even for messages that stay retained.
                assert reports.states(notice_id).count(attack.state) == 1
            assert rig.agent is not None
            assert rig.agent.state.job is None
            assert rig.current() == attack.installed
            assert (rig.slots / "current" / "VERSION").read_text() == f"{attack.version}\n"
            assert sorted(p.name for p in rig.slots.iterdir()) <= sorted(
                {"current", attack.installed, f"slot-{genuine.notice_id}"}
            )
            assert not list(rig.agent.downloads.iterdir())
            assert "evil.tar" not in {n for n, _ in server.ranges}
        finally:
            await rig.stop()
