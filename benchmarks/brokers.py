"""The matrix's brokers under load, in one run: fan-out of one notice to N subscribers, and
report ingestion from N devices, on Mosquitto (the reference) and each broker that passed
the matrix (docs/broker.md).

Raw clients only (``benchmarks/_mqtt_raw.py``, MQTT 3.1.1 on every broker, QoS 1), so what
is measured is the broker, with fleetpush's per-device permissions in force:

- fan-out: N devices, each logged in as itself and subscribed to its group's notice topic;
  one 1 KiB QoS 1 notice on that topic; the time until every device has it.
- ingestion: each of the N devices publishes one QoS 1 report on its own report topic; one
  subscriber logged in as the orchestrator (``P/device/+/report``); the time until it has
  all N.

Ratios are to Mosquitto in the same run. The orchestrator's own ingestion (database
commits) is ``benchmarks/ingest.py``'s.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._mqtt_raw import RawSubscriber, connect_all
from fleetpush_protocol.topics import Topics
from fleetpush_sim.brokers import EjabberdBroker, MatrixBroker, make_broker
from fleetpush_sim.fleet import provision_passwords
from fleetpush_sim.limits import raise_open_files
from orchestrator.broker import MosquittoBroker
from orchestrator.mqtt import codec

GROUP = "bench"
BROKERS = ("mosquitto", "ejabberd", "nats", "rabbitmq")  # the ones that passed the matrix


async def _wait(subs: list[RawSubscriber], count: int, timeout_s: float) -> float | None:
    deadline = time.monotonic() + timeout_s
    while any(len(s.received) < count for s in subs):
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(0.005)
    return max(s.received[count - 1] for s in subs)


def _provision(broker: MatrixBroker, ids: list[str]) -> dict[str, str]:
    """Before the start (as fanout.py does): the broker reads them all when it starts."""
    if isinstance(broker, MosquittoBroker):
        return provision_passwords(broker, ids, (GROUP,))
    return broker.add_devices(ids, (GROUP,))


async def _one(name: str, n: int, root: Path) -> dict[str, Any]:
    topics = Topics(prefix=f"bench-{name}")
    if name == "ejabberd" and n > 1000:
        # SCRAM costs 60-70 ms of CPU per login here: 10,000 would be minutes of set-up
        # before anything is measured. Fan-out and ingestion happen after the logins.
        broker: MatrixBroker = EjabberdBroker(root / name, topics=topics, hashed_logins=False)
    else:
        broker = make_broker(name, root / name, topics)
    ids = [f"dev-{i:05d}" for i in range(n)]
    out: dict[str, Any] = {}
    t = time.perf_counter()
    passwords = _provision(broker, ids)
    # 10,000 identities on a loaded VM: Mosquitto missed the default 10 s to listen.
    broker.start(timeout=120)
    out["provision_and_start_s"] = round(time.perf_counter() - t, 2)
    try:
        subs = [RawSubscriber(d, d, passwords[d], [topics.group_notice(GROUP)]) for d in ids]
        t = time.perf_counter()
        # NATS creates a JetStream consumer per QoS 1 subscription: 200 at once timed its
        # JetStream API out (SUBACK 0x80 at the 6,110th device, load 10), so it gets 25.
        await connect_all(subs, broker.host, broker.port, batch=25 if name == "nats" else 200)
        out["connect_s"] = round(time.perf_counter() - t, 2)
        orch = RawSubscriber(broker.ORCHESTRATOR_USER, broker.ORCHESTRATOR_USER,
                             broker.orchestrator_password, [topics.reports_filter])  # fmt: skip
        await orch.connect(broker.host, broker.port)
        await asyncio.sleep(1)  # let the connect storm settle

        payload = os.urandom(1024)
        t0 = time.perf_counter()
        orch.send(codec.publish(topics.group_notice(GROUP), payload, 1, 1, version=4))
        done = await _wait(subs, 1, 300)
        out["fanout_s"] = None if done is None else round(done - t0, 3)

        t0 = time.perf_counter()
        for i, s in enumerate(subs):
            s.send(codec.publish(topics.report(ids[i]), payload[:200], 1, 2, version=4))
        done = await _wait([orch], n, 600)
        out["ingest_s"] = None if done is None else round(done - t0, 3)
        out["ingest_per_s"] = None if done is None else round(n / (done - t0))
        # Where reports went missing: the broker acknowledged them (then lost them), or not.
        out["reports_received"] = len(orch.received)
        out["reports_acked_by_broker"] = sum(s.acked for s in subs)
        for s in [*subs, orch]:
            await s.close()
    finally:
        broker.stop()
    return out


def run(quick: bool = False) -> dict[str, Any]:
    raise_open_files()
    plan: dict[int, tuple[str, ...]] = {200: BROKERS} if quick else {1000: BROKERS, 10_000: BROKERS}
    if os.environ.get("FLEETPUSH_BENCH_SIZES"):  # e.g. "10000": only those sizes of the plan
        sizes = {int(x) for x in os.environ["FLEETPUSH_BENCH_SIZES"].split(",")}
        plan = {n: names for n, names in plan.items() if n in sizes}
    if os.environ.get("FLEETPUSH_BENCH_BROKERS"):  # e.g. "mosquitto,nats"
        names = tuple(os.environ["FLEETPUSH_BENCH_BROKERS"].split(","))
        plan = {n: tuple(b for b in bs if b in names) for n, bs in plan.items()}
    results: dict[str, Any] = {"cpus": os.cpu_count(), "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="fleetpush-brokers-") as tmp:
        for n, names in plan.items():
            row: dict[str, Any] = {}
            for name in names:
                try:
                    row[name] = asyncio.run(_one(name, n, Path(tmp) / str(n)))
                except Exception as e:  # one broker's failure is a result too
                    row[name] = {"error": repr(e)[:300]}
            for name in names[1:]:
                for key in ("fanout_s", "ingest_s"):
                    mine, base = row[name].get(key), row["mosquitto"].get(key)
                    if mine and base:
                        row[name][f"{key}_vs_mosquitto"] = round(mine / base, 2)
            results[str(n)] = row
    results["load_after"] = os.getloadavg()
    return results
