"""Simulated devices: real ``DeviceAgent`` instances, many in one event loop.

Each device has its own state folder and broker identity. ``Behaviour`` says how it
misbehaves: a failing health check (so the update rolls back), a slow link (the agent's own
download bandwidth cap), or going offline for a while. ``Observer`` records when each device
first reported each state, with a monotonic clock, straight from the agent (no broker or
database in between), which is how the demo and the benchmarks time "verified its notice".
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device_client.agent import DeviceAgent
from device_client.config import DeviceConfig, parse_config
from device_client.reports import ReportHook
from device_client.transport.endpoints import starting_at
from device_client.wiring import build_agent
from fleetpush_common.tasks import cancel_and_wait
from fleetpush_protocol.messages import ErrorInfo, ReportState
from orchestrator.broker import MosquittoBroker
from orchestrator.broker.credentials import DEVICE_ROLE, hash_password
from orchestrator.broker.registry import Identity

__all__ = [
    "TERMINAL_REPORTS",
    "Behaviour",
    "Observer",
    "SimDevice",
    "SimFleet",
    "assign_behaviours",
    "device_config",
    "provision_passwords",
]

logger = logging.getLogger(__name__)

TERMINAL_REPORTS = frozenset({"succeeded", "failed", "rolled_back", "rejected", "canceled"})


@dataclass(frozen=True, slots=True)
class Behaviour:
    """How one simulated device behaves."""

    healthy: bool = True  # False: the health check fails, the update is rolled back
    bandwidth: int = 0  # bytes per second for downloads; 0 = unlimited
    offline_after_s: float | None = None  # goes offline this long after start ...
    offline_for_s: float = 0.0  # ... for this long, then comes back
    health_check: bool = True  # run /bin/true (or /bin/false) as the health check
    hold_updates: bool = False  # verify and report notices, but defer them (no download)


@dataclass(frozen=True, slots=True)
class SimDevice:
    device_id: str
    password: str
    behaviour: Behaviour = Behaviour()


def provision_passwords(
    broker: MosquittoBroker, device_ids: Sequence[str], groups: tuple[str, ...] = ()
) -> dict[str, str]:
    """Give every device a fresh password in one registry write; reload a running broker.

    ``MosquittoBroker.add_device`` rewrites the password file per device; for thousands of
    devices one locked update of the registry is what keeps provisioning linear.
    """
    passwords = {d: secrets.token_urlsafe(12) for d in device_ids}
    with broker.registry.locked() as reg:
        for d, pw in passwords.items():
            old = reg.get(d)
            reg.put(
                Identity(
                    d, DEVICE_ROLE, groups, hash_password(pw),
                    cert_serials=old.cert_serials if old else (),
                    model=old.model if old else None,
                )
            )  # fmt: skip
    broker.reload()  # writes the password file and ACL from the registry, then signals
    return passwords


def device_config(
    device: SimDevice,
    *,
    state_dir: Path,
    broker_url: str,
    topic_prefix: str,
    root_keys: Iterable[str],
    groups: Sequence[str] = (),
    model: str = "sim",
    broker_urls: Sequence[str] = (),
    protocol: str = "5",
) -> DeviceConfig:
    """The configuration a provisioned device would read from its ``device.toml``;
    ``broker_urls`` (several nodes) replaces ``broker_url``, the device starting on the first."""
    b = device.behaviour
    health: dict[str, Any] = {"timeout": "10s"}
    if b.health_check or not b.healthy:
        health["command"] = ["/bin/true" if b.healthy else "/bin/false"]
    raw: dict[str, Any] = {
        "device": {"id": device.device_id, "model": model, "groups": list(groups),
                   "state_dir": str(state_dir)},
        "broker": {"username": device.device_id, "password": device.password,
                   "keepalive": "60s", "session_expiry": "1h", "topic_prefix": topic_prefix,
                   "protocol": protocol},
        "trust": {"root_keys": list(root_keys), "root_threshold": 1},
        "download": {"bandwidth_bytes_per_s": b.bandwidth, "connect_timeout": "10s",
                     "read_timeout": "30s", "progress_interval": "2s"},
        "install": {"handler": "directory"},
        "health": health,
    }  # fmt: skip
    if broker_urls:
        raw["broker"]["urls"] = starting_at(device.device_id, broker_urls)
    else:
        raw["broker"]["url"] = broker_url
    if b.hold_updates:
        raw["policy"] = {"hold_until": "2999-01-01T00:00:00Z", "download_ahead": False}
    return parse_config(raw, source=f"{device.device_id}.toml", base=state_dir)


@dataclass
class Observer:
    """First time (``time.perf_counter()``) each device reported each state, per rollout."""

    first: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    last_state: dict[tuple[str, str], str] = field(default_factory=dict)  # (rollout, device)
    errors: Counter[str] = field(default_factory=Counter)

    def saw(self, device_id: str, rollout_id: str, state: str, code: str) -> None:
        seen = self.first.setdefault((rollout_id, state), {})
        seen.setdefault(device_id, time.perf_counter())
        self.last_state[(rollout_id, device_id)] = state
        if code:
            self.errors[code] += 1

    def times(self, rollout_id: str, state: str) -> dict[str, float]:
        return self.first.get((rollout_id, state), {})

    def notified(self, rollout_id: str) -> dict[str, float]:
        """When each device verified its notice: its first report of the rollout (normally
        ``notified``; a rejection or a failure counts too, since the device decided)."""
        out: dict[str, float] = {}
        for (rid, _state), seen in self.first.items():
            if rid == rollout_id:
                for d, t in seen.items():
                    out[d] = min(t, out.get(d, t))
        return out

    def final_states(self, rollout_id: str) -> Counter[str]:
        return Counter(s for (rid, _d), s in self.last_state.items() if rid == rollout_id)

    def rollouts(self) -> list[str]:
        return sorted({rid for rid, _ in self.first})

    def hook(self, device_id: str) -> ReportHook:
        """The ``on_report`` hook of ``device_id``'s agent."""

        def on_report(rollout_id: str, state: ReportState, error: ErrorInfo | None) -> None:
            self.saw(device_id, rollout_id, state.value, error.code if error else "")

        return on_report


