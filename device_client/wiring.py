"""``build_agent(config)``: a ``DeviceAgent`` with the real parts, the one way to start one.

The CLI (``fleetpush-device``), the simulator (fleetpush_sim) and the integration tests all
start agents through here; only the fast tests (tests/agent_sim.py) wire in-memory parts.
"""

from __future__ import annotations

import time

from device_client import __version__
from device_client.agent import Clock, DeviceAgent
from device_client.config import DeviceConfig
from device_client.handlers import make_handler
from device_client.reports import ReportHook
from device_client.store import StateStore
from device_client.transport.base import SessionFactory, SessionWiring
from device_client.transport.fetcher import Fetcher
from device_client.transport.session import MqttSession

__all__ = ["build_agent", "mqtt_session_factory"]


def mqtt_session_factory(config: DeviceConfig) -> SessionFactory:
    """Makes the agent's ``MqttSession`` to the configured broker."""

    def make(w: SessionWiring) -> MqttSession:
        return MqttSession(
            config.broker,
            client_id=config.device.id,
            subscriptions=w.subscriptions,
            will=w.will,
            on_connect=w.on_connect,
            on_message=w.on_message,
            outbox=w.outbox,
            ack_timeout_s=config.broker.ack_timeout_s,
        )

    return make


def build_agent(
    config: DeviceConfig,
    *,
    clock: Clock = time.time,
    durable: bool = True,
    on_report: ReportHook | None = None,
) -> DeviceAgent:
    """The agent of ``config`` with its state file, HTTP fetcher, MQTT session and handler.

    Args:
        config: the validated configuration.
        clock: Unix time in seconds; injected so tests can move time.
        durable: fsync state writes (False only for simulations of many devices).
        on_report: told of each state report as it is queued (the simulator's timing).
    """
    return DeviceAgent(
        config,
        store=StateStore(config.device.state_dir, durable=durable, clock=clock),
        fetcher=Fetcher(config.download, user_agent=f"fleetpush-device/{__version__}"),
        session_factory=mqtt_session_factory(config),
        handler=make_handler(config.install),
        clock=clock,
        on_report=on_report,
    )
