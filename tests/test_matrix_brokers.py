"""The compatibility matrix (docs/broker.md): on every broker, a rollout with real agents
and a real ``fleetpush serve``, offline catch-up, and the per-device isolation checks.

Denials are proven by a barrier: after the forbidden action, an allowed message from the
same side arrives, and the forbidden one never did (the broker handles one client's
packets in order). No sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiomqtt
import pytest
from broker_matrix import Rig, expect, matrix_broker, mqtt_client, rig
from orch_helpers import wait_until

from fleetpush_sim.brokers import MatrixBroker
from orchestrator.rules.states import FAILURE_STATES

__all__ = ["matrix_broker", "rig"]

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


async def test_rollout_with_real_agents(rig: Rig, request: pytest.FixtureRequest) -> None:
    expect(request, rig.broker, "rollout")
    ids = rig.ids(3)
    rig.provision(*ids, groups=(f"g-{rig.uid}",))
    for d in ids:
        rig.fleet.start(d)
    await rig.online(ids)
    rel = await rig.api.upload("app", "2.0")
    r = await rig.api.rollout(rel["id"], target={"devices": ids}, phases=[34, 100],
                              success_pct=100, soak_s=0.2)  # fmt: skip
    done = await rig.rollout_in(r["id"], "completed", "paused")
    assert done["state"] == "completed", done
    assert done["states"] == {"succeeded": 3}


async def test_offline_device_catches_up_when_it_returns(
    rig: Rig, request: pytest.FixtureRequest
) -> None:
    expect(request, rig.broker, "catch-up")
    on, off = rig.ids(2)
    rig.provision(on, off)
    rig.fleet.start(on)
    rig.fleet.start(off)
    await rig.online([on, off])
    await rig.fleet.stop(off)
    await rig.online([off], online=False)
    rel = await rig.api.upload("app", "3.0")
    r = await rig.api.rollout(rel["id"], target={"devices": [on, off]}, phases=[100])

    async def one_done() -> dict[str, Any] | None:
        st: dict[str, Any] = await rig.api.status(r["id"])
        finished = sum(st["states"].get(k, 0) for k in ("succeeded", *FAILURE_STATES))
        return st if finished or st["state"] != "running" else None

    st = await wait_until(one_done, within=120, what="the online device finished")
    assert st["states"].get("succeeded") == 1, st  # the other one is still waiting
    assert not any(st["states"].get(k) for k in FAILURE_STATES), st
    assert st["phases"][0]["waiting_offline"] == 1
    rig.fleet.start(off)  # the notice waits for it: retained, or queued in its session
    done = await rig.rollout_in(r["id"], "completed")
    assert done["states"] == {"succeeded": 2}


# --- isolation: raw clients logged in as devices --------------------------------------------


async def _until(client: aiomqtt.Client, topic: str, payload: bytes) -> list[tuple[str, bytes]]:
    """Every message ``client`` receives up to and including the barrier (topic, payload)."""
    got: list[tuple[str, bytes]] = []
    async with asyncio.timeout(30):
        async for m in client.messages:
            got.append((str(m.topic), bytes(m.payload)))  # type: ignore[arg-type]
            if got[-1] == (topic, payload):
                return got
    raise AssertionError("unreachable")


async def _attempt(broker: MatrixBroker, user: str, password: str,
                   action: Callable[[aiomqtt.Client], Awaitable[None]]) -> None:  # fmt: skip
    """A forbidden action on a connection of its own: a broker may refuse by closing it
    (aiomqtt then times out the pending operation, hence the short timeout)."""
    with contextlib.suppress(aiomqtt.MqttError):
        async with mqtt_client(broker, user, password, timeout=5) as c:
            await action(c)


async def test_device_reads_only_its_own_notices(matrix_broker: MatrixBroker) -> None:
    b, t, uid = matrix_broker, matrix_broker.topics, uuid.uuid4().hex[:6]
    a, other = f"a-{uid}", f"b-{uid}"
    pw_a = b.add_device(a, (f"ga-{uid}",))
    b.add_device(other, (f"gb-{uid}",))
    observer = f"obs-{uid}"
    pw_o = b.add_orchestrator(observer)
    b.reload()
    forbidden = [t.device_notice(other), t.group_notice(f"gb-{uid}")]
    got: list[tuple[str, bytes]] = []
    async with mqtt_client(b, observer, pw_o) as o:
        for topic in forbidden:
            await o.publish(topic, b"secret", qos=1, retain=True)
        await o.publish(t.device_notice(a), b"mine", qos=1, retain=True)
        for f in [*forbidden, f"{t.prefix}/device/+/notice", "#"]:
            # Refused at SUBACK, filtered at delivery, or the connection closed: each
            # attempt on its own connection, with its own notice as the barrier.

            async def peek(dev: aiomqtt.Client, f: str = f) -> None:
                await dev.subscribe(f, qos=1)
                await dev.subscribe(t.device_notice(a), qos=1)
                got.extend(await _until(dev, t.device_notice(a), b"mine"))  # retained, last
                await o.publish(forbidden[0], b"secret-live", qos=1)
                await o.publish(t.device_notice(a), b"mine-live", qos=1)
                got.extend(await _until(dev, t.device_notice(a), b"mine-live"))

            await _attempt(b, a, pw_a, peek)
        async with mqtt_client(b, a, pw_a) as dev:  # the device itself still reads its own
            await dev.subscribe(t.device_notice(a), qos=1)
            await _until(dev, t.device_notice(a), b"mine")
    assert not [g for g in got if g[0] in forbidden], got


async def test_device_cannot_publish_others_reports_or_any_notice(
    matrix_broker: MatrixBroker,
) -> None:
    b, t, uid = matrix_broker, matrix_broker.topics, uuid.uuid4().hex[:6]
    a, other, group = f"a-{uid}", f"b-{uid}", f"g-{uid}"
    pw_a = b.add_device(a, (group,))
    b.add_device(other, (group,))
    observer = f"obs-{uid}"
    pw_o = b.add_orchestrator(observer)
    b.reload()
    forged = {  # topic -> retained
        t.report(other): False, t.presence(other): True, t.device_notice(a): True,
        t.device_notice(other): True, t.group_notice(group): True, t.keyring(99): True,
        t.support: True,
    }  # fmt: skip
    async with mqtt_client(b, observer, pw_o) as o:
        await o.publish(t.device_notice(a), b"legit", qos=1, retain=True)
        await o.subscribe(f"{t.prefix}/#", qos=1)
        # RabbitMQ 3.10 delivers retained messages to exact-topic subscriptions only.
        await o.subscribe(t.device_notice(a), qos=1)
        await _until(o, t.device_notice(a), b"legit")
        for topic, retain in forged.items():

            async def forge(c: aiomqtt.Client, topic: str = topic, retain: bool = retain) -> None:
                await c.publish(topic, b"forged", qos=1, retain=retain)

            await _attempt(b, a, pw_a, forge)
        async with mqtt_client(b, a, pw_a) as dev:
            await dev.publish(t.report(a), b"barrier", qos=1)
        got = await _until(o, t.report(a), b"barrier")
    assert not [g for g in got if g[1] == b"forged"], got
    # Nothing forged was retained either: a new subscriber gets the orchestrator's notice.
    async with mqtt_client(b, observer, pw_o) as o:
        for topic in [tp for tp, retain in forged.items() if retain and tp != t.device_notice(a)]:
            await o.subscribe(topic, qos=1)
        await o.subscribe(t.device_notice(a), qos=1)
        got = await _until(o, t.device_notice(a), b"legit")
    assert not [g for g in got if g[1] == b"forged"], got
