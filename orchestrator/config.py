"""``orchestrator.toml``: parsed into frozen dataclasses, every limit bounded, units named.

Example::

    data_dir = "/var/lib/fleetpush"

    [http]
    listen = "127.0.0.1:8080"
    public_url = "http://updates.example.net:8080"   # what devices use to fetch payloads
    # payload_base_url = "https://cdn.example.net/payloads"  # serve payloads elsewhere
    url_ttl = "24h"
    max_upload_bytes = 4294967296        # release uploads, streamed to disk
    max_json_bytes = 1048576             # every JSON request body; larger is a 413
    max_sbom_bytes = 16777216            # a release's SBOM (SPDX or CycloneDX JSON)

    [mqtt]                               # omit: the broker `fleetpush broker run` recorded
    url = "mqtt://127.0.0.1:1883"        #   in <data_dir>/broker/broker.json
    username = "fleetpush-orchestrator"
    password_file = "/var/lib/fleetpush/broker/orchestrator.secret"
    topic_prefix = "fleetpush"
    share_group = "fleetpush"            # replicas share device messages ("": a broker without)

    [keys]
    dir = "/var/lib/fleetpush/keys"      # default: <data_dir>/keys

    [auth]
    tokens_file = "/etc/fleetpush/tokens.toml"

    [registry]
    file = "/var/lib/fleetpush/broker/identities.json"  # default: <data_dir>/broker/...

    [database]
    url = "sqlite:///fleetpush.db"       # default: <data_dir>/fleetpush.db; relative to it
    # url = "postgresql://fleetpush@db.example.net:5432/fleetpush"
    # password_file = "/etc/fleetpush/db.password"
    # pool_min = 1                       # PostgreSQL connections kept open
    # pool_max = 8                       # and at most (also the store's worker threads)
    # connect_timeout = "10s"

    [ingest]
    batch_rows = 10000                   # under a backlog; else what came within batch_interval
    batch_interval = "100ms"
    max_report_bytes = 8192              # larger reports are dropped and counted
    max_unknown_bytes = 1024             # unknown fields a device message may carry
    rate_per_device = 10.0               # messages per second per device, sustained
    burst_per_device = 1000              # ... and at once (a backlog after an outage)
    ack_interval = "5s"                  # stored reports are confirmed this often

    [retention]
    reports_per_device = 1000            # stored reports kept per device, newest first
    max_report_age = "90d"
    prune_every = "10m"
    prune_batch = 2000                   # rows deleted per database call

    [rollouts]
    tick = "1s"
    notice_ttl = "7d"
    follow_every = "30s"                 # continuous rollouts look for new devices
    lease = "15s"                        # replicas: a dead one's rollouts move on after it
    require_approval = false             # four-eyes: another operator approves each rollout

    [support]                            # per hardware model: rpi4 = 2030-12-31
"""

from __future__ import annotations

import datetime as dt
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fleetpush_common.atomic import ExposedSecretError, check_private
from fleetpush_protocol.topics import Topics
from orchestrator.broker.info import INFO_FILE, read_info
from orchestrator.config_deltas import DeltaConfig, parse_deltas
from orchestrator.config_tables import ConfigError, Table, host_port, http_url, password_file
from orchestrator.support import parse_support

__all__ = [
    "AuthConfig",
    "ConfigError",
    "DatabaseConfig",
    "HttpConfig",
    "IngestConfig",
    "MqttConfig",
    "OrchestratorConfig",
    "RetentionConfig",
    "RolloutConfig",
    "load_config",
    "parse_config",
]


@dataclass(frozen=True, slots=True)
class HttpConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = ""  # base URL devices fetch payloads from; default http://host:port
    payload_base_url: str = ""  # external server (nginx, CDN); notices carry {base}/{sha256}
    url_ttl_s: float = 86400.0  # seconds a signed payload URL stays valid
    max_upload_bytes: int = 4 * 2**30  # bytes; the release upload, streamed to disk
    max_json_bytes: int = 2**20  # bytes; any JSON request body (read into memory)
    max_sbom_bytes: int = 16 * 2**20  # bytes; a release's SBOM (read into memory, checked)

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")


@dataclass(frozen=True, slots=True)
class MqttConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str = "fleetpush-orchestrator"
    password: str = field(default="", repr=False)
    topic_prefix: str = "fleetpush"
    keepalive_s: int = 30  # seconds
    # MQTT 5 shared subscription group for device messages ("": plain subscriptions): the
    # broker hands each report to one replica of the group
    share_group: str = "fleetpush"
    source: str = "settings"  # where host and login came from, said at start
    missing: str = ""  # why no broker is configured: ``serve`` refuses to start with it

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)


