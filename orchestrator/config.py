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

    [mqtt]
    url = "mqtt://127.0.0.1:1883"
    username = "fleetpush-orchestrator"
    password_file = "/etc/fleetpush/mqtt.password"
    topic_prefix = "fleetpush"

    [keys]
    dir = "/var/lib/fleetpush/keys"      # default: <data_dir>/keys

    [auth]
    tokens_file = "/etc/fleetpush/tokens.toml"

    [registry]
    file = "/var/lib/fleetpush/broker/identities.json"  # default: <data_dir>/broker/...

    [ingest]
    batch_rows = 2000
    batch_interval = "100ms"

    [rollouts]
    tick = "1s"
    notice_ttl = "7d"
    follow_every = "30s"                 # continuous rollouts look for new devices
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fleetpush_protocol.atomic import ExposedSecretError, check_private
from fleetpush_protocol.topics import Topics
from orchestrator.units import parse_duration

__all__ = [
    "AuthConfig",
    "ConfigError",
    "HttpConfig",
    "IngestConfig",
    "MqttConfig",
    "OrchestratorConfig",
    "RolloutConfig",
    "load_config",
    "parse_config",
]


class ConfigError(ValueError):
    """The configuration is invalid; the message names the field."""


@dataclass(frozen=True, slots=True)
class HttpConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = ""  # base URL devices fetch payloads from; default http://host:port
    payload_base_url: str = ""  # external server (nginx, CDN); notices carry {base}/{sha256}
    url_ttl_s: float = 86400.0  # seconds a signed payload URL stays valid
    max_upload_bytes: int = 4 * 2**30  # bytes; the release upload, streamed to disk
    max_json_bytes: int = 2**20  # bytes; any JSON request body (read into memory)

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

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)


@dataclass(frozen=True, slots=True)
class IngestConfig:
    batch_rows: int = 2000  # rows per SQLite transaction at most
    batch_interval_s: float = 0.1  # seconds a report may wait for its batch


@dataclass(frozen=True, slots=True)
class RolloutConfig:
    tick_s: float = 1.0  # seconds between two engine passes
    notice_ttl_s: float = 7 * 86400.0  # seconds a notice stays valid (capped by the key)
    follow_every_s: float = 30.0  # seconds between two target checks of a continuous rollout


@dataclass(frozen=True, slots=True)
class AuthConfig:
    tokens_file: Path | None = None


