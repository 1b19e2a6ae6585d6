"""Every message exchanged between the orchestrator and devices, as plain values.

Each class maps to one msgpack map (the message *body*, see docs/protocol.md). Fields a
reader does not know are kept in ``extra`` and written back unchanged, so a message
decoded and re-encoded by an older implementation keeps its newer fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import ClassVar, Self

from fleetpush_protocol.canonical import Value
from fleetpush_protocol.errors import MalformedError
from fleetpush_protocol.fields import Fields, check_name

__all__ = [
    "FORMAT",
    "CancelNotice",
    "ErrorInfo",
    "FailureCode",
    "Inventory",
    "Keyring",
    "Message",
    "Payload",
    "Presence",
    "Progress",
    "Release",
    "Report",
    "ReportState",
    "SigningKeyInfo",
    "Target",
    "UpdateNotice",
    "message_class",
]

FORMAT = 1
"""The wire format version this implementation reads and writes."""


def _no_extra() -> Mapping[str, Value]:
    return MappingProxyType({})


MAX_URLS = 8
MAX_URL_LEN = 2048
MAX_TARGETS = 1000
MAX_KEYS = 32
TIME_MAX = 2**63 - 1


class ReportState(StrEnum):
    """The states a device reports for one notice, in the order they normally happen."""

    NOTIFIED = "notified"
    DEFERRED = "deferred"
    DOWNLOADING = "downloading"
    DOWNLOADED = "downloaded"
    INSTALLING = "installing"
    INSTALLED = "installed"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    REJECTED = "rejected"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset(
    {
        ReportState.SUCCEEDED,
        ReportState.FAILED,
        ReportState.ROLLED_BACK,
        ReportState.REJECTED,
        ReportState.CANCELED,
    }
)


class FailureCode(StrEnum):
    """Why an update failed or was rolled back: the one documented taxonomy.

    ``rejected`` reports carry a verification error code instead (``errors.error_codes``).
    """

    DOWNLOAD_FAILED = "download_failed"  # every URL failed with transport errors
    HASH_MISMATCH = "hash_mismatch"  # payload bytes differ from the signed SHA-256
    SIZE_MISMATCH = "size_mismatch"  # payload longer or shorter than the signed size
    DISK_FULL = "disk_full"  # no space to store or unpack the payload
    PAYLOAD_INVALID = "payload_invalid"  # not a valid archive, or paths escape the slot
    PRE_INSTALL_FAILED = "pre_install_failed"
    INSTALL_FAILED = "install_failed"
    POST_INSTALL_FAILED = "post_install_failed"
    HEALTH_CHECK_FAILED = "health_check_failed"
    HEALTH_CHECK_TIMEOUT = "health_check_timeout"
    REBOOT_UNCONFIRMED = "reboot_unconfirmed"  # the device came back on the old release
    INTERRUPTED = "interrupted"  # power cut / kill during install; rolled back at start
    ROLLBACK_FAILED = "rollback_failed"  # the previous release could not be restored
    TIMED_OUT = "timed_out"  # set by the orchestrator: the device went silent
    INTERNAL_ERROR = "internal_error"


class Message:
    """Common behaviour: a ``TYPE`` tag, body encoding and unknown-field keeping."""

    TYPE: ClassVar[str]
    KNOWN: ClassVar[frozenset[str]]
    extra: Mapping[str, Value]

    def _fields(self) -> dict[str, Value]:
        raise NotImplementedError

    def to_body(self) -> dict[str, Value]:
        """The body map, unknown fields included, ready for canonical encoding."""
        body: dict[str, Value] = dict(self.extra)
        body.update(self._fields())
        body["format"] = FORMAT
        body["type"] = self.TYPE
        return body

    @classmethod
    def _parse(cls, f: Fields) -> Self:
        raise NotImplementedError

    @classmethod
    def from_body(cls, body: dict[str, Value]) -> Self:
        """Build the message from a decoded body whose format and type were checked.

        Raises:
            MalformedError: a field is missing, of the wrong type, or out of bounds.
        """
        msg = cls._parse(Fields(body, cls.TYPE))
        extra = {k: v for k, v in body.items() if k not in cls.KNOWN}
        if extra:
            object.__setattr__(msg, "extra", MappingProxyType(extra))
        return msg


def _known(*names: str) -> frozenset[str]:
    return frozenset(("format", "type", *names))


@dataclass(frozen=True, slots=True)
class Release:
    name: str
    version: str

    def to_map(self) -> dict[str, Value]:
        return {"name": self.name, "version": self.version}

    @classmethod
    def parse(cls, f: Fields) -> Release:
        return cls(name=f.name("name"), version=f.text("version", min_len=1, max_len=128))


@dataclass(frozen=True, slots=True)
class Payload:
    urls: tuple[str, ...]
    size: int  # bytes
    sha256: bytes  # 32 raw bytes

    def to_map(self) -> dict[str, Value]:
        return {"urls": list(self.urls), "size": self.size, "sha256": self.sha256}

    @classmethod
    def parse(cls, f: Fields) -> Payload:
        urls = f.texts("urls", max_len=MAX_URLS, item_max=MAX_URL_LEN)
        if not urls:
            raise MalformedError("payload.urls: needs at least one URL")
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise MalformedError("payload.urls: only http and https URLs are allowed")
        return cls(
            urls=urls, size=f.integer("size", low=0, high=2**48), sha256=f.blob("sha256", length=32)
        )


@dataclass(frozen=True, slots=True)
class Target:
    """Who a notice is for: any listed device or member of a listed group, and then only
    if its model is listed (when any are) and its current version is listed (when any are).
    """

    devices: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    current_versions: tuple[str, ...] = ()

    def to_map(self) -> dict[str, Value]:
        return {
            "devices": list(self.devices),
            "groups": list(self.groups),
            "models": list(self.models),
            "current_versions": list(self.current_versions),
        }

    @classmethod
    def parse(cls, f: Fields) -> Target:
        target = cls(
            devices=f.names("devices", max_len=MAX_TARGETS),
            groups=f.names("groups", max_len=MAX_TARGETS),
            models=f.names("models", max_len=MAX_TARGETS),
            current_versions=f.texts("current_versions", max_len=MAX_TARGETS, item_max=128),
        )
        if not target.devices and not target.groups:
            raise MalformedError("target: needs at least one device or group")
        return target


@dataclass(frozen=True, slots=True)
class UpdateNotice(Message):
    """Install ``release`` from ``payload`` with ``handler``, if addressed by ``target``."""

    TYPE: ClassVar[str] = "notice"
    KNOWN: ClassVar[frozenset[str]] = _known(
        "notice_id", "rollout_id", "release", "payload", "handler", "target",
        "issued_at", "expires_at", "scope", "seq", "reply_topic",
    )  # fmt: skip

    notice_id: str
    rollout_id: str
    release: Release
    payload: Payload
    handler: str
    handler_args: Mapping[str, str]
    target: Target
    issued_at: int  # Unix seconds
    expires_at: int  # Unix seconds
    scope: str
    seq: int
    reply_topic: str
    extra: Mapping[str, Value] = field(default_factory=_no_extra, compare=False)

    def _fields(self) -> dict[str, Value]:
        return {
            "notice_id": self.notice_id,
            "rollout_id": self.rollout_id,
            "release": self.release.to_map(),
            "payload": self.payload.to_map(),
            "handler": {"name": self.handler, "args": dict(self.handler_args)},
            "target": self.target.to_map(),
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
            "scope": self.scope,
            "seq": self.seq,
            "reply_topic": self.reply_topic,
        }

    @classmethod
    def _parse(cls, f: Fields) -> Self:
        handler = f.sub("handler")
        return cls(
            notice_id=f.name("notice_id"),
            rollout_id=f.name("rollout_id"),
            release=Release.parse(f.sub("release")),
            payload=Payload.parse(f.sub("payload")),
            handler=handler.name("name"),
            handler_args=MappingProxyType(handler.str_map("args")),
            target=Target.parse(f.sub("target")),
            issued_at=f.integer("issued_at", high=TIME_MAX),
            expires_at=f.integer("expires_at", high=TIME_MAX),
            scope=f.text("scope", min_len=1, max_len=256),
            seq=f.integer("seq", low=1, high=TIME_MAX),
            reply_topic=f.text("reply_topic", min_len=1, max_len=512),
        )


@dataclass(frozen=True, slots=True)
class CancelNotice(Message):
    """Withdraw ``rollout_id`` from the targeted devices; shares the scope's sequence."""

    TYPE: ClassVar[str] = "cancel"
    KNOWN: ClassVar[frozenset[str]] = _known(
        "notice_id", "rollout_id", "target", "issued_at", "expires_at", "scope", "seq",
        "reply_topic",
    )  # fmt: skip

    notice_id: str
    rollout_id: str
    target: Target
    issued_at: int
    expires_at: int
    scope: str
    seq: int
    reply_topic: str
    extra: Mapping[str, Value] = field(default_factory=_no_extra, compare=False)

    def _fields(self) -> dict[str, Value]:
        return {
            "notice_id": self.notice_id,
            "rollout_id": self.rollout_id,
            "target": self.target.to_map(),
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
            "scope": self.scope,
            "seq": self.seq,
            "reply_topic": self.reply_topic,
        }

    @classmethod
    def _parse(cls, f: Fields) -> Self:
        return cls(
            notice_id=f.name("notice_id"),
            rollout_id=f.name("rollout_id"),
            target=Target.parse(f.sub("target")),
            issued_at=f.integer("issued_at", high=TIME_MAX),
            expires_at=f.integer("expires_at", high=TIME_MAX),
            scope=f.text("scope", min_len=1, max_len=256),
            seq=f.integer("seq", low=1, high=TIME_MAX),
            reply_topic=f.text("reply_topic", min_len=1, max_len=512),
        )


