"""The device configuration: one TOML file, decoded into frozen, bounded msgspec structs.

Every limit has a unit (in its name or its comment) and a range; durations are written
``"30s"``, ``"5m"``, ``"2h"`` (or a number of seconds), sizes ``"64KiB"``, ``"1GiB"`` (or a
number of bytes). A bad file raises ``ConfigError`` naming the file, the table and the
key, e.g. ``device.toml: [download] max_payload_bytes: must be 1..281474976710656``.
Relative paths are relative to the folder holding the configuration file. The keys that
carried their unit (``keepalive_s = 60``) are still read.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import Meta, field

from device_client import casefold
from fleetpush_common.atomic import ExposedSecretError, check_private
from fleetpush_common.broker_settings import BrokerSettings
from fleetpush_common.config import DURATION, SIZE, TIME, ConfigError, Name, decode
from fleetpush_common.windows import Window
from fleetpush_protocol.components import COMPONENT_NAME_PATTERN
from fleetpush_protocol.keys import load_public_key

__all__ = [
    "BrokerConfig",
    "ConfigError",
    "DeviceConfig",
    "DeviceSection",
    "DownloadConfig",
    "EvidenceConfig",
    "HealthConfig",
    "HoldsConfig",
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

Arg = Annotated[str, Meta(min_length=1, max_length=4096)]
Argv = Annotated[tuple[Arg, ...], Meta(max_length=256)]


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class DeviceSection(_Section, frozen=True, kw_only=True):
    id: Name
    model: Name
    groups: Annotated[tuple[Name, ...], Meta(max_length=64)] = ()
    state_dir: Path

    def __post_init__(self) -> None:
        if len(set(self.groups)) != len(self.groups):
            raise ValueError("groups: duplicate groups")


class BrokerConfig(BrokerSettings, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[broker]``: the shared broker settings, and how long the session lives.

    ``urls = ["mqtt://a:1883", "mqtts://b:8883"]`` lists brokers (or the nodes of one
    cluster) in place of ``url``; the device starts at one picked from its id, so a fleet
    spreads over them, and moves to the next when one fails (docs/device.md, "Several
    brokers"). The TLS files apply to the ``mqtts://`` ones.
    """

    renamed: ClassVar[dict[str, str]] = {
        "keepalive_s": "keepalive", "session_expiry_s": "session_expiry",
        "ack_timeout_s": "ack_timeout"}  # fmt: skip

    url: str = ""
    urls: Annotated[tuple[str, ...], Meta(max_length=32)] = ()
    session_expiry_s: Annotated[int, DURATION, Meta(ge=0, le=2**32 - 1)] = field(
        default=604800, name="session_expiry"
    )  # seconds the broker keeps the session (and queued notices) while offline
    ack_timeout_s: Annotated[float, DURATION, Meta(ge=0.1, le=3600.0)] = field(
        default=30.0, name="ack_timeout"
    )  # seconds without a confirmation before reports are resent

    @property
    def all_urls(self) -> tuple[str, ...]:
        return self.urls or (self.url,)

    @property
    def urls_key(self) -> str:
        return "urls" if self.urls else "url"

    def __post_init__(self) -> None:
        if self.url and self.urls:
            raise ValueError("urls: give url or urls (a list of broker URLs), not both")
        if not self.url and not self.urls:
            raise ValueError("url: missing (or urls, a list of broker URLs)")
        if len(set(self.urls)) != len(self.urls):
            raise ValueError("urls: duplicate URLs")
        super().__post_init__()
        if self.username is None and self.cert_file is None:
            raise ValueError("username: missing (needed unless a TLS client certificate is used)")
        if self.username is None and any(not u.startswith("mqtts:") for u in self.all_urls):
            raise ValueError("urls: a login by client certificate needs mqtts:// URLs only")

    def endpoint(self, url: str) -> BrokerConfig:
        """These settings for one of the URLs (``url`` set, no list; TLS files only where
        the URL is ``mqtts://``)."""
        tls = url.startswith("mqtts:")
        return msgspec.structs.replace(
            self, url=url, urls=(), ca_file=self.ca_file if tls else None,
            cert_file=self.cert_file if tls else None, key_file=self.key_file if tls else None,
        )  # fmt: skip


