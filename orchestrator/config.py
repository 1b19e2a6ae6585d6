"""``orchestrator.toml``: decoded into frozen msgspec structs (fleetpush_common.config),
every limit bounded, units named; an error names the file, the table and the key.

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
    keepalive = "30s"
    share_group = "fleetpush"            # replicas share device messages ("": a broker without)
    protocol = "5"                       # or "3.1.1" (docs/broker.md, "MQTT 3.1.1")
    # url = "mqtts://broker.example.net:8883"   # TLS: the CA of the broker's certificate,
    # ca_file = "/etc/fleetpush/broker-ca.pem"  # and optionally a client certificate
    # cert_file = "/etc/fleetpush/orchestrator.pem"
    # key_file = "/etc/fleetpush/orchestrator.key"

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
    max_output_bytes = "6KiB"            # a failure's output stored, cleaned, its end
    max_unknown_bytes = 1024             # unknown fields a device message may carry
    rate_per_device = 10.0               # messages per second per device, sustained
    burst_per_device = 1000              # ... and at once (a backlog after an outage)
    ack_interval = "5s"                  # stored reports are confirmed this often

    [retention]
    reports_per_device = 1000            # stored reports kept per device, newest first
    max_report_age = "90d"
    prune_every = "10m"
    prune_batch = 2000                   # rows deleted per database call
    outputs_per_device = 20              # failure outputs kept per device, newest first

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
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, ClassVar
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta, field

from fleetpush_common.atomic import ExposedSecretError, check_private
from fleetpush_common.config import DURATION, SIZE, ConfigError, decode, read_secret
from fleetpush_protocol.messages import NAME_PATTERN
from orchestrator.config_deltas import DeltaConfig
from orchestrator.mqtt.settings import MqttConfig, resolve_mqtt

__all__ = [
    "AuthConfig",
    "ConfigError",
    "DatabaseConfig",
    "HttpConfig",
    "IngestConfig",
    "KeysSection",
    "MqttConfig",
    "OrchestratorConfig",
    "RegistrySection",
    "RetentionConfig",
    "RolloutConfig",
    "load_config",
    "parse_config",
]

_DAY = 86400.0


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


def _http_url(value: str, key: str) -> None:
    if value and urlsplit(value).scheme not in ("http", "https"):
        raise ValueError(f"{key}: must be an http:// or https:// URL")


class HttpConfig(_Section, frozen=True, kw_only=True):
    listen: str = "127.0.0.1:8080"  # host:port of the API and payloads
    public_url: str = ""  # base URL devices fetch payloads from; default http://listen
    payload_base_url: str = ""  # external server (nginx, CDN); notices carry {base}/{sha256}
    url_ttl_s: Annotated[float, DURATION, Meta(ge=60.0, le=90 * _DAY)] = field(
        default=_DAY, name="url_ttl")  # fmt: skip  # a signed payload URL stays valid
    max_upload_bytes: Annotated[int, SIZE, Meta(ge=1, le=2**48)] = 4 * 2**30  # streamed
    max_json_bytes: Annotated[int, SIZE, Meta(ge=1024, le=64 * 2**20)] = 2**20  # in memory
    # A release's SBOM (read into memory, checked).
    max_sbom_bytes: Annotated[int, SIZE, Meta(ge=1024, le=256 * 2**20)] = 16 * 2**20

    def __post_init__(self) -> None:
        _host, sep, port = self.listen.rpartition(":")
        if sep and (not port.isdigit() or not 0 <= int(port) <= 65535):
            raise ValueError("listen: expected host:port")
        _http_url(self.public_url, "public_url")
        _http_url(self.payload_base_url, "payload_base_url")

    @property
    def host(self) -> str:
        host, sep, _ = self.listen.rpartition(":")
        return (host or "127.0.0.1") if sep else self.listen

    @property
    def port(self) -> int:
        _, sep, port = self.listen.rpartition(":")
        return int(port) if sep else 8080

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")


class IngestConfig(_Section, frozen=True, kw_only=True):
    # Rows per database transaction at most. Batches are this large only under a backlog
    # (else a batch is what came within batch_interval_s), and then large ones pay: every
    # batch rewrites a page of the reports table per device (docs/performance.md).
    batch_rows: Annotated[int, Meta(ge=1, le=100_000)] = 10_000
    batch_interval_s: Annotated[float, DURATION, Meta(ge=0.001, le=10.0)] = field(
        default=0.1, name="batch_interval")  # fmt: skip  # a report waits for its batch
    # Bytes; an honest device keeps its reports within 8 KiB (with a failure's output,
    # fleetpush_protocol.output.REPORT_BYTES): a smaller cap drops failure reports.
    max_report_bytes: Annotated[int, SIZE, Meta(ge=1024, le=65536)] = 8192
    # Of a failure's output (issue 18), stored cleaned and cut to its end: bytes in all.
    max_output_bytes: Annotated[int, SIZE, Meta(ge=0, le=65536)] = 6144
    max_unknown_bytes: Annotated[int, SIZE, Meta(ge=0, le=65536)] = 1024  # per message
    rate_per_device: Annotated[float, Meta(ge=0.01, le=100_000.0)] = 10.0  # messages/s
    burst_per_device: Annotated[int, Meta(ge=1, le=1_000_000)] = 1000  # messages at once
    ack_interval_s: Annotated[float, DURATION, Meta(ge=0.01, le=60.0)] = field(
        default=5.0, name="ack_interval")  # fmt: skip  # between two rounds of acks


class RetentionConfig(_Section, frozen=True, kw_only=True):
    reports_per_device: Annotated[int, Meta(ge=10, le=10_000_000)] = 1000  # newest kept
    max_report_age_s: Annotated[float, DURATION, Meta(ge=3600.0, le=3650 * _DAY)] = field(
        default=90 * _DAY, name="max_report_age")  # fmt: skip
    prune_every_s: Annotated[float, DURATION, Meta(ge=1.0, le=_DAY)] = field(
        default=600.0, name="prune_every")  # fmt: skip
    # Rows deleted per database call, so ingestion interleaves.
    prune_batch: Annotated[int, Meta(ge=100, le=100_000)] = 2000
    # Failure outputs (issue 18) kept per device, newest first; each goes with its report
    # too (reports_per_device, max_report_age) whichever is first.
    outputs_per_device: Annotated[int, Meta(ge=1, le=100_000)] = 20


class RolloutConfig(_Section, frozen=True, kw_only=True):
    tick_s: Annotated[float, DURATION, Meta(ge=0.05, le=60.0)] = field(
        default=1.0, name="tick")  # fmt: skip  # between two engine passes
    # A notice stays valid this long (capped by the key).
    notice_ttl_s: Annotated[float, DURATION, Meta(ge=60.0, le=365 * _DAY)] = field(
        default=7 * _DAY, name="notice_ttl")  # fmt: skip
    # Between two target checks of a continuous rollout.
    follow_every_s: Annotated[float, DURATION, Meta(ge=0.1, le=3600.0)] = field(
        default=30.0, name="follow_every")  # fmt: skip
    # A replica's claim on a rollout lasts this long without renewal.
    lease_s: Annotated[float, DURATION, Meta(ge=1.0, le=3600.0)] = field(
        default=15.0, name="lease")  # fmt: skip
    require_approval: bool = False  # every rollout waits for a second operator's approval

    def __post_init__(self) -> None:
        if self.lease_s < 3 * self.tick_s:
            raise ValueError("lease: must be at least 3 ticks (renewed once per tick)")


class AuthConfig(_Section, frozen=True, kw_only=True):
    tokens_file: Path | None = None


class KeysSection(_Section, frozen=True, kw_only=True):
    dir: Path | None = None  # default <data_dir>/keys


class RegistrySection(_Section, frozen=True, kw_only=True):
    file: Path | None = None  # default <data_dir>/broker/identities.json


_POSTGRES_SCHEMES = ("postgresql://", "postgres://")
_DB_FORM = "expected sqlite:///path or postgresql://user@host:port/dbname"


class DatabaseConfig(_Section, frozen=True, kw_only=True):
    """Where the store lives: ``sqlite:///<path>`` (the default, one machine) or
    ``postgresql://…`` (several replicas). An empty ``url`` is SQLite in the data folder."""

    internal: ClassVar[tuple[str, ...]] = ("password",)

    url: str = ""
    password_file: Path | None = None  # PostgreSQL, when the URL has none
    password: str = ""  # read from password_file
    pool_min: Annotated[int, Meta(ge=0, le=1000)] = 1  # PostgreSQL connections kept open
    pool_max: Annotated[int, Meta(ge=1, le=1000)] = 8  # at most; also store calls at once
    connect_timeout_s: Annotated[float, DURATION, Meta(ge=0.1, le=600.0)] = field(
        default=10.0, name="connect_timeout")  # fmt: skip

    def __repr__(self) -> str:  # never the password
        return f"DatabaseConfig(url={self.url!r}, pool_max={self.pool_max})"

    def __post_init__(self) -> None:
        if self.url.startswith("sqlite:///"):
            path = self.url.removeprefix("sqlite:///")
            if not path or path.endswith("/"):
                raise ValueError("url: sqlite:/// needs a file name")
        elif self.url.startswith(_POSTGRES_SCHEMES):
            parts = urlsplit(self.url)
            if not parts.hostname and "host=" not in parts.query:
                raise ValueError("url: expected postgresql://user@host:port/dbname")
        elif self.url:
            raise ValueError(f"url: {_DB_FORM}")
        if self.pool_max < self.pool_min:
            raise ValueError(f"pool_max: must be at least pool_min ({self.pool_min})")

    @property
    def backend(self) -> str:
        return "postgresql" if self.url.startswith(_POSTGRES_SCHEMES) else "sqlite"

    @property
    def sqlite_path(self) -> Path:
        """The SQLite file (for a ``sqlite:///`` URL only)."""
        if not self.url.startswith("sqlite:///"):
            raise ValueError(f"{self.url!r} is not an SQLite database URL")
        return Path(self.url.removeprefix("sqlite:///"))


