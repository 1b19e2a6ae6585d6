"""Random and mutated msgpack on every topic the orchestrator and the device read.

Hypothesis generates the inputs (seeded: ``derandomize=True``, bounded example counts),
they are published through the real broker, and then both processes must still be alive
and answering, must have stored or installed nothing, and must still complete a real
rollout end to end. Topics the *device* reads: its notice topic, its group's notice topic
and the keyring topics (published by a compromised-broker identity). Topics the
*orchestrator* reads: a device's report, presence and inventory topics (published by a
device, which is what a compromised device can do).
"""

from __future__ import annotations

import sqlite3
from typing import Any

import aiomqtt
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from orch_helpers import Setup, setup, wait_until

from fleetpush_protocol.envelope import encode_message, sign_message
from fleetpush_protocol.messages import Inventory, Presence, Report, ReportState
from fleetpush_sim.signing import fixed_key, make_keyring, make_notice

__all__ = ["setup"]

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

EXAMPLES = 150  # per strategy: 3 strategies x 150 x 7 topics ~ 3,000 messages

FIELDS = [
    "body", "signatures", "type", "format", "device_id", "notice_id", "seq", "scope",
    "counter", "state", "payload", "target", "version", "root_keys", "key", "sig",
]  # fmt: skip

VALID = [
    sign_message(make_notice("fz-dev"), [fixed_key(1)]),
    sign_message(make_keyring(2, [fixed_key(1)], [fixed_key(2)]), [fixed_key(1)]),
    encode_message(
        Report(
            device_id="fz-evil",
            notice_id="n-1",
            rollout_id="1",
            state=ReportState.SUCCEEDED,
            current_version="9",
            counter=7,
            reported_at=1_800_000_000,
        )
    ),
    encode_message(Presence(device_id="fz-evil", online=True, at=1_800_000_000)),
    encode_message(
        Inventory(
            device_id="fz-evil",
            model="m",
            groups=(),
            client_version="1",
            installed=(),
            free_bytes=1,
            at=1_800_000_000,
        )
    ),
]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.text(max_size=40),
    st.binary(max_size=70), st.floats(allow_nan=True),
)  # fmt: skip
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), inner, max_size=6),
    ),
    max_leaves=20,
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid message with bytes flipped, cut, inserted or duplicated."""
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "dup"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip":
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[pos : pos + draw(st.integers(1, 16))]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        else:
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 16))]
    return bytes(data)


@st.composite
def structured(draw: st.DrawFn) -> bytes:
    """Well-formed msgpack of the wrong shape: an envelope around a random body, or not."""
    body = draw(values)
    packed = msgpack.packb(body, use_bin_type=True)
    if draw(st.booleans()):
        return bytes(packed)
    entry = st.fixed_dictionaries(
        {"key": st.binary(min_size=32, max_size=32) | values,
         "sig": st.binary(min_size=64, max_size=64) | values}
    )  # fmt: skip
    sigs = draw(st.lists(entry, max_size=3))
    return bytes(msgpack.packb({"body": packed, "signatures": sigs}, use_bin_type=True))


def samples() -> list[bytes]:
    out: list[bytes] = []
    for strategy in (st.binary(min_size=1, max_size=600), mutated(), structured()):

        @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(strategy)
        def collect(data: bytes) -> None:
            if data:
                out.append(data)

        collect()
    return out


async def test_fuzzed_messages_on_every_topic_change_nothing(setup: Setup) -> None:
    s = setup
    topics = s.fleet.topics
    s.fleet.provision("fz-dev", groups=("fz-group",))
    evil_password = s.broker.add_device("fz-evil")
    fuzzer_password = s.broker.add_orchestrator("fz-fuzzer")
    s.broker.reload()
    s.fleet.start("fz-dev")
    agent = s.fleet.agents["fz-dev"]

    async def online() -> bool:
        d = await s.api.call("GET", "/v1/devices/fz-dev", expect=None)
        return bool(d.get("online"))

    await wait_until(online, what="fz-dev online")
    data = samples()
    assert len(data) > 2 * EXAMPLES
    device_topics = [
        topics.device_notice("fz-dev"), topics.group_notice("fz-group"), topics.keyring(1),
        topics.keyring(2),
    ]  # fmt: skip
    orch_topics = [topics.report("fz-evil"), topics.presence("fz-evil"),
                   topics.inventory("fz-evil")]  # fmt: skip
    async with aiomqtt.Client(
        s.broker.host, s.broker.port, username="fz-fuzzer", password=fuzzer_password,
        identifier="fz-fuzzer", protocol=aiomqtt.ProtocolVersion.V5,
    ) as fuzzer, aiomqtt.Client(
        s.broker.host, s.broker.port, username="fz-evil", password=evil_password,
        identifier="fz-evil", protocol=aiomqtt.ProtocolVersion.V5,
    ) as evil:  # fmt: skip
        for i, payload in enumerate(data):
            for topic in device_topics:
                await fuzzer.publish(topic, payload, qos=1, retain=i % 7 == 0)
            for topic in orch_topics:
                await evil.publish(topic, payload, qos=1)
        # clear what stayed retained, so the real rollout below starts clean
        for topic in device_topics:
            await fuzzer.publish(topic, b"", qos=1, retain=True)

    # Everything was read: the orchestrator acknowledged every message it was sent.
    ingestor = s.orch.ingestor
    assert ingestor is not None

    async def drained() -> bool:
        return ingestor.pending() == 0 and ingestor.stats.received >= 3 * len(data)

    await wait_until(drained, within=60, what="orchestrator read every fuzzed message")
    assert ingestor.stats.malformed > 0

    # Both alive, nothing installed, nothing counted.
    assert s.fleet.tasks["fz-dev"].done() is False
    session = agent.session
    assert session is not None

    async def connected() -> bool:
        return session.connected.is_set()

    # Connected again if it had to reconnect: on a loaded machine a report's PUBACK can miss
    # the session's timeout while the broker relays the flood, and the session then
    # reconnects by design (alive is what counts, not the state at one instant).
    await wait_until(connected, within=30, what="the agent connected")
    assert agent.state.job is None
    assert agent.state.installed is None
    assert agent.trust.trusted.keyring.version == 1  # the orchestrator's keyring, only
    async with s.session.get(s.api.base + "/healthz") as resp:
        assert resp.status == 200
    db = s.orch.config.data_dir / "fleetpush.db"
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        accepted = con.execute("SELECT count(*) FROM reports WHERE accepted = 1").fetchone()[0]
        rollouts = con.execute("SELECT count(*) FROM rollouts").fetchone()[0]
    finally:
        con.close()
    assert (accepted, rollouts) == (0, 0)

    # And a real rollout still goes through, end to end.
    rel = await s.api.upload("app", "2.0")
    r = await s.api.rollout(rel["id"], target={"devices": ["fz-dev"]})

    async def done() -> dict[str, Any] | None:
        st_ = await s.api.status(r["id"])
        return st_ if st_["state"] in ("completed", "paused") else None

    final = await wait_until(done, within=60, what="rollout after fuzzing")
    assert final["states"] == {"succeeded": 1}, final
    assert agent.state.current_version == "2.0"