@dataclass(frozen=True, slots=True)
class IngestConfig:
    # Rows per database transaction at most. Batches are this large only under a backlog
    # (else a batch is what came within batch_interval_s), and then large ones pay: every
    # batch rewrites a page of the reports table per device (docs/performance.md).
    batch_rows: int = 10_000
    batch_interval_s: float = 0.1  # seconds a report may wait for its batch
    max_report_bytes: int = 8192  # bytes; a maximal honest report is about 5.5 KiB
    max_unknown_bytes: int = 1024  # bytes of unknown fields per device message
    rate_per_device: float = 10.0  # messages per second per device, sustained
    burst_per_device: int = 1000  # messages per device at once
    ack_interval_s: float = 5.0  # seconds between two rounds of acks to devices


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    reports_per_device: int = 1000  # stored reports kept per device (the newest)
    max_report_age_s: float = 90 * 86400.0  # seconds; older stored reports are deleted
    prune_every_s: float = 600.0  # seconds between two pruning passes
    prune_batch: int = 2000  # rows deleted per database call, so ingestion interleaves


@dataclass(frozen=True, slots=True)
class RolloutConfig:
    tick_s: float = 1.0  # seconds between two engine passes
    notice_ttl_s: float = 7 * 86400.0  # seconds a notice stays valid (capped by the key)
    follow_every_s: float = 30.0  # seconds between two target checks of a continuous rollout
    lease_s: float = 15.0  # seconds a replica's claim on a rollout lasts without renewal
    require_approval: bool = False  # every rollout waits for a second operator's approval


@dataclass(frozen=True, slots=True)
class AuthConfig:
    tokens_file: Path | None = None


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    """Where the store lives: ``sqlite:///<path>`` (the default, one machine) or
    ``postgresql://…`` (several replicas). An empty ``url`` is SQLite in the data folder."""

    url: str = ""
    password: str = field(default="", repr=False)  # PostgreSQL, when the URL has none
    pool_min: int = 1  # PostgreSQL connections kept open
    pool_max: int = 8  # at most; also how many store calls run at once
    connect_timeout_s: float = 10.0  # seconds to wait for a connection

    @property
    def backend(self) -> str:
        return "postgresql" if self.url.startswith(_POSTGRES_SCHEMES) else "sqlite"

    @property
    def sqlite_path(self) -> Path:
        """The SQLite file (for a ``sqlite:///`` URL only)."""
        if not self.url.startswith("sqlite:///"):
            raise ValueError(f"{self.url!r} is not an SQLite database URL")
        return Path(self.url.removeprefix("sqlite:///"))


_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


