"""``fleetpush serve``: the database, MQTT link, ingestion, rollout engine and HTTP API."""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
from collections.abc import Callable

from aiohttp import web

from fleetpush_common.atomic import make_private_dir
from fleetpush_common.clock import Clock, SystemClock
from fleetpush_common.tasks import cancel_and_wait
from orchestrator.api import ApiContext, build_app
from orchestrator.config import ConfigError, OrchestratorConfig
from orchestrator.deltas import DeltaIndex, DeltaMaker
from orchestrator.engine import RolloutEngine
from orchestrator.ingest import Ingestor
from orchestrator.mqtt.link import MqttLink
from orchestrator.notices import NoticeFactory
from orchestrator.payloads import PayloadStore, UrlSigner
from orchestrator.registry_sync import RegistrySync
from orchestrator.replicas import ReplicaIdentity, SqliteServeLock
from orchestrator.security.auth import TokenAuth, load_tokens_file
from orchestrator.security.keystore import KeyStore, SigningSet
from orchestrator.store import Database, IngestResult, Store, open_database
from orchestrator.support import signed_periods

__all__ = ["Orchestrator", "serve"]

logger = logging.getLogger(__name__)


class Orchestrator:
    """The running service; ``start`` and ``stop`` it, or use ``serve``.

    Args:
        config: the parsed configuration.
        clock: injected time (tests move it by hand).
    """

    def __init__(self, config: OrchestratorConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.keys = KeyStore(config.keys_dir)
        self._signing: SigningSet | None = None
        self._runner: web.AppRunner | None = None
        self._engine_task: asyncio.Task[None] | None = None
        self._prune_task: asyncio.Task[None] | None = None
        self._beat_task: asyncio.Task[None] | None = None
        self._sqlite_lock: SqliteServeLock | None = None
        # this process among the replicas: its id is its MQTT identity (client id)
        self.replica = ReplicaIdentity(config.mqtt.login, self.clock, config.rollouts.lease_s)
        self.db: Database | None = None
        self.link: MqttLink | None = None
        self.ingestor: Ingestor | None = None
        self.engine: RolloutEngine | None = None
        self.port = config.http.port
        self.shared = False  # device messages on a shared subscription (replicas)

    def signing(self, now: float) -> SigningSet:
        """The signing set valid at ``now``, reloaded from disk when it ran out."""
        s = self._signing
        if s is None or now > s.not_after - 60:
            s = self._signing = self.keys.signing_set(now)
        return s

    async def start(self) -> None:
        """Open the database, check keys, connect to MQTT, start ingestion, engine and API.

        Raises:
            KeyStoreError: no usable keys (run ``fleetpush keys init``).
            ConfigError: no broker is configured (``MqttConfig.missing``).
            ConnectionError: the broker is unreachable or refused the login.
            OSError: the HTTP port is taken.
        """
        cfg = self.config
        if cfg.mqtt.missing:
            raise ConfigError(cfg.mqtt.missing)
        loop = asyncio.get_running_loop()
        # Keys first: a start that fails on them must leave the database as it found it
        # (the replica registration below writes to it).
        self.signing(self.clock.now())
        make_private_dir(cfg.data_dir)
        urls = UrlSigner.from_file(cfg.data_dir / "url-signing.key")
        if cfg.database.backend == "sqlite":
            self._sqlite_lock = SqliteServeLock(cfg.database.sqlite_path)
            self._sqlite_lock.acquire()

        self.db = db = await asyncio.to_thread(open_database, cfg.database)
        await self.replica.register(db, urls.key_id)
        registry = RegistrySync(db, cfg.registry_path, self.clock)
        await registry.refresh()
        topics = cfg.mqtt.topics
        payloads = PayloadStore(cfg.payload_dir)
        delta_index = DeltaIndex(payloads)
        factory = NoticeFactory(
            topics, cfg.http, urls, cfg.rollouts.notice_ttl_s, deltas=delta_index
        )
        filters = [topics.reports_filter, topics.presence_filter, topics.inventory_filter]
        self.shared = bool(cfg.mqtt.share_group) and cfg.database.backend == "postgresql"
        if self.shared:
            # Each device message goes to one replica of the group (MQTT 5 shared
            # subscriptions); the store accepts a report once whoever gets it. The broker
            # feeds a member while its session lives, even offline: a dead replica's
            # session ends after a lease, and what it held its devices send again.
            filters = [f"$share/{cfg.mqtt.share_group}/{f}" for f in filters]
            expiry = max(1, int(cfg.rollouts.lease_s))
            self.link = link = MqttLink(cfg.mqtt, filters, session_expiry_s=expiry)
        else:
            self.link = link = MqttLink(cfg.mqtt, filters)
        self.engine = engine = RolloutEngine(
            db,
            notices=factory,
            publisher=link,
            signing=self.signing,
            clock=self.clock,
            tick_s=cfg.rollouts.tick_s,
            follow_every_s=cfg.rollouts.follow_every_s,
            refresh_registry=registry.refresh,
            holder=self.replica.replica_id,
            lease_s=cfg.rollouts.lease_s,
            broker_expires=cfg.mqtt.protocol == "5",
        )

        def on_batch(result: IngestResult) -> None:
            if result.accepted:
                loop.call_soon_threadsafe(engine.wake)

        self.ingestor = ingestor = Ingestor(
            db, topics=topics, clock=self.clock, config=cfg.ingest, ack=link.ack,
            on_batch=on_batch, publish=link.publish_many,
        )  # fmt: skip
        link.on_message = ingestor.on_message
        link.on_connect = functools.partial(loop.call_soon_threadsafe, engine.broker_connected)
        ingestor.start()
        await asyncio.to_thread(link.start)
        await self.publish_keyrings()
        file_tokens = load_tokens_file(cfg.auth.tokens_file) if cfg.auth.tokens_file else {}
        context = ApiContext(
            config=cfg,
            db=db,
            clock=self.clock,
            payloads=payloads,
            deltas=DeltaMaker(payloads, delta_index, cfg.deltas),
            urls=urls,
            keys=self.keys,
            auth=TokenAuth(db, file_tokens),
            engine=engine,
            extra_metrics={
                "mqtt_connected": link.connected.is_set,
                "ingest_queue": ingestor.pending,
                "rollouts_driven": lambda: len(engine.held),
            },
            reload_keys=self.reload_keys,
            registry=registry,
        )
        self._runner = web.AppRunner(build_app(context), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, cfg.http.host, cfg.http.port)
        await site.start()
        if self._runner.addresses:
            self.port = int(self._runner.addresses[0][1])
        self._engine_task = asyncio.create_task(engine.run(), name="fleetpush-engine")
        self._prune_task = asyncio.create_task(self._prune_forever(), name="fleetpush-prune")
        self._beat_task = asyncio.create_task(self._beat_forever(), name="fleetpush-beat")
        logger.info("fleetpush orchestrator listening on %s:%d", cfg.http.host, self.port)
        logger.info(
            "replica %s (host %s, pid %d): MQTT client id %s, device messages %s, rollout "
            "leases of %gs", self.replica.replica_id, self.replica.host, self.replica.pid,
            cfg.mqtt.login,
            f"shared in group {cfg.mqtt.share_group!r}" if self.shared else "unshared",
            cfg.rollouts.lease_s,
        )  # fmt: skip

    async def _beat_forever(self) -> None:
        """Renew this replica's row, so a second process with its identity is refused."""
        assert self.db is not None  # noqa: S101 - started after the database
        while True:
            await asyncio.sleep(self.config.rollouts.lease_s / 3)
            try:
                await self.replica.beat(self.db)
            except Exception:
                logger.exception("renewing this replica's row failed")

    async def prune_reports(self) -> int:
        """Apply the retention policy once; return the stored reports deleted.

        One bounded transaction per call to the database thread, so ingestion batches
        queued meanwhile are written between them.
        """
        assert self.db is not None  # noqa: S101 - called after start
        r = self.config.retention
        before = self.clock.now() - r.max_report_age_s
        total = 0
        cursor: str | None = ""
        while cursor is not None:
            step = functools.partial(
                _prune_step, keep=r.reports_per_device, before=before, after_device=cursor,
                limit=r.prune_batch, keep_outputs=r.outputs_per_device,
            )  # fmt: skip
            deleted, cursor = await self.db.run(step)
            total += deleted
        if total:
            logger.info("retention: deleted %d stored reports", total)
        return total

    async def _prune_forever(self) -> None:
        while True:
            try:
                await self.prune_reports()
            except Exception:
                logger.exception("pruning stored reports failed")
            await asyncio.sleep(self.config.retention.prune_every_s)

    async def publish_keyrings(self) -> int:
        """Publish every keyring version, retained, so devices can walk the whole chain."""
        assert self.link is not None  # noqa: S101 - called after start
        topics = self.config.mqtt.topics
        blobs = self.keys.keyring_blobs()
        items = [(topics.keyring(v), b, True) for v, b in blobs]
        if blobs:  # the newest again, for brokers without retained wildcard deliveries
            items.append((topics.keyring_latest, blobs[-1][1], True))
        if self.config.support:  # signed with the keys just published, so after them
            now = int(self.clock.now())
            items.append((topics.support, signed_periods(self.config.support,
                                                        self.signing(now), now), True))  # fmt: skip
        await self.link.publish_many(items)
        return len(blobs)

    async def reload_keys(self) -> int:
        """Re-read the keys folder (after a rotation) and publish the keyrings."""
        self._signing = None
        self.signing(self.clock.now())
        return await self.publish_keyrings()

    async def stop(self) -> None:
        """Stop the API and engine, write queued reports, disconnect, close the database."""
        if self._runner is not None:
            await self._runner.cleanup()
        await cancel_and_wait(self._engine_task, self._prune_task, self._beat_task)
        if self.ingestor is not None:
            await asyncio.to_thread(self.ingestor.stop)
        if self.link is not None:
            await asyncio.to_thread(self.link.stop)
        if self.db is not None:
            try:  # other replicas take over at once rather than after the lease
                if self.engine is not None:
                    await self.engine.release()
                await self.replica.leave(self.db)
            except Exception:
                logger.exception("giving up this replica's leases failed")
            self.db.close()
        if self._sqlite_lock is not None:
            self._sqlite_lock.release()


def _prune_step(
    store: Store, *, keep: int, before: float, after_device: str, limit: int, keep_outputs: int
) -> tuple[int, str | None]:
    return store.prune_reports(
        keep=keep, before=before, after_device=after_device, limit=limit,
        keep_outputs=keep_outputs,
    )  # fmt: skip


async def serve(config: OrchestratorConfig, say: Callable[[str], None] | None = None) -> None:
    """Run until SIGINT or SIGTERM; ``say`` gets which broker is used and where the API is."""
    orch = Orchestrator(config)
    m = config.mqtt
    if say is not None and not m.missing:
        say(f"broker: {m.url} as {m.username}, topic prefix {m.topic_prefix!r} (from {m.source})")
    await orch.start()
    if say is not None:
        say(f"API and payloads: http://{config.http.host}:{orch.port}  (dashboard: /ui/)")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        logger.info("stopping")
        await orch.stop()