class OrchestratorConfig(_Section, frozen=True, kw_only=True):
    """Everything ``fleetpush serve`` needs: ``orchestrator.toml`` as decoded, its paths
    absolute, the broker login and database resolved (``parse_config``)."""

    data_dir: Path
    http: HttpConfig = field(default_factory=HttpConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    keys: KeysSection = field(default_factory=KeysSection)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    rollouts: RolloutConfig = field(default_factory=RolloutConfig)
    deltas: DeltaConfig = field(default_factory=DeltaConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    # The device registry provisioning writes (groups and model); none: the broker state
    # ``fleetpush broker run --data`` keeps next to the database.
    registry: RegistrySection = field(default_factory=RegistrySection)
    database_config: DatabaseConfig = field(default_factory=DatabaseConfig, name="database")
    # Per hardware model, the last day it gets security updates (orchestrator/support.py).
    support: dict[str, dt.date] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for model in self.support:  # checked here, so that the message names the model
            if not re.fullmatch(NAME_PATTERN, model):
                raise ValueError(f"support: {model!r} is not a valid model name ([A-Za-z0-9_.:-])")

    @property
    def keys_dir(self) -> Path:
        return self.keys.dir or self.data_dir / "keys"

    @property
    def registry_path(self) -> Path:
        return self.registry.file or self.data_dir / "broker" / "identities.json"

    @property
    def database(self) -> DatabaseConfig:
        """The store to open: the configured one, else SQLite at ``db_path``."""
        d = self.database_config
        if d.url:
            return d
        return msgspec.structs.replace(d, url=f"sqlite:///{self.data_dir / 'fleetpush.db'}")

    @property
    def db_path(self) -> Path:
        """The SQLite file (the default one when the store is PostgreSQL)."""
        d = self.database
        return d.sqlite_path if d.backend == "sqlite" else self.data_dir / "fleetpush.db"

    @property
    def payload_dir(self) -> Path:
        return self.data_dir / "payloads"


def _database(d: DatabaseConfig, data_dir: Path, source: str) -> DatabaseConfig:
    url = d.url or f"sqlite:///{data_dir / 'fleetpush.db'}"
    if url.startswith("sqlite:///"):  # relative to the data folder
        url = f"sqlite:///{(data_dir / url.removeprefix('sqlite:///')).resolve()}"
    password = ""
    if d.password_file is not None:
        try:
            password = read_secret(d.password_file, "database password file")
        except ValueError as e:
            raise ConfigError(
                str(e), source=source, table="database", key="password_file"
            ) from None
    return msgspec.structs.replace(d, url=url, password=password)


def parse_config(
    data: dict[str, Any], base: Path, source: str = "orchestrator.toml"
) -> OrchestratorConfig:
    """Build the configuration from a decoded TOML document.

    Args:
        data: the decoded document.
        base: relative paths are relative to this folder (the config file's).
        source: the file name, for messages.

    Raises:
        ConfigError: a field is missing, mistyped, out of bounds or unknown.
    """
    if not data.get("data_dir"):
        raise ConfigError("missing (where the database and payloads live)", source=source,
                          key="data_dir")  # fmt: skip
    c = decode(OrchestratorConfig, data, source, base.resolve())
    data_dir = c.data_dir.resolve()
    return msgspec.structs.replace(
        c,
        data_dir=data_dir,
        keys=KeysSection(dir=(c.keys.dir or data_dir / "keys").resolve()),
        mqtt=resolve_mqtt(c.mqtt, data_dir, source),
        registry=RegistrySection(file=c.registry.file.resolve() if c.registry.file else None),
        database_config=_database(c.database_config, data_dir, source),
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
            "no such file. Write one (docs/orchestrator.md has a sample; "
            "`fleetpush quickstart init DIR` writes a complete one-machine installation) "
            "or point --config / FLEETPUSH_CONFIG at yours",
            source=str(path),
        ) from None
    except OSError as e:
        raise ConfigError(f"cannot read ({e.strerror})", source=str(path)) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"not valid TOML ({e})", source=str(path)) from None
    config = parse_config(data, path.parent, path.name)
    mqtt = data.get("mqtt")
    try:
        if isinstance(mqtt, dict) and mqtt.get("password"):
            check_private(path, "config (it holds mqtt.password)")
        if urlsplit(config.database.url).password:
            check_private(path, "config (its database.url holds a password)")
    except ExposedSecretError as e:
        raise ConfigError(str(e)) from None
    return config