@dataclass(frozen=True, slots=True)
class SigningKeyInfo:
    """An online key allowed to sign notices between two instants (Unix seconds)."""

    public_key: bytes
    not_before: int
    not_after: int

    def to_map(self) -> dict[str, Value]:
        return {"key": self.public_key, "not_after": self.not_after, "not_before": self.not_before}

    @classmethod
    def parse(cls, f: Fields) -> SigningKeyInfo:
        info = cls(
            public_key=f.blob("key", length=32),
            not_before=f.integer("not_before", high=TIME_MAX),
            not_after=f.integer("not_after", high=TIME_MAX),
        )
        if info.not_after < info.not_before:
            raise MalformedError("signing key window ends before it starts")
        return info


def _parse_keys(f: Fields, key: str) -> tuple[bytes, ...]:
    out = []
    for i, item in enumerate(f.items(key, max_len=MAX_KEYS)):
        if not isinstance(item, bytes) or len(item) != 32:
            raise MalformedError(f"keyring.{key}[{i}]: expected a 32-byte Ed25519 public key")
        out.append(item)
    if len(set(out)) != len(out):
        raise MalformedError(f"keyring.{key}: duplicate keys")
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Keyring(Message):
    """Signed by the root keys: which keys may sign notices, and which roots come next.

    Version 0 is never sent: it is the device's built-in trust anchor (root keys only).
    """

    TYPE: ClassVar[str] = "keyring"
    KNOWN: ClassVar[frozenset[str]] = _known("version", "root", "signing", "revoked", "issued_at")

    version: int
    root_keys: tuple[bytes, ...]
    root_threshold: int
    signing_keys: tuple[SigningKeyInfo, ...]
    signing_threshold: int
    revoked: tuple[bytes, ...]
    issued_at: int
    extra: Mapping[str, Value] = field(default_factory=_no_extra, compare=False)

    def _fields(self) -> dict[str, Value]:
        return {
            "version": self.version,
            "root": {"keys": list(self.root_keys), "threshold": self.root_threshold},
            "signing": {
                "keys": [k.to_map() for k in self.signing_keys],
                "threshold": self.signing_threshold,
            },
            "revoked": list(self.revoked),
            "issued_at": self.issued_at,
        }

    @classmethod
    def _parse(cls, f: Fields) -> Self:
        root = f.sub("root")
        signing = f.sub("signing")
        signing_keys = tuple(
            SigningKeyInfo.parse(Fields(item, f"keyring.signing.keys[{i}]"))
            for i, item in enumerate(signing.items("keys", max_len=MAX_KEYS))
        )
        if len({k.public_key for k in signing_keys}) != len(signing_keys):
            raise MalformedError("keyring.signing.keys: duplicate keys")
        ring = cls(
            version=f.integer("version", low=1, high=TIME_MAX),
            root_keys=_parse_keys(root, "keys"),
            root_threshold=root.integer("threshold", low=1, high=MAX_KEYS),
            signing_keys=signing_keys,
            signing_threshold=signing.integer("threshold", low=1, high=MAX_KEYS),
            revoked=_parse_keys(f, "revoked"),
            issued_at=f.integer("issued_at", high=TIME_MAX),
        )
        if ring.root_threshold > len(ring.root_keys):
            raise MalformedError("keyring.root.threshold exceeds the number of root keys")
        if ring.signing_threshold > max(len(ring.signing_keys), 1):
            raise MalformedError("keyring.signing.threshold exceeds the number of signing keys")
        if set(ring.revoked) & {k.public_key for k in ring.signing_keys}:
            raise MalformedError("keyring: a key is both allowed and revoked")
        return ring

    def signing_key(self, public_key: bytes) -> SigningKeyInfo | None:
        for info in self.signing_keys:
            if info.public_key == public_key:
                return info
        return None