class TrustConfig(_Section, frozen=True, kw_only=True):
    root_keys_hex: Annotated[tuple[str, ...], Meta(max_length=32)] = field(
        default=(), name="root_keys"
    )  # Ed25519 public keys, 64 hex digits each
    root_threshold: Annotated[int, Meta(ge=1, le=32)] = 1

    @property
    def root_keys(self) -> tuple[bytes, ...]:
        return tuple(load_public_key(k) for k in self.root_keys_hex)

    def __post_init__(self) -> None:
        if not self.root_keys_hex:
            raise ValueError("root_keys: needs at least one root public key (64 hex digits)")
        for i, text in enumerate(self.root_keys_hex):
            try:
                load_public_key(text)
            except ValueError:
                raise ValueError(
                    f"root_keys[{i}]: not an Ed25519 public key (64 hex digits)"
                ) from None
        if len(set(self.root_keys)) != len(self.root_keys_hex):
            raise ValueError("root_keys: duplicate keys")
        if self.root_threshold > len(self.root_keys_hex):
            raise ValueError(f"root_threshold: must be 1..{len(self.root_keys_hex)}")


class DownloadConfig(_Section, frozen=True, kw_only=True):
    renamed: ClassVar[dict[str, str]] = {
        "connect_timeout_s": "connect_timeout", "read_timeout_s": "read_timeout",
        "progress_interval_s": "progress_interval"}  # fmt: skip

    max_payload_bytes: Annotated[int, SIZE, Meta(ge=1, le=MAX_PAYLOAD)] = 1 << 30
    bandwidth_bytes_per_s: Annotated[int, SIZE, Meta(ge=0, le=1 << 40)] = 0  # 0 = unlimited
    connect_timeout_s: Annotated[float, DURATION, Meta(ge=0.1, le=600.0)] = field(
        default=10.0, name="connect_timeout")  # fmt: skip
    # Without a byte for this long the server is "slow".
    read_timeout_s: Annotated[float, DURATION, Meta(ge=0.1, le=3600.0)] = field(
        default=30.0, name="read_timeout")  # fmt: skip
    min_bytes_per_s: Annotated[int, SIZE, Meta(ge=0, le=1 << 30)] = 256  # slower = slow server
    max_attempts: Annotated[int, Meta(ge=1, le=100)] = 5  # per URL, for transport errors
    progress_interval_s: Annotated[float, DURATION, Meta(ge=0.1, le=3600.0)] = field(
        default=5.0, name="progress_interval")  # fmt: skip
    chunk_bytes: Annotated[int, SIZE, Meta(ge=1024, le=16 << 20)] = 65536  # read per iteration
    # Deltas (docs/device.md, "Delta payloads"): the installed release's payload is kept
    # as the base the next delta applies to; false saves its disk and always downloads in
    # full. A rebuild may use at most this much memory (the base plus zstd's window).
    keep_base: bool = True
    max_rebuild_memory_bytes: Annotated[int, SIZE, Meta(ge=1 << 20, le=1 << 40)] = 512 << 20
    # Metered links: on one, only deltas are fetched (and full payloads inside
    # ``metered_windows``). ``metered_command`` exiting 0 says the link is metered now.
    metered: bool = False
    metered_command: Argv = ()
    metered_windows: Annotated[tuple[Window, ...], Meta(max_length=24)] = ()  # local time


