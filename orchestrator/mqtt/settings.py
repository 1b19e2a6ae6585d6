"""``[mqtt]`` of ``orchestrator.toml``: the shared broker settings, or the broker
``fleetpush broker run`` recorded.

``url = "mqtts://broker.example.net:8883"`` with ``ca_file`` (and optionally
``cert_file``/``key_file``, a client certificate) reaches the broker over TLS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar

import msgspec

from fleetpush_common.broker_settings import BrokerSettings
from fleetpush_common.config import DURATION, ConfigError, read_secret
from orchestrator.broker.info import INFO_FILE, read_info

__all__ = ["DEFAULT_USER", "MqttConfig", "resolve_mqtt"]

DEFAULT_USER = "fleetpush-orchestrator"
DEFAULT_PREFIX = "fleetpush"


class MqttConfig(BrokerSettings, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The orchestrator's broker login. No ``url``: the broker recorded in the data folder."""

    internal: ClassVar[tuple[str, ...]] = ("source", "missing")

    url: str = ""
    keepalive_s: Annotated[int, DURATION, msgspec.Meta(ge=5, le=3600)] = msgspec.field(
        default=30, name="keepalive"
    )  # seconds between two pings
    # Empty: "fleetpush", or the recorded broker's (a prefix given must match that one).
    topic_prefix: Annotated[str, msgspec.Meta(max_length=128)] = ""
    # MQTT 5 shared subscription group for device messages ("": plain subscriptions): the
    # broker hands each report to one replica of the group.
    share_group: Annotated[str, msgspec.Meta(max_length=128)] = "fleetpush"
    source: str = "settings"  # where host and login came from, said at start
    missing: str = ""  # why no broker is configured: ``serve`` refuses to start with it

    @property
    def login(self) -> str:
        """The username (also the client id and the replica's id)."""
        return self.username or DEFAULT_USER

    def __post_init__(self) -> None:
        if self.share_group and not self.share_group.replace("-", "").replace("_", "").isalnum():
            raise ValueError('share_group: letters, digits, - and _ only (or "")')
        if self.url:
            super().__post_init__()
            return
        if self.topic_prefix:
            self._check_prefix()
        for key in ("username", "password", "password_file"):
            if getattr(self, key) is not None:
                raise ValueError(f"{key}: give it with url, or neither")


def resolve_mqtt(m: MqttConfig, data_dir: Path, source: str) -> MqttConfig:
    """``m`` with its password read, or the recorded broker when ``m`` has no URL.

    Raises:
        ConfigError: the password file or the recorded broker cannot be used.
    """
    if m.url:
        try:
            m = m.with_password_file()
        except ValueError as e:
            raise ConfigError.at(e, source, "mqtt") from None
        return msgspec.structs.replace(
            m, username=m.username or DEFAULT_USER, topic_prefix=m.topic_prefix or DEFAULT_PREFIX,
            source="mqtt.url in the configuration",
        )  # fmt: skip
    return _recorded_broker(m, data_dir, source)


def _recorded_broker(m: MqttConfig, data_dir: Path, source: str) -> MqttConfig:
    """The broker ``fleetpush broker run`` recorded in ``<data_dir>/broker``.

    Never a guess: with nothing recorded, the result says so (``missing``), and ``serve``
    refuses to start rather than log in to whatever listens on a default port.
    """
    workdir = data_dir / "broker"
    try:
        info = read_info(workdir)
    except ValueError as e:
        raise ConfigError(str(e), source=source, table="mqtt") from None
    if info is None:
        return msgspec.structs.replace(m, topic_prefix=DEFAULT_PREFIX, source="", missing=(
            f"no broker configured: orchestrator.toml has no [mqtt] url and "
            f"{workdir / INFO_FILE} does not exist. Start the broker first with "
            f"`fleetpush broker run --data {data_dir}` (it records its ports there), "
            "or set [mqtt] url, username and password_file"
        ))  # fmt: skip
    prefix = m.topic_prefix
    if prefix and prefix != info.topic_prefix:
        raise ConfigError(f"{prefix!r}, but the broker in {workdir} uses {info.topic_prefix!r}",
                          source=source, table="mqtt", key="topic_prefix")  # fmt: skip
    try:
        password = read_secret(info.password_file, "MQTT password file")
    except ValueError as e:
        raise ConfigError(
            f"(from {workdir / INFO_FILE}): {e}", source=source, table="mqtt"
        ) from None
    host = info.connect_host
    return MqttConfig(
        url=f"mqtt://[{host}]:{info.port}" if ":" in host else f"mqtt://{host}:{info.port}",
        username=info.orchestrator_user,
        password=password,
        topic_prefix=info.topic_prefix,
        keepalive_s=m.keepalive_s,
        share_group=m.share_group,
        protocol=m.protocol,
        source=str(workdir / INFO_FILE),
    )