@dataclass(frozen=True, slots=True)
class OrchestratorConfig:
    """Everything ``fleetpush serve`` needs."""

    data_dir: Path
    keys_dir: Path
    http: HttpConfig = field(default_factory=HttpConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    rollouts: RolloutConfig = field(default_factory=RolloutConfig)
    deltas: DeltaConfig = field(default_factory=DeltaConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    # The device registry provisioning writes (groups and model); None: the broker state
    # ``fleetpush broker run --data`` keeps next to the database.
    registry_file: Path | None = None
    database_config: DatabaseConfig = field(default_factory=DatabaseConfig)
    support: dict[str, dt.date] = field(default_factory=dict)  # model -> security updates until

    @property
    def registry_path(self) -> Path:
        return self.registry_file or self.data_dir / "broker" / "identities.json"

    @property
    def database(self) -> DatabaseConfig:
        """The store to open: the configured one, else SQLite at ``db_path``."""
        d = self.database_config
        if d.url:
            return d
        return DatabaseConfig(
            url=f"sqlite:///{self.data_dir / 'fleetpush.db'}",
            pool_min=d.pool_min,
            pool_max=d.pool_max,
            connect_timeout_s=d.connect_timeout_s,
        )

    @property
    def db_path(self) -> Path:
        """The SQLite file (the default one when the store is PostgreSQL)."""
        d = self.database
        return d.sqlite_path if d.backend == "sqlite" else self.data_dir / "fleetpush.db"

    @property
    def payload_dir(self) -> Path:
        return self.data_dir / "payloads"


# --- parsing ----------------------------------------------------------------------------


def _mqtt(t: Table, base: Path, data_dir: Path) -> MqttConfig:
    url_text = t.text("url", "")
    prefix = t.text("topic_prefix", "")
    try:
        Topics(prefix or "fleetpush")
    except ValueError as e:
        raise ConfigError(f"{t.name('topic_prefix')}: {e}") from None
    keepalive = t.integer("keepalive", 30, 5, 3600)
    if not url_text:
        for key in ("username", "password", "password_file"):
            if t.get(key) is not None:
                raise ConfigError(f"{t.name(key)}: give it with {t.name('url')}, or neither")
        return _recorded_broker(data_dir, prefix, keepalive)
    url = urlsplit(url_text)
    if url.scheme != "mqtt" or not url.hostname:
        raise ConfigError(f"{t.name('url')}: expected mqtt://host:port")
    password = password_file(t, base, "MQTT password file") or t.text("password", "")
    return MqttConfig(
        host=url.hostname,
        port=url.port or 1883,
        username=t.text("username", "fleetpush-orchestrator"),
        password=password,
        topic_prefix=prefix or "fleetpush",
        keepalive_s=keepalive,
        source=f"{t.name('url')} in the configuration",
    )


def _recorded_broker(data_dir: Path, prefix: str, keepalive: int) -> MqttConfig:
    """The broker ``fleetpush broker run`` recorded in ``<data_dir>/broker``.

    Never a guess: with nothing recorded, the result says so (``missing``), and ``serve``
    refuses to start rather than log in to whatever listens on a default port.
    """
    workdir = data_dir / "broker"
    try:
        info = read_info(workdir)
    except ValueError as e:
        raise ConfigError(f"mqtt: {e}") from None
    if info is None:
        return MqttConfig(
            source="",
            missing=(
                f"no broker configured: orchestrator.toml has no [mqtt] url and "
                f"{workdir / INFO_FILE} does not exist. Start the broker first with "
                f"`fleetpush broker run --data {data_dir}` (it records its ports there), "
                "or set [mqtt] url, username and password_file"
            ),
        )
    if prefix and prefix != info.topic_prefix:
        raise ConfigError(
            f"mqtt.topic_prefix: {prefix!r}, but the broker in {workdir} uses {info.topic_prefix!r}"
        )
    try:
        check_private(info.password_file, "MQTT password file")
        password = info.password_file.read_text().strip()
    except ExposedSecretError as e:
        raise ConfigError(f"mqtt (from {workdir / INFO_FILE}): {e}") from None
    except OSError as e:
        raise ConfigError(
            f"{info.password_file}: cannot read the orchestrator's broker password ({e.strerror})"
        ) from None
    return MqttConfig(
        host=info.connect_host,
        port=info.port,
        username=info.orchestrator_user,
        password=password,
        topic_prefix=info.topic_prefix,
        keepalive_s=keepalive,
        source=str(workdir / INFO_FILE),
    )


def _database(t: Table, base: Path, data_dir: Path) -> DatabaseConfig:
    url = t.text("url", "")
    password = password_file(t, base, "database password file")
    if not url:
        url = f"sqlite:///{data_dir / 'fleetpush.db'}"
    elif url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if not path or path.endswith("/"):
            raise ConfigError(f"{t.name('url')}: sqlite:/// needs a file name")
        url = f"sqlite:///{(data_dir / path).resolve()}"  # relative to the data folder
    elif url.startswith(_POSTGRES_SCHEMES):
        parts = urlsplit(url)
        if not parts.hostname and "host=" not in parts.query:
            raise ConfigError(f"{t.name('url')}: expected postgresql://user@host:port/dbname")
    else:
        raise ConfigError(
            f"{t.name('url')}: expected sqlite:///path or postgresql://user@host:port/dbname"
        )
    pool_min = t.integer("pool_min", 1, 0, 1000)
    pool_max = t.integer("pool_max", 8, 1, 1000)
    if pool_max < pool_min:
        raise ConfigError(f"{t.name('pool_max')}: must be at least pool_min ({pool_min})")
    return DatabaseConfig(
        url=url,
        password=password,
        pool_min=pool_min,
        pool_max=pool_max,
        connect_timeout_s=t.duration("connect_timeout", 10.0, 0.1, 600.0),
    )


def parse_config(data: dict[str, Any], base: Path) -> OrchestratorConfig:
    """Build the configuration from a decoded TOML document.

    Args:
        data: the decoded document.
        base: relative paths are relative to this folder (the config file's).

    Raises:
        ConfigError: a field is missing, mistyped, out of bounds or unknown.
    """
    top = Table(data, "")
    data_dir_text = top.text("data_dir", "")
    if not data_dir_text:
        raise ConfigError("data_dir: missing (where the database and payloads live)")
    data_dir = (base / data_dir_text).resolve()
    h = top.sub("http")
    host, port = host_port(h.text("listen", "127.0.0.1:8080"), h.name("listen"), 8080)
    http = HttpConfig(
        host=host,
        port=port,
        public_url=http_url(h.text("public_url", ""), h.name("public_url")),
        payload_base_url=http_url(h.text("payload_base_url", ""), h.name("payload_base_url")),
        url_ttl_s=h.duration("url_ttl", 86400.0, 60.0, 90 * 86400.0),
        max_upload_bytes=h.integer("max_upload_bytes", 4 * 2**30, 1, 2**48),
        max_json_bytes=h.integer("max_json_bytes", 2**20, 1024, 64 * 2**20),
        max_sbom_bytes=h.integer("max_sbom_bytes", 16 * 2**20, 1024, 256 * 2**20),
    )
    m = top.sub("mqtt")
    mqtt = _mqtt(m, base, data_dir)
    share_group = m.text("share_group", "fleetpush")
    if share_group and not share_group.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f'{m.name("share_group")}: letters, digits, - and _ only (or "")')
    mqtt = replace(mqtt, share_group=share_group)
    k = top.sub("keys")
    keys_dir = (base / k.text("dir", str(data_dir / "keys"))).resolve()
    i = top.sub("ingest")
    ingest = IngestConfig(
        batch_rows=i.integer("batch_rows", 10_000, 1, 100_000),
        batch_interval_s=i.duration("batch_interval", 0.1, 0.001, 10.0),
        max_report_bytes=i.integer("max_report_bytes", 8192, 1024, 65536),
        max_unknown_bytes=i.integer("max_unknown_bytes", 1024, 0, 65536),
        rate_per_device=i.number("rate_per_device", 10.0, 0.01, 100_000.0),
        burst_per_device=i.integer("burst_per_device", 1000, 1, 1_000_000),
        ack_interval_s=i.duration("ack_interval", 5.0, 0.01, 60.0),
    )
    t = top.sub("retention")
    retention = RetentionConfig(
        reports_per_device=t.integer("reports_per_device", 1000, 10, 10_000_000),
        max_report_age_s=t.duration("max_report_age", 90 * 86400.0, 3600.0, 3650 * 86400.0),
        prune_every_s=t.duration("prune_every", 600.0, 1.0, 86400.0),
        prune_batch=t.integer("prune_batch", 2000, 100, 100_000),
    )
    r = top.sub("rollouts")
    rollouts = RolloutConfig(
        tick_s=r.duration("tick", 1.0, 0.05, 60.0),
        notice_ttl_s=r.duration("notice_ttl", 7 * 86400.0, 60.0, 365 * 86400.0),
        follow_every_s=r.duration("follow_every", 30.0, 0.1, 3600.0),
        lease_s=r.duration("lease", 15.0, 1.0, 3600.0),
        require_approval=r.flag("require_approval", False),
    )
    if rollouts.lease_s < 3 * rollouts.tick_s:
        raise ConfigError("rollouts.lease: must be at least 3 ticks (renewed once per tick)")
    e = top.sub("deltas")
    deltas = parse_deltas(e)
    a = top.sub("auth")
    tokens_file = a.text("tokens_file", "")
    auth = AuthConfig(tokens_file=(base / tokens_file).resolve() if tokens_file else None)
    g = top.sub("registry")
    registry_file = g.text("file", "")
    d = top.sub("database")
    database = _database(d, base, data_dir)
    support = parse_support(top.sub("support"))  # before top.check_unknown()
    for table in (h, m, k, i, t, r, e, a, g, d, top):
        table.check_unknown()
    return OrchestratorConfig(
        data_dir=data_dir,
        keys_dir=keys_dir,
        http=http,
        mqtt=mqtt,
        ingest=ingest,
        retention=retention,
        rollouts=rollouts,
        deltas=deltas,
        auth=auth,
        registry_file=(base / registry_file).resolve() if registry_file else None,
        database_config=database,
        support=support,
    )


def load_config(path: Path) -> OrchestratorConfig:
    """Read and validate ``path``.

    Raises:
        ConfigError: unreadable, not TOML, or invalid; the message names the field.
    """
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such file. Write one (docs/orchestrator.md has a sample; "
            "`fleetpush quickstart init DIR` writes a complete one-machine installation) "
            "or point --config / FLEETPUSH_CONFIG at yours"
        ) from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    config = parse_config(data, path.parent)
    mqtt = data.get("mqtt")
    if isinstance(mqtt, dict) and mqtt.get("password"):
        try:
            check_private(path, "config (it holds mqtt.password)")
        except ExposedSecretError as e:
            raise ConfigError(str(e)) from None
    if urlsplit(config.database.url).password:
        try:
            check_private(path, "config (its database.url holds a password)")
        except ExposedSecretError as e:
            raise ConfigError(str(e)) from None
    return config