@dataclass(frozen=True, slots=True)
class Progress:
    done: int  # bytes
    total: int  # bytes


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Report(Message):
    """One state change of one device for one notice, numbered by a per-device counter."""

    TYPE: ClassVar[str] = "report"
    KNOWN: ClassVar[frozenset[str]] = _known(
        "device_id", "notice_id", "rollout_id", "state", "current_version", "counter",
        "reported_at", "progress", "error",
    )  # fmt: skip

    device_id: str
    notice_id: str
    rollout_id: str
    state: ReportState
    current_version: str
    counter: int
    reported_at: int  # Unix seconds
    progress: Progress | None = None
    error: ErrorInfo | None = None
    extra: Mapping[str, Value] = field(default_factory=_no_extra, compare=False)

    def _fields(self) -> dict[str, Value]:
        body: dict[str, Value] = {
            "device_id": self.device_id,
            "notice_id": self.notice_id,
            "rollout_id": self.rollout_id,
            "state": self.state.value,
            "current_version": self.current_version,
            "counter": self.counter,
            "reported_at": self.reported_at,
        }
        if self.progress is not None:
            body["progress"] = {"done": self.progress.done, "total": self.progress.total}
        if self.error is not None:
            body["error"] = {"code": self.error.code, "message": self.error.message}
        return body

    @classmethod
    def _parse(cls, f: Fields) -> Self:
        state_text = f.text("state", max_len=32)
        try:
            state = ReportState(state_text)
        except ValueError:
            raise MalformedError(f"report.state: unknown state {state_text!r}") from None
        progress = None
        if f.has("progress"):
            p = f.sub("progress")
            progress = Progress(
                done=p.integer("done", high=2**48), total=p.integer("total", high=2**48)
            )
        error = None
        if f.has("error"):
            e = f.sub("error")
            error = ErrorInfo(
                code=e.text("code", min_len=1, max_len=64), message=e.text("message", max_len=1024)
            )
        return cls(
            device_id=f.name("device_id"),
            notice_id=f.name("notice_id"),
            rollout_id=f.name("rollout_id"),
            state=state,
            current_version=f.text("current_version", max_len=128),
            counter=f.integer("counter", low=1, high=TIME_MAX),
            reported_at=f.integer("reported_at", high=TIME_MAX),
            progress=progress,
            error=error,
        )


