"""The device configuration: one TOML file, parsed into frozen, bounded dataclasses.

Every limit has a unit (in its name or its comment) and a range; a bad file raises
``ConfigError`` naming the file, the table and the field, e.g.
``device.toml: [download] max_payload_bytes: must be 1..281474976710656``.
Relative paths are relative to the folder holding the configuration file.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from device_client.config_tables import REQUIRED, ConfigError, Table, parse_time
from fleetpush_common.atomic import ExposedSecretError, check_private
from fleetpush_protocol.fields import NAME_RE
from fleetpush_protocol.keys import load_public_key
from fleetpush_protocol.topics import Topics

__all__ = [
    "BrokerConfig",
    "ConfigError",
    "DeviceConfig",
    "DeviceSection",
    "DownloadConfig",
    "HealthConfig",
    "InstallConfig",
    "PolicyConfig",
    "SecurityConfig",
    "TrustConfig",
    "UnpackLimits",
    "Window",
    "load_config",
    "parse_config",
]

MAX_PAYLOAD = 1 << 48  # bytes; the protocol's own bound on payload.size
HANDLERS = ("directory", "command")
_WINDOW_RE = re.compile(r"([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]|24):([0-5]\d)")


@dataclass(frozen=True, slots=True)
class Window:
    """A daily maintenance window in device-local time, in minutes after midnight.

    ``start > end`` means the window spans midnight (``22:00-02:00``).
    """

    start: int  # minutes after local midnight, 0..1439
    end: int  # minutes after local midnight, 1..1440

    def contains(self, minute: int) -> bool:
        if self.start <= self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end

    def __str__(self) -> str:
        return (
            f"{self.start // 60:02d}:{self.start % 60:02d}-{self.end // 60:02d}:{self.end % 60:02d}"
        )


@dataclass(frozen=True, slots=True)
class DeviceSection:
    id: str
    model: str
    groups: tuple[str, ...]
    state_dir: Path


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None = field(repr=False)
    ca_file: Path | None
    cert_file: Path | None
    key_file: Path | None
    keepalive_s: int  # seconds, 5..3600
    session_expiry_s: int  # seconds, 0..2**32-1
    topic_prefix: str
    ack_timeout_s: float = 30.0  # seconds without a confirmation before reports are resent

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)


@dataclass(frozen=True, slots=True)
class TrustConfig:
    root_keys: tuple[bytes, ...]  # 32-byte Ed25519 public keys
    root_threshold: int


@dataclass(frozen=True, slots=True)
class DownloadConfig:
    max_payload_bytes: int = 1 << 30  # bytes
    bandwidth_bytes_per_s: int = 0  # bytes per second; 0 = unlimited
    connect_timeout_s: float = 10.0  # seconds
    read_timeout_s: float = 30.0  # seconds without a byte before the server is "slow"
    min_bytes_per_s: int = 256  # average below this over read_timeout_s = slow server
    max_attempts: int = 5  # per URL, for transport errors
    progress_interval_s: float = 5.0  # seconds between progress reports, at least
    chunk_bytes: int = 65536  # bytes read per iteration
    # Deltas (docs/device.md, "Delta payloads"): the installed release's payload is kept
    # as the base the next delta applies to; false saves its disk and always downloads in
    # full. A rebuild may use at most this much memory (the base plus zstd's window).
    keep_base: bool = True
    max_rebuild_memory_bytes: int = 512 << 20  # bytes
    # Metered links: on one, only deltas are fetched (and full payloads inside
    # ``metered_windows``). ``metered_command`` exiting 0 says the link is metered now.
    metered: bool = False
    metered_command: tuple[str, ...] = ()
    metered_windows: tuple[Window, ...] = ()


@dataclass(frozen=True, slots=True)
class UnpackLimits:
    """What one payload may unpack to (directory handler); beyond any: ``payload_invalid``."""

    max_bytes: int = 4 << 30  # bytes in all files together; a sparse file counts in full
    max_ratio: int = 100  # unpacked bytes per payload byte (a payload under 1 MiB counts as 1 MiB)
    max_members: int = 50_000  # archive members
    max_path_bytes: int = 1024  # bytes (UTF-8) in a member's name or a symlink's target
    max_depth: int = 32  # path components in a member's name


@dataclass(frozen=True, slots=True)
class InstallConfig:
    handler: str
    slots_dir: Path | None
    pre_install: tuple[str, ...] = ()
    install: tuple[str, ...] = ()
    post_install: tuple[str, ...] = ()
    rollback: tuple[str, ...] = ()
    reboot: tuple[str, ...] = ()
    step_timeout_s: float = 3600.0  # seconds per handler step
    unpack: UnpackLimits = field(default_factory=UnpackLimits)


@dataclass(frozen=True, slots=True)
class HealthConfig:
    command: tuple[str, ...] = ()  # empty = no health check
    timeout_s: float = 30.0  # seconds
    max_interrupted: int = 3  # health checks killed mid-way before rolling back


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    hold_until: int | None = None  # Unix seconds
    maintenance_windows: tuple[Window, ...] = ()
    download_ahead: bool = True


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    """How security updates (notices with ``update_class = "security"``) are treated."""

    automatic: bool = True  # installed on their own schedule; false: like any other update
    outside_windows: bool = True  # may install outside the maintenance windows
    max_postpone_s: float = 3 * 86400.0  # seconds a hold may put one off (the notice caps it)
    notify_command: tuple[str, ...] = ()  # run with the update's advisory, JSON on stdin
    notify_timeout_s: float = 30.0  # seconds the notify command may take


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    """The whole configuration of one device agent."""

    device: DeviceSection
    broker: BrokerConfig
    trust: TrustConfig
    download: DownloadConfig
    install: InstallConfig
    health: HealthConfig
    policy: PolicyConfig
    source: str = "device.toml"  # the file name, for messages
    security: SecurityConfig = field(default_factory=SecurityConfig)


def _parse_window(table: Table, key: str, text: str) -> Window:
    m = _WINDOW_RE.fullmatch(text.strip())
    if not m:
        raise table.fail(key, f"{text!r} must look like HH:MM-HH:MM (device-local time)")
    start = int(m[1]) * 60 + int(m[2])
    end = int(m[3]) * 60 + int(m[4])
    if end > 1440 or start == end:
        raise table.fail(key, f"{text!r} is empty or ends after 24:00")
    return Window(start=start, end=end)


def _section(
    raw: Mapping[str, Any], name: str, source: str, base: Path, *, required: bool
) -> Table:
    value = raw.get(name)
    if value is None:
        if required:
            raise ConfigError(f"{source}: [{name}]: missing table")
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: [{name}]: must be a table")
    return Table(value, name, source, base)


def _broker(t: Table) -> BrokerConfig:
    url = t.string("url", REQUIRED)
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise t.fail("url", f"{url!r} must look like mqtt://host:1883 or mqtts://host:8883")
    try:
        port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
    except ValueError:
        raise t.fail("url", f"{url!r} has an invalid port") from None
    password = t.string("password", None, max_len=1024)
    password_file = t.path("password_file", None)
    if password is not None and password_file is not None:
        raise t.fail("password_file", "give either password or password_file, not both")
    if password_file is not None:
        try:
            check_private(password_file, "password file")
            password = password_file.read_text().strip()
        except ExposedSecretError as e:
            raise t.fail("password_file", str(e)) from None
        except OSError as e:
            raise t.fail("password_file", f"cannot read {password_file}: {e.strerror}") from None
        if not password:
            raise t.fail("password_file", f"{password_file} is empty")
    cert_file = t.path("cert_file", None)
    key_file = t.path("key_file", None)
    if (cert_file is None) != (key_file is None):
        raise t.fail("key_file", "cert_file and key_file go together")
    username = t.string("username", None, max_len=128)
    tls = parts.scheme == "mqtts"
    if (cert_file is not None or t.data.get("ca_file") is not None) and not tls:
        raise t.fail("url", "TLS files are set but the URL is mqtt://; use mqtts://")
    if username is None and cert_file is None:
        raise t.fail("username", "missing (needed unless a TLS client certificate is used)")
    prefix = t.string("topic_prefix", "fleetpush", max_len=128)
    try:
        Topics(prefix)
    except ValueError as e:
        raise t.fail("topic_prefix", str(e)) from None
    return BrokerConfig(
        host=parts.hostname,
        port=port,
        tls=tls,
        username=username,
        password=password,
        ca_file=t.path("ca_file", None),
        cert_file=cert_file,
        key_file=key_file,
        keepalive_s=t.integer("keepalive_s", 60, 5, 3600),
        session_expiry_s=t.integer("session_expiry_s", 604800, 0, 2**32 - 1),
        topic_prefix=prefix,
        ack_timeout_s=t.number("ack_timeout_s", 30.0, 0.1, 3600.0),
    )


def _trust(t: Table) -> TrustConfig:
    keys_text = t.strings("root_keys", max_len=32)
    if not keys_text:
        raise t.fail("root_keys", "needs at least one root public key (64 hex digits)")
    keys = []
    for i, text in enumerate(keys_text):
        try:
            keys.append(load_public_key(text))
        except ValueError:
            raise t.fail(f"root_keys[{i}]", "not an Ed25519 public key (64 hex digits)") from None
    if len(set(keys)) != len(keys):
        raise t.fail("root_keys", "duplicate keys")
    threshold = t.integer("root_threshold", 1, 1, len(keys))
    return TrustConfig(root_keys=tuple(keys), root_threshold=threshold)


def _unpack(t: Table) -> UnpackLimits:
    return UnpackLimits(
        max_bytes=t.integer("max_bytes", 4 << 30, 1, MAX_PAYLOAD),
        max_ratio=t.integer("max_ratio", 100, 1, 1_000_000),
        max_members=t.integer("max_members", 50_000, 1, 10_000_000),
        max_path_bytes=t.integer("max_path_bytes", 1024, 64, 4096),
        max_depth=t.integer("max_depth", 32, 1, 1024),
    )


def _install(t: Table, state_dir: Path, unpack: UnpackLimits) -> InstallConfig:
    handler = t.string("handler", "directory")
    if handler not in HANDLERS:
        raise t.fail("handler", f"must be one of {', '.join(HANDLERS)}")
    install = t.argv("install")
    if handler == "command" and not install:
        raise t.fail("install", "the command handler needs an install command (argv list)")
    slots_dir = t.path("slots_dir", None)
    if handler == "directory" and slots_dir is None:
        slots_dir = state_dir / "slots"
    return InstallConfig(
        handler=handler,
        slots_dir=slots_dir,
        pre_install=t.argv("pre_install"),
        install=install,
        post_install=t.argv("post_install"),
        rollback=t.argv("rollback"),
        reboot=t.argv("reboot"),
        step_timeout_s=t.number("step_timeout_s", 3600.0, 1, 86400),
        unpack=unpack,
    )


def parse_config(
    raw: Mapping[str, Any], *, source: str = "device.toml", base: Path
) -> DeviceConfig:
    """Build a ``DeviceConfig`` from a parsed TOML document.

    Args:
        raw: the TOML document as a mapping.
        source: the file name used in error messages.
        base: the folder relative paths are resolved against.

    Raises:
        ConfigError: a field is missing, of the wrong type or out of range.
    """
    known = {"device", "broker", "trust", "download", "install", "unpack", "health", "policy",
             "security"}  # fmt: skip
    for name in raw:
        if name not in known:
            raise ConfigError(f"{source}: [{name}]: unknown table")
    tables: list[Table] = []

    def section(name: str, *, required: bool = False) -> Table:
        t = _section(raw, name, source, base, required=required)
        tables.append(t)
        return t

    d = section("device", required=True)
    device = DeviceSection(
        id=d.name_("id", REQUIRED),
        model=d.name_("model", REQUIRED),
        groups=d.strings("groups", max_len=64),
        state_dir=d.path("state_dir", REQUIRED),
    )
    for i, g in enumerate(device.groups):
        if not NAME_RE.fullmatch(g):
            raise d.fail(f"groups[{i}]", f"{g!r} must match {NAME_RE.pattern}")
    if len(set(device.groups)) != len(device.groups):
        raise d.fail("groups", "duplicate groups")
    broker = _broker(section("broker", required=True))
    trust = _trust(section("trust", required=True))
    t = section("download")
    download = DownloadConfig(
        max_payload_bytes=t.integer("max_payload_bytes", 1 << 30, 1, MAX_PAYLOAD),
        bandwidth_bytes_per_s=t.integer("bandwidth_bytes_per_s", 0, 0, 1 << 40),
        connect_timeout_s=t.number("connect_timeout_s", 10.0, 0.1, 600),
        read_timeout_s=t.number("read_timeout_s", 30.0, 0.1, 3600),
        min_bytes_per_s=t.integer("min_bytes_per_s", 256, 0, 1 << 30),
        max_attempts=t.integer("max_attempts", 5, 1, 100),
        progress_interval_s=t.number("progress_interval_s", 5.0, 0.1, 3600),
        chunk_bytes=t.integer("chunk_bytes", 65536, 1024, 16 << 20),
        keep_base=t.boolean("keep_base", True),
        max_rebuild_memory_bytes=t.integer("max_rebuild_memory_bytes", 512 << 20, 1 << 20, 1 << 40),
        metered=t.boolean("metered", False),
        metered_command=t.argv("metered_command"),
        metered_windows=tuple(
            _parse_window(t, f"metered_windows[{i}]", w)
            for i, w in enumerate(t.strings("metered_windows", max_len=24))
        ),
    )
    install = _install(section("install"), device.state_dir, _unpack(section("unpack")))
    h = section("health")
    health = HealthConfig(
        command=h.argv("command"),
        timeout_s=h.number("timeout_s", 30.0, 0.1, 86400),
        max_interrupted=h.integer("max_interrupted", 3, 1, 100),
    )
    p = section("policy")
    windows_text = p.strings("maintenance_windows", max_len=24)
    policy = PolicyConfig(
        hold_until=parse_time(p, "hold_until"),
        maintenance_windows=tuple(
            _parse_window(p, f"maintenance_windows[{i}]", w) for i, w in enumerate(windows_text)
        ),
        download_ahead=p.boolean("download_ahead", True),
    )
    sec = section("security")
    security = SecurityConfig(
        automatic=sec.boolean("automatic", True),
        outside_windows=sec.boolean("outside_windows", True),
        max_postpone_s=sec.number("max_postpone_s", 3 * 86400.0, 0.0, 30 * 86400.0),
        notify_command=sec.argv("notify_command"),
        notify_timeout_s=sec.number("notify_timeout_s", 30.0, 0.1, 3600.0),
    )
    for table in tables:
        table.check_unknown()
    return DeviceConfig(
        device=device,
        broker=broker,
        trust=trust,
        download=download,
        install=install,
        health=health,
        policy=policy,
        source=source,
        security=security,
    )


def load_config(path: Path) -> DeviceConfig:
    """Read and validate a device configuration file.

    Raises:
        ConfigError: the file cannot be read, is not TOML, or a field is invalid.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path.name}: not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path.name}: not UTF-8 text") from None
    config = parse_config(raw, source=path.name, base=path.resolve().parent)
    _check_secrets(path, raw, config)
    return config


def _check_secrets(path: Path, raw: Mapping[str, Any], config: DeviceConfig) -> None:
    """Refuse, as ssh does, secrets that other users on the device may read: a config file
    holding the broker password, or the TLS client key."""
    broker = raw.get("broker")
    try:
        if isinstance(broker, Mapping) and broker.get("password") is not None:
            check_private(path, "device config (it holds the broker password)")
        if config.broker.key_file is not None and config.broker.key_file.exists():
            check_private(config.broker.key_file, "TLS client key")
    except ExposedSecretError as e:
        raise ConfigError(str(e)) from None