class UnpackLimits(_Section, frozen=True, kw_only=True):
    """What one payload may unpack to (directory handler); beyond any: ``payload_invalid``."""

    max_bytes: Annotated[int, SIZE, Meta(ge=1, le=MAX_PAYLOAD)] = (
        4 << 30
    )  # all files; sparse in full
    # Unpacked bytes per payload byte (a payload under 1 MiB counts as 1 MiB).
    max_ratio: Annotated[int, Meta(ge=1, le=1_000_000)] = 100
    max_members: Annotated[int, Meta(ge=1, le=10_000_000)] = 50_000  # archive members
    # Bytes (UTF-8) in a member's name or a symlink's target.
    max_path_bytes: Annotated[int, Meta(ge=64, le=4096)] = 1024
    max_depth: Annotated[int, Meta(ge=1, le=1024)] = 32  # path components in a member's name


class InstallConfig(_Section, frozen=True, kw_only=True):
    renamed: ClassVar[dict[str, str]] = {"step_timeout_s": "step_timeout"}
    internal: ClassVar[tuple[str, ...]] = ("unpack",)  # the [unpack] table

    handler: Literal["directory", "command"] = "directory"
    slots_dir: Path | None = None  # directory handler; default <state_dir>/slots
    pre_install: Argv = ()
    install: Argv = ()
    post_install: Argv = ()
    rollback: Argv = ()
    reboot: Argv = ()
    step_timeout_s: Annotated[float, DURATION, Meta(ge=1.0, le=86400.0)] = field(
        default=3600.0, name="step_timeout")  # fmt: skip
    unpack: UnpackLimits = field(default_factory=UnpackLimits)

    def __post_init__(self) -> None:
        if self.handler == "command" and not self.install:
            raise ValueError("install: the command handler needs an install command (argv list)")


class HealthConfig(_Section, frozen=True, kw_only=True):
    renamed: ClassVar[dict[str, str]] = {"timeout_s": "timeout"}

    command: Argv = ()  # empty = no health check
    timeout_s: Annotated[float, DURATION, Meta(ge=0.1, le=86400.0)] = field(
        default=30.0, name="timeout")  # fmt: skip
    max_interrupted: Annotated[int, Meta(ge=1, le=100)] = 3  # killed mid-way before rollback


class PolicyConfig(_Section, frozen=True, kw_only=True):
    hold_until: Annotated[int, TIME] | None = None  # Unix seconds; written as RFC 3339
    maintenance_windows: Annotated[tuple[Window, ...], Meta(max_length=24)] = ()  # local time
    download_ahead: bool = True


class SecurityConfig(_Section, frozen=True, kw_only=True):
    """How security updates (notices with ``update_class = "security"``) are treated."""

    renamed: ClassVar[dict[str, str]] = {
        "max_postpone_s": "max_postpone", "notify_timeout_s": "notify_timeout"}  # fmt: skip

    automatic: bool = True  # installed on their own schedule; false: like any other update
    outside_windows: bool = True  # may install outside the maintenance windows
    # A hold may put one off this long (the notice caps it).
    max_postpone_s: Annotated[float, DURATION, Meta(ge=0.0, le=30 * 86400.0)] = field(
        default=3 * 86400.0, name="max_postpone")  # fmt: skip
    notify_command: Argv = ()  # run with the update's advisory, JSON on stdin
    notify_timeout_s: Annotated[float, DURATION, Meta(ge=0.1, le=3600.0)] = field(
        default=30.0, name="notify_timeout")  # fmt: skip


class HoldsConfig(_Section, frozen=True, kw_only=True):
    """``[holds]``: how applications on the device may hold an update (docs/device.md,
    "Application holds"); the notice's ``holds`` may only lower the two bounds."""

    renamed: ClassVar[dict[str, str]] = {
        "max_each_s": "max_each", "max_total_s": "max_total",
        "gate_timeout_s": "gate_timeout"}  # fmt: skip

    # The UNIX socket of ``fleetpush-device hold``; none: no local command. Its folder is
    # made 0750 and the socket 0660, owned by ``socket_group`` when set: who may hold is
    # who is in that group (or the agent's own user).
    socket: Path | None = None
    socket_group: Name | None = None
    max_each_s: Annotated[float, DURATION, Meta(ge=0.0, le=365 * 86400.0)] = field(
        default=2 * 3600.0, name="max_each")  # fmt: skip
    # From the first hold of an update on: past it the update proceeds whatever is asked.
    max_total_s: Annotated[float, DURATION, Meta(ge=0.0, le=365 * 86400.0)] = field(
        default=24 * 3600.0, name="max_total")  # fmt: skip
    gate_command: Argv = ()  # asked before each install: proceed, or hold for a while
    gate_timeout_s: Annotated[float, DURATION, Meta(ge=0.1, le=3600.0)] = field(
        default=30.0, name="gate_timeout")  # fmt: skip