@dataclass(frozen=True, slots=True)
class OrchestratorConfig:
    """Everything ``fleetpush serve`` needs."""

    data_dir: Path
    keys_dir: Path
    http: HttpConfig = field(default_factory=HttpConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    rollouts: RolloutConfig = field(default_factory=RolloutConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    # The device registry provisioning writes (groups and model); None: the broker state
    # ``fleetpush broker run --data`` keeps next to the database.
    registry_file: Path | None = None

    @property
    def registry_path(self) -> Path:
        return self.registry_file or self.data_dir / "broker" / "identities.json"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "fleetpush.db"

    @property
    def payload_dir(self) -> Path:
        return self.data_dir / "payloads"


# --- parsing ----------------------------------------------------------------------------


class _Table:
    """Typed reads from one TOML table; errors name ``section.key``."""

    def __init__(self, data: Any, section: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"[{section}]: expected a table")
        self.data: dict[str, Any] = data
        self.section = section
        self.used: set[str] = set()

    def name(self, key: str) -> str:
        return f"{self.section}.{key}" if self.section else key

    def get(self, key: str) -> Any:
        self.used.add(key)
        return self.data.get(key)

    def text(self, key: str, default: str) -> str:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise ConfigError(f"{self.name(key)}: expected a string")
        return value

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise ConfigError(f"{self.name(key)}: expected an integer in {low}..{high}")
        return value

    def duration(self, key: str, default: float, low: float, high: float) -> float:
        value = self.get(key)
        if value is None:
            return default
        try:
            seconds = parse_duration(value, self.name(key))
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if not low <= seconds <= high:
            raise ConfigError(f"{self.name(key)}: must be between {low}s and {high}s")
        return seconds

    def sub(self, key: str) -> _Table:
        value = self.get(key)
        return _Table({} if value is None else value, self.name(key))

    def check_unknown(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(f"{self.name(unknown[0])}: unknown setting")


def _host_port(text: str, what: str, default_port: int) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, default_port
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{what}: expected host:port")
    return host or "127.0.0.1", int(port)


def _http_url(value: str, what: str) -> str:
    if value and urlsplit(value).scheme not in ("http", "https"):
        raise ConfigError(f"{what}: must be an http:// or https:// URL")
    return value.rstrip("/")


def _mqtt(t: _Table, base: Path) -> MqttConfig:
    url = urlsplit(t.text("url", "mqtt://127.0.0.1:1883"))
    if url.scheme != "mqtt" or not url.hostname:
        raise ConfigError(f"{t.name('url')}: expected mqtt://host:port")
    password = t.text("password", "")
    pw_file = t.text("password_file", "")
    if pw_file:
        try:
            check_private(base / pw_file, "MQTT password file")
            password = (base / pw_file).read_text().strip()
        except ExposedSecretError as e:
            raise ConfigError(f"{t.name('password_file')}: {e}") from None
        except OSError as e:
            raise ConfigError(f"{t.name('password_file')}: cannot read ({e.strerror})") from None
    prefix = t.text("topic_prefix", "fleetpush")
    try:
        Topics(prefix)
    except ValueError as e:
        raise ConfigError(f"{t.name('topic_prefix')}: {e}") from None
    return MqttConfig(
        host=url.hostname,
        port=url.port or 1883,
        username=t.text("username", "fleetpush-orchestrator"),
        password=password,
        topic_prefix=prefix,
        keepalive_s=t.integer("keepalive", 30, 5, 3600),
    )


def parse_config(data: dict[str, Any], base: Path) -> OrchestratorConfig:
    """Build the configuration from a decoded TOML document.

    Args:
        data: the decoded document.
        base: relative paths are relative to this folder (the config file's).

    Raises:
        ConfigError: a field is missing, mistyped, out of bounds or unknown.
    """
    top = _Table(data, "")
    data_dir_text = top.text("data_dir", "")
    if not data_dir_text:
        raise ConfigError("data_dir: missing (where the database and payloads live)")
    data_dir = (base / data_dir_text).resolve()
    h = top.sub("http")
    host, port = _host_port(h.text("listen", "127.0.0.1:8080"), h.name("listen"), 8080)
    http = HttpConfig(
        host=host,
        port=port,
        public_url=_http_url(h.text("public_url", ""), h.name("public_url")),
        payload_base_url=_http_url(h.text("payload_base_url", ""), h.name("payload_base_url")),
        url_ttl_s=h.duration("url_ttl", 86400.0, 60.0, 90 * 86400.0),
        max_upload_bytes=h.integer("max_upload_bytes", 4 * 2**30, 1, 2**48),
        max_json_bytes=h.integer("max_json_bytes", 2**20, 1024, 64 * 2**20),
    )
    m = top.sub("mqtt")
    mqtt = _mqtt(m, base)
    k = top.sub("keys")
    keys_dir = (base / k.text("dir", str(data_dir / "keys"))).resolve()
    i = top.sub("ingest")
    ingest = IngestConfig(
        batch_rows=i.integer("batch_rows", 2000, 1, 100_000),
        batch_interval_s=i.duration("batch_interval", 0.1, 0.001, 10.0),
    )
    r = top.sub("rollouts")
    rollouts = RolloutConfig(
        tick_s=r.duration("tick", 1.0, 0.05, 60.0),
        notice_ttl_s=r.duration("notice_ttl", 7 * 86400.0, 60.0, 365 * 86400.0),
        follow_every_s=r.duration("follow_every", 30.0, 0.1, 3600.0),
    )
    a = top.sub("auth")
    tokens_file = a.text("tokens_file", "")
    auth = AuthConfig(tokens_file=(base / tokens_file).resolve() if tokens_file else None)
    g = top.sub("registry")
    registry_file = g.text("file", "")
    for table in (h, m, k, i, r, a, g, top):
        table.check_unknown()
    return OrchestratorConfig(
        data_dir=data_dir,
        keys_dir=keys_dir,
        http=http,
        mqtt=mqtt,
        ingest=ingest,
        rollouts=rollouts,
        auth=auth,
        registry_file=(base / registry_file).resolve() if registry_file else None,
    )


def load_config(path: Path) -> OrchestratorConfig:
    """Read and validate ``path``.

    Raises:
        ConfigError: unreadable, not TOML, or invalid; the message names the field.
    """
    try:
        data = tomllib.loads(path.read_text())
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
    return config
