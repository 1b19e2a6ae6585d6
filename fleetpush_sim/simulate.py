"""``fleetpush simulate``: a simulated fleet against a running orchestrator and broker.

The devices need broker identities: they are (re)provisioned with fresh passwords in the
broker's working directory (the identity registry next to ``broker.json``, normally
``<data_dir>/broker``), which reloads the running Mosquitto. They trust the fleet's root
keys from the orchestrator's keys folder. Rollouts are started by the operator as usual
(``fleetpush rollout create ...``); the simulator only plays the devices and reports what
they did.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fleetpush_protocol.topics import Topics
from fleetpush_sim.fleet import (
    Observer,
    SimDevice,
    SimFleet,
    assign_behaviours,
    provision_passwords,
)
from fleetpush_sim.limits import raise_open_files
from fleetpush_sim.timing import terminal_times
from orchestrator.broker import MosquittoBroker

__all__ = ["SimOptions", "open_broker", "run_simulation"]

logger = logging.getLogger(__name__)

TickHook = Callable[[dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class SimOptions:
    devices: int
    id_prefix: str = "sim"
    groups: tuple[str, ...] = ("sim",)
    fail_share: float = 0.0
    offline_share: float = 0.0
    offline_after_s: float = 10.0  # offline devices drop within this long after start ...
    offline_for_s: float = 30.0  # ... and stay away this long
    slow_share: float = 0.0
    bandwidth: int = 0  # bytes per second for slow devices
    duration_s: float = 0.0  # 0: until Ctrl-C / SIGTERM
    health_check: bool = True
    seed: int | None = None
    state_dir: Path | None = None  # default: a temporary folder, removed at the end


def open_broker(workdir: Path, topic_prefix: str) -> MosquittoBroker:
    """The broker whose working directory is ``workdir`` (listeners from ``broker.json``)."""
    info: dict[str, Any] = {}
    with contextlib.suppress(FileNotFoundError, ValueError):
        info = json.loads((workdir / "broker.json").read_text())
    host, port, tls_port, prefix = (
        info.get("host"), info.get("port"), info.get("tls_port"), info.get("topic_prefix"),
    )  # fmt: skip
    return MosquittoBroker(
        workdir,
        topics=Topics(prefix if isinstance(prefix, str) else topic_prefix),
        host=host if isinstance(host, str) else "127.0.0.1",
        port=port if isinstance(port, int) else 1883,
        tls=isinstance(tls_port, int),
        tls_port=tls_port if isinstance(tls_port, int) else None,
    )


def _snapshot(fleet: SimFleet, started: float) -> dict[str, Any]:
    obs = fleet.observer
    rollouts = {}
    for rid in obs.rollouts():
        states = obs.final_states(rid)
        rollouts[rid] = dict(sorted(states.items()))
    return {
        "elapsed_s": round(time.monotonic() - started, 1),
        "devices_running": fleet.running,
        "rollouts": rollouts,
    }


def summarize(fleet: SimFleet, started: float, behaviours: Counter[str]) -> dict[str, Any]:
    """What the devices did, per rollout: final states and how long notices took to spread."""
    obs = fleet.observer
    rollouts = {}
    for rid in obs.rollouts():
        notified = obs.notified(rid)
        done = terminal_times(obs, rid)
        first = min(notified.values()) if notified else None
        rollouts[rid] = {
            "devices": len(notified),
            "final_states": dict(sorted(obs.final_states(rid).items())),
            "notify_spread_s": round(max(notified.values()) - first, 3) if first else None,
            "first_to_last_done_s": round(max(done.values()) - first, 3)
            if first and done else None,
        }  # fmt: skip
    return {
        "devices": len(fleet.devices),
        "behaviours": dict(sorted(behaviours.items())),
        "elapsed_s": round(time.monotonic() - started, 1),
        "rollouts": rollouts,
        "error_codes": dict(obs.errors),
    }


async def _simulate(
    o: SimOptions, broker: MosquittoBroker, root_keys: list[str], state_root: Path,
    on_tick: TickHook | None,
) -> dict[str, Any]:  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    ids = [f"{o.id_prefix}-{i:05d}" for i in range(1, o.devices + 1)]
    passwords = await asyncio.to_thread(provision_passwords, broker, ids, o.groups)
    behaviours = assign_behaviours(
        ids, fail_share=o.fail_share, offline_share=o.offline_share,
        offline_after_s=o.offline_after_s, offline_for_s=o.offline_for_s,
        slow_share=o.slow_share, bandwidth=o.bandwidth, seed=o.seed,
    )  # fmt: skip
    kinds: Counter[str] = Counter()
    for b in behaviours.values():
        kinds["failing_health"] += not b.healthy
        kinds["offline_for_a_while"] += b.offline_after_s is not None
        kinds["slow_link"] += b.bandwidth > 0
    fleet = SimFleet(
        state_root, broker_url=broker.url, topic_prefix=broker.topics.prefix,
        root_keys=root_keys, groups=o.groups, observer=Observer(),
    )  # fmt: skip
    fleet.add(
        SimDevice(d, passwords[d], replace(behaviours[d], health_check=o.health_check)) for d in ids
    )
    started = time.monotonic()
    try:
        await fleet.start()
        while not stop.is_set():
            if o.duration_s and time.monotonic() - started >= o.duration_s:
                break
            if on_tick is not None:
                on_tick(_snapshot(fleet, started))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
        return summarize(fleet, started, kinds)
    finally:
        await fleet.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def run_simulation(
    o: SimOptions, broker: MosquittoBroker, root_keys: list[str], on_tick: TickHook | None = None
) -> dict[str, Any]:
    """Run the fleet until the duration ends or SIGINT/SIGTERM; return the summary."""
    raise_open_files()
    if o.state_dir is not None:
        o.state_dir.mkdir(parents=True, exist_ok=True)
        return asyncio.run(_simulate(o, broker, root_keys, o.state_dir, on_tick))
    with tempfile.TemporaryDirectory(prefix="fleetpush-sim-") as tmp:
        return asyncio.run(_simulate(o, broker, root_keys, Path(tmp), on_tick))