class EvidenceConfig(_Section, frozen=True, kw_only=True):
    """What a failure report carries of the failing step's output (issue 18)."""

    # The last this many bytes of its stdout and stderr together; 0 reports none. At most
    # the agent's capture per stream (device_client.output_tail.CAPTURE_BYTES).
    output_tail: Annotated[int, SIZE, Meta(ge=0, le=6 * 1024)] = 4096


class DeviceConfig(_Section, frozen=True, kw_only=True):
    """The whole configuration of one device agent."""

    internal: ClassVar[tuple[str, ...]] = ("source",)

    device: DeviceSection
    broker: BrokerConfig
    trust: TrustConfig
    download: DownloadConfig = field(default_factory=DownloadConfig)
    install: InstallConfig = field(default_factory=InstallConfig)
    unpack: UnpackLimits = field(default_factory=UnpackLimits)
    health: HealthConfig = field(default_factory=HealthConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    holds: HoldsConfig = field(default_factory=HoldsConfig)
    evidence: EvidenceConfig = field(default_factory=EvidenceConfig)
    # The parts a system update may install (issue 18): ``[components.NAME]``, each with
    # its own handler and steps, like ``[install]`` (whose ``reboot`` serves them all).
    components: Annotated[dict[str, InstallConfig], Meta(max_length=16)] = field(
        default_factory=dict
    )
    source: str = "device.toml"  # the file name, for messages

    def __post_init__(self) -> None:
        for name in self.components:  # checked here: a key's own error names no table
            if not re.match(COMPONENT_NAME_PATTERN, name):
                raise ValueError(
                    f"components: {name!r} is not a component name "
                    "(1-32 of a-z 0-9 _ -, starting with a letter or digit)"
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
    c = decode(DeviceConfig, raw, source, base)
    try:
        broker = c.broker.with_password_file()
    except ValueError as e:
        raise ConfigError.at(e, source, "broker") from None
    install = c.install
    slots = install.slots_dir
    if install.handler == "directory" and slots is None:
        slots = c.device.state_dir / "slots"
    install = msgspec.structs.replace(install, slots_dir=slots, unpack=c.unpack)
    components = {name: _component(c, name, part) for name, part in c.components.items()}
    return msgspec.structs.replace(
        c, broker=broker, install=install, components=components, source=source
    )


def _component(c: DeviceConfig, name: str, part: InstallConfig) -> InstallConfig:
    slots = part.slots_dir
    if part.handler == "directory" and slots is None:
        slots = c.device.state_dir / "components" / name
    return msgspec.structs.replace(part, slots_dir=slots, unpack=c.unpack)


def load_config(
    path: Path, *, read_flags: Callable[[Path], int] = casefold.read_flags
) -> DeviceConfig:
    """Read and validate a device configuration file. ``read_flags`` reads a folder's
    inode flags (``casefold.read_flags``; tests inject theirs).

    Raises:
        ConfigError: the file cannot be read, is not TOML, or a field is invalid; or the
            slot folder is case-folding (``casefold.check_slots_dir``).
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror}", source=str(path)) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"not valid TOML: {e}", source=path.name) from None
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8 text", source=path.name) from None
    config = parse_config(raw, source=path.name, base=path.resolve().parent)
    _check_secrets(path, raw, config)
    slots = config.install.slots_dir
    if config.install.handler == "directory" and slots is not None:
        problem = casefold.check_slots_dir(slots, read_flags)
        if problem is not None:
            raise ConfigError(problem, source=path.name, table="install", key="slots_dir")
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
