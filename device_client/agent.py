"""The device agent: its parts, put together, and their lifecycle.

``DeviceAgent`` builds nothing that talks to the outside: it takes its state store, payload
fetcher, broker session factory, install handler and clock. ``device_client.wiring.
build_agent(config)`` gives it the real ones; tests give it in-memory ones
(tests/agent_sim.py). Many agents can run in one event loop (``asyncio.gather``) for
simulations: each holds its own small state and one broker session.

The parts: ``persisted.Persisted`` (the state and its one way to disk), ``reports.Reporter``
(the outbox), ``messages.MessageRouter`` (acks, keyrings and notices through the trust
driver, off the receive loop), ``jobs.runner.JobRunner`` (the state table).

Crash safety (docs/device.md, "Crash safety"): the state file is written before each
transition, and on start the persisted job resumes where it was:

===============  ===========================================================
persisted state  on restart
===============  ===========================================================
notified         decide again (policy), then download; only an older agent leaves
                 this: the notice and the first decision are now one write
deferred         wait for the policy again
downloading      resume the download with Range from the partial file
downloaded       install (after the policy allows it)
installing       interrupted: roll back to the previous slot, report
                 ``rolled_back``/``interrupted``
installed        a reboot (or a crash) happened: run the health check
health_check     run the health check again; after ``max_interrupted`` runs that
                 never finished, roll back with ``interrupted``
===============  ===========================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Callable

from device_client import __version__
from device_client.config import DeviceConfig
from device_client.handlers import Handler
from device_client.hold_socket import HoldSocket
from device_client.jobs.runner import JobRunner
from device_client.messages import MessageRouter
from device_client.persisted import Persisted, Store
from device_client.reports import Reporter, ReportHook
from device_client.store import AgentState
from device_client.transport.base import (
    AgentSession,
    PayloadFetcher,
    Publication,
    SessionFactory,
    SessionWiring,
)
from device_client.transport.delta_fetch import DeltaFetcher
from fleetpush_common.tasks import cancel_and_wait
from fleetpush_protocol.driver import DeviceTrust
from fleetpush_protocol.envelope import encode_message
from fleetpush_protocol.messages import Inventory, Presence
from fleetpush_protocol.verify import DeviceIdentity, TrustedKeyring, VerifyPolicy

__all__ = ["Clock", "DeviceAgent", "ReportHook"]

logger = logging.getLogger(__name__)

Clock = Callable[[], float]  # Unix time in seconds
OFFLINE_PUBLISH_S = 5.0  # seconds the offline presence may take at shutdown


class DeviceAgent:
    """One device: verifies notices, runs updates, reports every step.

    Args:
        config: the validated configuration.
        store: loads and saves the persistent state.
        fetcher: downloads payloads.
        session_factory: makes the broker session, when ``run`` starts.
        handler: installs payloads.
        clock: Unix time in seconds; injected so tests can move time.
        on_report: called with each state report as it is queued; the simulator times
            devices with it, straight from the agent rather than through broker and database.
        deltas: delta payloads and metered links (None: full payloads only).
    """

    def __init__(
        self,
        config: DeviceConfig,
        *,
        store: Store,
        fetcher: PayloadFetcher,
        session_factory: SessionFactory,
        handler: Handler,
        clock: Clock = time.time,
        on_report: ReportHook | None = None,
        deltas: DeltaFetcher | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.device_id = config.device.id
        self.topics = config.broker.topics
        self.store = store
        self.fetcher = fetcher
        self.handler = handler
        self.downloads = config.device.state_dir / "downloads"
        anchor = TrustedKeyring.anchor(config.trust.root_keys, config.trust.root_threshold)
        policy = VerifyPolicy(max_payload_bytes=config.download.max_payload_bytes)
        self.persisted = Persisted(store, anchor, policy, self.downloads)
        self.reporter = Reporter(
            self.device_id, self.topics, self.persisted, clock, on_report,
            output_tail=config.evidence.output_tail,
        )  # fmt: skip
        self.runner = JobRunner(
            config, persisted=self.persisted, reporter=self.reporter, fetcher=fetcher,
            handler=handler, clock=clock, on_succeeded=self._publish_inventory, deltas=deltas,
        )  # fmt: skip
        self.deltas = deltas
        self.router = MessageRouter(config, self.persisted, self.reporter, self.runner, clock)
        # ``fleetpush-device hold`` (docs/device.md, "Application holds"); None: not set up
        self.hold_socket = (
            HoldSocket(config.holds, self.runner.holds) if config.holds.socket else None
        )
        self._session_factory = session_factory
        self._stop: asyncio.Event | None = None
        self.session: AgentSession | None = None

    @property
    def state(self) -> AgentState:
        """The state as loaded and changed since (what the next write persists)."""
        return self.persisted.state

    @property
    def trust(self) -> DeviceTrust:
        """The trust driver: the keyring trusted now, sequences, parked notices."""
        return self.persisted.trust

    @property
    def identity(self) -> DeviceIdentity:
        """Who the device is for targeting."""
        return self.router.identity

    # --- lifecycle -------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until ``stop()``: connect, verify, update, report. Reconnects forever."""
        self._stop = asyncio.Event()
        self.persisted.load()
        self.runner.stopping = False
        will = Publication(self.topics.presence(self.device_id), self._presence(False), True)
        self.session = session = self._session_factory(
            SessionWiring(
                subscriptions=self.router.subscriptions,
                will=will,
                on_connect=self._on_connect,
                on_message=self.router.submit,
                outbox=self.persisted.state.outbox,
            )
        )
        await self._open_hold_socket()
        inbox = asyncio.create_task(self.router.run(), name=f"{self.device_id}.inbox")
        session_task = asyncio.create_task(session.run(), name=f"{self.device_id}.mqtt")
        self.runner.kick()
        try:
            await self._stop.wait()
        finally:
            self.runner.stopping = True
            if self.hold_socket is not None:
                await self.hold_socket.close()
            await cancel_and_wait(inbox)
            await self.runner.cancel()
            self.persisted.flush()
            await self._say_offline(session)
            await cancel_and_wait(session_task)
            # Acks arrive until the session ends; their flush timer must not outlive run():
            # fired later it would write this agent's stale state over the file a restarted
            # agent is using.
            self.persisted.flush()

    async def _say_offline(self, session: AgentSession) -> None:
        """Publish the retained offline presence before the session ends.

        Also when the session is between two connections: it left the last one with a
        normal DISCONNECT (a reconnect it chose, such as for unconfirmed reports), which
        makes the broker discard the will, so nothing else would say the device is gone.
        """
        offline = Publication(self.topics.presence(self.device_id), self._presence(False), True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(OFFLINE_PUBLISH_S):
                while not await session.publish(offline):
                    if session.connected.is_set():
                        await asyncio.sleep(0.1)  # refused while connected: it is closing
                    else:
                        await session.connected.wait()

    async def _open_hold_socket(self) -> None:
        # Without it no application can hold updates; they still install: log, go on.
        if self.hold_socket is not None:
            try:
                await self.hold_socket.start()
            except (OSError, KeyError) as e:
                logger.error(  # noqa: TRY400 - the message says it all; no traceback
                    "%s: hold socket %s not opened: %s", self.device_id, self.hold_socket.path, e
                )

    def stop(self) -> None:
        """Ask ``run`` to return (safe from a signal handler)."""
        self.runner.stopping = True  # from now on a notice starts no job: it resumes later
        if self._stop is not None:
            self._stop.set()

    def wake(self) -> None:
        """Re-check the update policy now (tests call it after moving the clock)."""
        self.runner.wake()

    # --- presence, inventory ---------------------------------------------------------------

    def _presence(self, online: bool) -> bytes:
        return encode_message(
            Presence(device_id=self.device_id, online=online, at=int(self.clock()))
        )

    def _inventory(self) -> bytes:
        c = self.config.device
        try:
            free = shutil.disk_usage(c.state_dir).free
        except OSError:
            free = 0
        installed = self.persisted.state.installed
        inv = Inventory(
            device_id=c.id,
            model=c.model,
            groups=c.groups,
            client_version=__version__,
            installed=(installed,) if installed else (),
            free_bytes=free,
            at=int(self.clock()),
        )
        return encode_message(inv)

    def _on_connect(self) -> list[Publication]:
        return [
            Publication(self.topics.presence(self.device_id), self._presence(True), True),
            Publication(self.topics.inventory(self.device_id), self._inventory(), True),
        ]

    async def _publish_inventory(self) -> None:
        if self.session is not None:
            inv = Publication(self.topics.inventory(self.device_id), self._inventory(), True)
            await self.session.publish(inv)