@dataclass(frozen=True, slots=True)
class Presence(Message):
    """Online on connect; offline as the MQTT last will or on a clean shutdown."""

    TYPE: ClassVar[str] = "presence"
    KNOWN: ClassVar[frozenset[str]] = _known("device_id", "online", "at")

    device_id: str
    online: bool
    at: int  # Unix seconds
    extra: Mapping[str, Value] = field(default_factory=_no_extra, compare=False)

    def _fields(self) -> dict[str, Value]:
        return {"device_id": self.device_id, "online": self.online, "at": self.at}

    @classmethod
    def _parse(cls, f: Fields) -> Self:
        return cls(
            device_id=f.name("device_id"),
            online=f.boolean("online"),
            at=f.integer("at", high=TIME_MAX),
        )


@dataclass(frozen=True, slots=True)
class Inventory(Message):
    """What a device is and runs; sent on every connect and after every install."""

    TYPE: ClassVar[str] = "inventory"
    KNOWN: ClassVar[frozenset[str]] = _known(
        "device_id", "model", "groups", "client_version", "installed", "free_bytes", "at"
    )

    device_id: str
    model: str
    groups: tuple[str, ...]
    client_version: str
    installed: tuple[Release, ...]
    free_bytes: int
    at: int
    extra: Mapping[str, Value] = field(default_factory=_no_extra, compare=False)

    def _fields(self) -> dict[str, Value]:
        return {
            "device_id": self.device_id,
            "model": self.model,
            "groups": list(self.groups),
            "client_version": self.client_version,
            "installed": [r.to_map() for r in self.installed],
            "free_bytes": self.free_bytes,
            "at": self.at,
        }

    @classmethod
    def _parse(cls, f: Fields) -> Self:
        installed = tuple(
            Release.parse(Fields(item, f"inventory.installed[{i}]"))
            for i, item in enumerate(f.items("installed", max_len=64))
        )
        return cls(
            device_id=f.name("device_id"),
            model=check_name(f.text("model", max_len=128), "inventory.model"),
            groups=f.names("groups", max_len=MAX_TARGETS),
            client_version=f.text("client_version", max_len=64),
            installed=installed,
            free_bytes=f.integer("free_bytes", high=2**63),
            at=f.integer("at", high=TIME_MAX),
        )


_CLASSES: dict[str, type[Message]] = {
    cls.TYPE: cls for cls in (UpdateNotice, CancelNotice, Keyring, Report, Presence, Inventory)
}


def message_class(type_tag: str) -> type[Message] | None:
    """The class for a body ``type`` tag, or None if this implementation does not know it."""
    return _CLASSES.get(type_tag)