class SimFleet:
    """Runs simulated devices as tasks of the current event loop.

    Args:
        root: folder for the devices' state folders (one per device).
        broker_url: ``mqtt://host:port``.
        topic_prefix: the fleet's topic prefix.
        root_keys: the fleet's root public keys (hex).
        groups: groups every device belongs to.
    """

    def __init__(
        self,
        root: Path,
        *,
        broker_url: str,
        topic_prefix: str,
        root_keys: Sequence[str],
        groups: Sequence[str] = (),
        observer: Observer | None = None,
        broker_urls: Sequence[str] = (),
        protocol: str = "5",
    ) -> None:
        self.root = root
        self.broker_url = broker_url
        self.broker_urls = list(broker_urls)
        self.protocol = protocol
        self.topic_prefix = topic_prefix
        self.root_keys = list(root_keys)
        self.groups = list(groups)
        self.observer = observer or Observer()
        self.devices: dict[str, SimDevice] = {}
        self.agents: dict[str, DeviceAgent] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._churn: list[asyncio.Task[None]] = []

    @property
    def running(self) -> int:
        return sum(1 for t in self._tasks.values() if not t.done())

    def add(self, devices: Iterable[SimDevice]) -> None:
        for d in devices:
            self.devices[d.device_id] = d

    def _config(self, device: SimDevice) -> DeviceConfig:
        state = self.root / device.device_id
        state.mkdir(parents=True, exist_ok=True)
        return device_config(
            device, state_dir=state, broker_url=self.broker_url, topic_prefix=self.topic_prefix,
            root_keys=self.root_keys, groups=self.groups, broker_urls=self.broker_urls,
            protocol=self.protocol,
        )  # fmt: skip

    def start_device(self, device_id: str) -> None:
        device = self.devices[device_id]
        agent = build_agent(
            self._config(device), durable=False, on_report=self.observer.hook(device_id)
        )
        self.agents[device_id] = agent
        self._tasks[device_id] = asyncio.create_task(agent.run(), name=f"sim-{device_id}")

    async def stop_device(self, device_id: str, wait_s: float = 10.0) -> None:
        agent = self.agents.pop(device_id, None)
        task = self._tasks.pop(device_id, None)
        if agent is None or task is None:
            return
        agent.stop()
        try:
            await asyncio.wait_for(asyncio.shield(task), wait_s)
        except (TimeoutError, asyncio.CancelledError):
            await cancel_and_wait(task)
        except Exception:
            logger.exception("%s: agent failed", device_id)

    async def start(self, batch: int = 200, pause_s: float = 0.05) -> None:
        """Start every device, in batches so the broker's accept queue never overflows."""
        ids = list(self.devices)
        for i in range(0, len(ids), batch):
            for d in ids[i : i + batch]:
                self.start_device(d)
            await asyncio.sleep(pause_s)
        for d in ids:
            b = self.devices[d].behaviour
            if b.offline_after_s is not None:
                self._churn.append(asyncio.create_task(self._offline_once(d, b)))

    async def _offline_once(self, device_id: str, b: Behaviour) -> None:
        assert b.offline_after_s is not None  # noqa: S101 - only scheduled when set
        await asyncio.sleep(b.offline_after_s)
        await self.stop_device(device_id)
        logger.info("%s: offline for %.0fs", device_id, b.offline_for_s)
        await asyncio.sleep(b.offline_for_s)
        self.start_device(device_id)

    async def stop(self) -> None:
        """Stop every device (each publishes its offline presence first)."""
        await cancel_and_wait(*self._churn)
        self._churn.clear()
        await asyncio.gather(*(self.stop_device(d) for d in list(self.agents)))


def assign_behaviours(
    device_ids: Sequence[str],
    *,
    fail_share: float = 0.0,
    offline_share: float = 0.0,
    offline_after_s: float = 5.0,
    offline_for_s: float = 20.0,
    slow_share: float = 0.0,
    bandwidth: int = 0,
    seed: int | None = None,
) -> dict[str, Behaviour]:
    """Pick which devices fail, go offline or have slow links (independent random draws of
    exact sizes: ``round(share * N)`` devices each)."""
    rng = random.Random(seed)  # noqa: S311 - simulation, not crypto
    n = len(device_ids)

    def pick(share: float) -> set[str]:
        return set(rng.sample(list(device_ids), round(max(0.0, min(1.0, share)) * n)))

    failing, offline, slow = pick(fail_share), pick(offline_share), pick(slow_share)
    out = {}
    for d in device_ids:
        out[d] = Behaviour(
            healthy=d not in failing,
            bandwidth=bandwidth if d in slow else 0,
            offline_after_s=rng.uniform(0, offline_after_s) if d in offline else None,
            offline_for_s=offline_for_s,
        )
    return out
