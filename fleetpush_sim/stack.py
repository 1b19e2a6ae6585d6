"""A whole fleetpush installation in one temporary folder: Mosquitto, keys, the orchestrator.

Mosquitto is a child process (started from ``broker_config/`` on free ports); the
orchestrator runs in this process with SQLite and its HTTP API on a free port. ``close()``
(or leaving the ``with`` block) stops the broker and removes the folder, also after Ctrl-C.
With ``broker_cluster`` = N the broker is N nats-server nodes clustered instead
(``fleetpush_sim.brokers.nats_cluster``), and the orchestrator speaks MQTT 3.1.1 to node b.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from fleetpush_common.atomic import write_secret
from fleetpush_protocol.topics import Topics
from fleetpush_sim.brokers.base import BrokerEndpoint, find_binary
from fleetpush_sim.brokers.nats_cluster import NatsCluster
from orchestrator.app import Orchestrator
from orchestrator.broker import MosquittoBroker, find_mosquitto, free_port
from orchestrator.config import DatabaseConfig, OrchestratorConfig, load_config
from orchestrator.security.auth import hash_token, new_token
from orchestrator.security.keystore import KeyStore
from orchestrator.store import open_store

__all__ = ["LocalStack", "write_orchestrator_files"]


def write_orchestrator_files(
    root: Path,
    broker: BrokerEndpoint,
    topics: Topics,
    *,
    tokens: Mapping[str, tuple[str, str]],
    tick: str = "100ms",
    batch_interval: str = "20ms",
    key_validity_s: int = 7 * 86400,
    database_url: str = "",
    protocol: str = "5",
    share_group: str | None = None,
) -> tuple[int, str]:
    """Write ``root/orchestrator.toml`` (HTTP on a free port), its MQTT password file, fresh
    keys (keyring v1, the offline root in ``root/offline-root``) and a migrated database
    holding ``tokens`` (name -> (role, token)); return the HTTP port and the root key (hex).
    The database is ``database_url`` (an empty one), else SQLite in the data folder;
    ``protocol`` the MQTT version the orchestrator speaks ("5" or "3.1.1"); ``share_group``
    ``""`` for a broker without shared subscriptions.
    """
    port = free_port()
    data = root / "orch"
    write_secret(root / "mqtt.password", broker.orchestrator_password.encode())
    (root / "orchestrator.toml").write_text(
        f'data_dir = "{data}"\n'
        f'[http]\nlisten = "127.0.0.1:{port}"\nurl_ttl = "1h"\n'
        f'[mqtt]\nurl = "{broker.url}"\nusername = "{broker.ORCHESTRATOR_USER}"\n'
        f'password_file = "mqtt.password"\ntopic_prefix = "{topics.prefix}"\n'
        f'protocol = "{protocol}"\n'
        + (f'share_group = "{share_group}"\n' if share_group is not None else "")
        + f'[ingest]\nbatch_rows = 500\nbatch_interval = "{batch_interval}"\n'
        f'[rollouts]\ntick = "{tick}"\nnotice_ttl = "1d"\nfollow_every = "1s"\n'
        f'[registry]\nfile = "{broker.registry.path}"\n'
        + (f'[database]\nurl = "{database_url}"\n' if database_url else "")
    )
    keys = KeyStore(data / "keys")
    keys.init(
        root / "offline-root", roots=1, threshold=1, validity_s=key_validity_s,
        now=int(time.time()),
    )  # fmt: skip
    store = open_store(DatabaseConfig(url=database_url or f"sqlite:///{data / 'fleetpush.db'}"))
    try:
        for name, (role, token) in tokens.items():
            store.add_token(name, role, hash_token(token), time.time())
    finally:
        store.close()
    return port, keys.anchor().keyring.root_keys[0].hex()


class LocalStack:
    """Broker and orchestrator files in a temporary folder.

    Use as a context manager: entering creates the folder, keys and an operator token and
    starts Mosquitto; ``start_orchestrator()`` (async) starts the service; leaving stops the
    broker and removes the folder. Stop the orchestrator (``await stack.stop_orchestrator()``)
    before leaving.

    With ``broker_cluster`` = N, ``cluster`` is N nats-server nodes instead (``broker`` is
    then None): the orchestrator is on node b, devices go where they are told.

    Raises:
        MosquittoNotFoundError: on entry, when Mosquitto is not installed.
        BrokerNotFoundError: on entry, with ``broker_cluster``, when nats-server is not.
    """

    def __init__(
        self, *, tick: str = "100ms", batch_interval: str = "20ms", database_url: str = "",
        broker_cluster: int = 0,
    ) -> None:  # fmt: skip
        self.tick = tick
        self.broker_cluster = broker_cluster
        self.cluster: NatsCluster | None = None
        self.database_url = database_url
        self.batch_interval = batch_interval
        self.root = Path()
        self.topics = Topics()
        self.broker: MosquittoBroker | None = None
        self.orchestrator: Orchestrator | None = None
        self.config: OrchestratorConfig | None = None
        self.token = new_token()
        self.root_key = ""
        self.port = 0
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    # --- files and broker ----------------------------------------------------------------

    def __enter__(self) -> LocalStack:
        if self.broker_cluster:  # fail before creating anything
            find_binary("nats-server", "nats-server", "/usr/sbin/nats-server")
        else:
            find_mosquitto()
        self._tmp = tempfile.TemporaryDirectory(prefix="fleetpush-demo-")
        self.root = Path(self._tmp.name)
        try:
            if self.broker_cluster:
                self.cluster = NatsCluster(self.root / "broker", topics=self.topics,
                                           size=self.broker_cluster, home=1)  # fmt: skip
                self._write_orchestrator(self.cluster, protocol="3.1.1", share_group="")
                self.cluster.start()
            else:
                self.broker = MosquittoBroker(self.root / "broker", topics=self.topics)
                self._write_orchestrator(self.broker)
                self.broker.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the broker and remove the folder (idempotent)."""
        broker, self.broker = self.broker, None
        cluster, self.cluster = self.cluster, None
        try:
            if broker is not None:
                broker.stop()
            if cluster is not None:
                cluster.stop()
        finally:
            tmp, self._tmp = self._tmp, None
            if tmp is not None:
                shutil.rmtree(tmp.name, ignore_errors=True)
                tmp.cleanup()

    @property
    def data_dir(self) -> Path:
        return self.root / "orch"

    @property
    def config_path(self) -> Path:
        return self.root / "orchestrator.toml"

    @property
    def devices_dir(self) -> Path:
        return self.root / "devices"

    def _write_orchestrator(
        self, broker: BrokerEndpoint, protocol: str = "5", share_group: str | None = None
    ) -> None:
        self.port, self.root_key = write_orchestrator_files(
            self.root, broker, self.topics, tokens={"demo": ("operator", self.token)},
            tick=self.tick, batch_interval=self.batch_interval, database_url=self.database_url,
            protocol=protocol, share_group=share_group,
        )  # fmt: skip

    # --- orchestrator --------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start_orchestrator(self) -> Orchestrator:
        self.config = load_config(self.config_path)
        orch = Orchestrator(self.config)
        await orch.start()
        self.orchestrator = orch
        return orch

    async def stop_orchestrator(self) -> None:
        orch, self.orchestrator = self.orchestrator, None
        if orch is not None:
            await orch.stop()
