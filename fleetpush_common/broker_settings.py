"""How a client reaches the broker: the ``[broker]`` table of ``device.toml`` and the
``[mqtt]`` table of ``orchestrator.toml`` are both this struct (each side adds a few keys).

``url`` is ``mqtt://host:1883`` or ``mqtts://host:8883`` (TLS; ``ca_file`` is the CA of
the broker's certificate, default the system's; ``cert_file`` and ``key_file`` a client
certificate). The password comes from ``password`` or, better, a private
``password_file``. ``protocol`` is the MQTT version spoken, ``"5"`` (default) or
``"3.1.1"`` for brokers and modules without MQTT 5 (docs/broker.md, "MQTT 3.1.1").
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Annotated, ClassVar, Literal, Self
from urllib.parse import SplitResult, urlsplit

import msgspec

from fleetpush_common.config import DURATION, read_secret
from fleetpush_protocol.topics import Topics

__all__ = ["BrokerSettings", "client_tls_context"]


def client_tls_context(
    ca_file: Path | None, cert_file: Path | None = None, key_file: Path | None = None
) -> ssl.SSLContext:
    """A TLS client context that checks the broker's certificate (against ``ca_file``, else
    the system's CAs) and offers the client certificate when one is given."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if cert_file and key_file:
        context.load_cert_chain(str(cert_file), str(key_file))
    return context


def _check_url(url: str, key: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"{key}: {url!r} must look like mqtt://host:1883 or mqtts://host:8883")
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when asked
    except ValueError:
        raise ValueError(f"{key}: {url!r} has an invalid port") from None


class BrokerSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One broker login; ``host``, ``port`` and ``tls`` come from ``url``."""

    renamed: ClassVar[dict[str, str]] = {"keepalive_s": "keepalive"}

    url: str
    username: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None
    password: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)] | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive_s: Annotated[int, DURATION, msgspec.Meta(ge=5, le=3600)] = msgspec.field(
        default=60, name="keepalive"
    )  # seconds between two pings
    topic_prefix: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] = "fleetpush"
    protocol: Literal["5", "3.1.1"] = "5"  # the MQTT version spoken to the broker

    def __repr__(self) -> str:  # never the password
        return f"{type(self).__name__}(url={self.url!r}, username={self.username!r})"

    @property
    def all_urls(self) -> tuple[str, ...]:
        """Every broker URL of these settings (the device's ``urls`` list adds more)."""
        return (self.url,)

    @property
    def urls_key(self) -> str:
        """The configuration key the URLs came from, for errors."""
        return "url"

    def __post_init__(self) -> None:
        key = self.urls_key
        for i, url in enumerate(self.all_urls):
            _check_url(url, key if key == "url" else f"{key}[{i}]")
        if self.password is not None and self.password_file is not None:
            raise ValueError("password_file: give either password or password_file, not both")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("key_file: cert_file and key_file go together")
        tls = any(urlsplit(u).scheme == "mqtts" for u in self.all_urls)
        if (self.cert_file is not None or self.ca_file is not None) and not tls:
            which = "the URL is mqtt://" if key == "url" else "no URL is mqtts://"
            raise ValueError(f"{key}: TLS files are set but {which}; use mqtts://")
        self._check_prefix()

    def _check_prefix(self) -> None:
        try:
            self.topics  # noqa: B018 - builds the topics, checking the prefix
        except ValueError as e:
            raise ValueError(f"topic_prefix: {e}") from None

    def _parts(self) -> SplitResult:
        return urlsplit(self.url)

    @property
    def tls(self) -> bool:
        return self._parts().scheme == "mqtts"

    @property
    def host(self) -> str:
        return self._parts().hostname or ""

    @property
    def port(self) -> int:
        return self._parts().port or (8883 if self.tls else 1883)

    @property
    def protocol_level(self) -> int:
        """The CONNECT packet's protocol level: 5, or 4 for MQTT 3.1.1."""
        return 5 if self.protocol == "5" else 4

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix or "fleetpush")  # empty: not given (orchestrator)

    def tls_context(self) -> ssl.SSLContext | None:
        """The TLS context for an ``mqtts://`` URL, else None."""
        return client_tls_context(self.ca_file, self.cert_file, self.key_file) if self.tls else None

    def with_password_file(self) -> Self:
        """These settings with ``password`` read from ``password_file`` (when set).

        Raises:
            ValueError: ``password_file: ...``, the file is exposed, unreadable or empty.
        """
        if self.password_file is None:
            return self
        try:
            secret = read_secret(self.password_file, "password file")
        except ValueError as e:
            raise ValueError(f"password_file: {e}") from None
        # The file is read: the struct keeps the secret alone (both would be refused).
        return msgspec.structs.replace(self, password=secret, password_file=None)
