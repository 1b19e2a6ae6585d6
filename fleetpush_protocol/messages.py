"""Every message exchanged between the orchestrator and devices, as typed values.

Each class is a msgspec Struct whose msgpack encoding *is* the message body on the wire
(docs/protocol.md): decoding and validating a body happens in one pass in C, which keeps
verification close to the cost of the Ed25519 check itself.

Fields are declared in sorted order on purpose: msgspec writes struct fields in
declaration order, and the canonical encoding sorts map keys. Every class is keyword-only,
so that ordering never leaks into constructor calls. Optional fields are always written
(``nil`` when absent) so that each message has exactly one encoding.

Unknown fields are ignored by these typed views and kept in the signed body bytes, which
are what devices verify, store and relay.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import msgspec

from fleetpush_protocol.components import Components, ComponentStates, check_system
from fleetpush_protocol.output import MAX_OUTPUTS, StepOutput
from fleetpush_protocol.states import ERROR_STATES, FailureCode, ReportState

__all__ = [
    "ERROR_STATES",
    "FORMAT",
    "SECURITY",
    "Ack",
    "Advisory",
    "CancelNotice",
    "Delta",
    "ErrorInfo",
    "FailureCode",
    "HoldLimits",
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
    "StepOutput",
    "SupportPeriods",
    "Target",
    "UpdateNotice",
    "message_class",
]

FORMAT = 1
"""The wire format version this implementation reads and writes."""

MAX_URLS = 8
MAX_DELTAS = 16
MAX_TARGETS = 1000
MAX_KEYS = 32
TIME_MAX = 2**63 - 1

# Device ids, group names and models end up inside MQTT topic levels and broker ACL
# patterns, so they may not contain '/', '+', '#' or whitespace.
NAME_PATTERN = r"\A[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}\Z"
Name = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]
Version = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Text = Annotated[str, msgspec.Meta(max_length=4096)]
Time = Annotated[int, msgspec.Meta(ge=0, le=TIME_MAX)]  # Unix seconds
Bytes = Annotated[int, msgspec.Meta(ge=0, le=2**48)]  # a byte count
Seq = Annotated[int, msgspec.Meta(ge=1, le=TIME_MAX)]
PublicKey = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
Sha256 = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
Url = Annotated[str, msgspec.Meta(min_length=8, max_length=2048)]
Topic = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
Scope = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Names = Annotated[tuple[Name, ...], msgspec.Meta(max_length=MAX_TARGETS)]
Threshold = Annotated[int, msgspec.Meta(ge=1, le=MAX_KEYS)]
HandlerArgs = Annotated[
    dict[Annotated[str, msgspec.Meta(max_length=64)], Text], msgspec.Meta(max_length=64)
]


class _Struct(msgspec.Struct, frozen=True, kw_only=True):
    """Base of every wire value: immutable, keyword-only, unknown fields ignored."""

    def to_body(self) -> dict[str, Any]:
        """The value as plain Python data (maps, lists, bytes, ints, strings)."""
        result: dict[str, Any] = msgspec.to_builtins(self, builtin_types=(bytes,), order="sorted")
        return result


def _unique(values: tuple[Any, ...], what: str) -> None:
    if len(set(values)) != len(values):
        raise ValueError(f"{what}: duplicate entries")


class Message(_Struct, frozen=True, kw_only=True):
    """A top-level message: carries ``format`` and a ``type`` tag."""

    TYPE: ClassVar[str]


class Release(_Struct, frozen=True, kw_only=True):
    name: Name
    version: Version


class Payload(_Struct, frozen=True, kw_only=True):
    sha256: Sha256
    size: Bytes
    urls: Annotated[tuple[Url, ...], msgspec.Meta(min_length=1, max_length=MAX_URLS)]

    def __post_init__(self) -> None:
        for url in self.urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError("payload.urls: only http and https URLs are allowed")


class Delta(_Struct, frozen=True, kw_only=True):
    """A smaller way to the same payload: ``method`` rebuilds it from the payload whose
    SHA-256 is ``base_sha256``. ``sha256`` and ``size`` pin the delta's own bytes; the
    rebuilt payload must still match the notice's ``payload.sha256`` and ``payload.size``.
    A method this implementation does not know is skipped, never refused.
    """

    base_sha256: Sha256
    method: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    sha256: Sha256
    size: Bytes
    urls: Annotated[tuple[Url, ...], msgspec.Meta(min_length=1, max_length=MAX_URLS)]

    def __post_init__(self) -> None:
        for url in self.urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError("deltas.urls: only http and https URLs are allowed")


CveId = Annotated[str, msgspec.Meta(pattern=r"\ACVE-\d{4}-\d{4,19}\Z")]
ClassName = Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
SECURITY = "security"  # the update class of a security update (``UpdateNotice.update_class``)


class Advisory(_Struct, frozen=True, kw_only=True):
    """What a security update fixes (issue 17; docs/protocol.md): CVE ids, severity, a
    short text, whether installing disrupts function, the longest postponement (seconds
    after ``issued_at``). Every field is always written."""

    cves: Annotated[tuple[CveId, ...], msgspec.Meta(max_length=64)]
    disruptive: bool
    max_postpone_s: Annotated[int, msgspec.Meta(ge=0, le=365 * 86400)]
    severity: Literal["none", "low", "medium", "high", "critical"]
    summary: Annotated[str, msgspec.Meta(min_length=1, max_length=1000)]

    def __post_init__(self) -> None:
        _unique(self.cves, "advisory.cves")


HoldSeconds = Annotated[int, msgspec.Meta(ge=0, le=365 * 86400)]


class HoldLimits(_Struct, frozen=True, kw_only=True):
    """How long an application on the device may hold this update (issue 18; docs/protocol.md,
    "Holds"): at most ``max_each_s`` per hold and ``max_total_s`` from the first hold on. They
    only lower the device's own bounds; ``max_total_s = 0`` is an urgent release (no hold).
    Both fields are always written."""

    max_each_s: HoldSeconds
    max_total_s: HoldSeconds

    @property
    def urgent(self) -> bool:
        return self.max_total_s == 0 or self.max_each_s == 0


class Target(_Struct, frozen=True, kw_only=True):
    """Who a notice is for: any listed device or member of a listed group, and then only
    if its model is listed (when any are) and its current version is listed (when any are).
    """

    current_versions: Annotated[tuple[Version, ...], msgspec.Meta(max_length=MAX_TARGETS)] = ()
    devices: Names = ()
    groups: Names = ()
    models: Names = ()

    def __post_init__(self) -> None:
        if not self.devices and not self.groups:
            raise ValueError("target: needs at least one device or group")
        _unique(self.devices, "target.devices")
        _unique(self.groups, "target.groups")


class UpdateNotice(Message, frozen=True, kw_only=True):
    """Install ``release`` from ``payload`` with ``handler``, if addressed by ``target``."""

    TYPE: ClassVar[str] = "notice"

    # Absent unless a security update (issue 17), like ``deltas`` and ``update_class``.
    advisory: Advisory | msgspec.UnsetType = msgspec.UNSET
    # Absent unless a system update (issue 18; fleetpush_protocol/components.py).
    components: Components | msgspec.UnsetType = msgspec.UNSET
    # Absent (not nil, not empty) when there are none, so that a notice without deltas
    # keeps the bytes it had before the field existed and has one encoding either way.
    deltas: (
        Annotated[tuple[Delta, ...], msgspec.Meta(min_length=1, max_length=MAX_DELTAS)]
        | msgspec.UnsetType
    ) = msgspec.UNSET
    expires_at: Time
    format: int = FORMAT
    handler: Name
    handler_args: HandlerArgs
    # Absent: the device's own hold bounds apply (issue 18); old devices ignore it.
    holds: HoldLimits | msgspec.UnsetType = msgspec.UNSET
    issued_at: Time
    notice_id: Name
    payload: Payload
    release: Release
    reply_topic: Topic
    rollout_id: Name
    scope: Scope
    seq: Seq
    target: Target
    type: Literal["notice"] = "notice"
    # Absent: a feature update; "security" with an advisory; unknown: a feature update.
    update_class: ClassName | msgspec.UnsetType = msgspec.UNSET

    def __post_init__(self) -> None:
        has_advisory = not isinstance(self.advisory, msgspec.UnsetType)
        if (self.update_class == SECURITY) != has_advisory:
            raise ValueError("update_class 'security' goes with an advisory, and only it")
        check_system(self)

    @property
    def security(self) -> bool:
        return self.update_class == SECURITY


class CancelNotice(Message, frozen=True, kw_only=True):
    """Withdraw ``rollout_id`` from the targeted devices; shares the scope's sequence."""

    TYPE: ClassVar[str] = "cancel"

    expires_at: Time
    format: int = FORMAT
    issued_at: Time
    notice_id: Name
    reply_topic: Topic
    rollout_id: Name
    scope: Scope
    seq: Seq
    target: Target
    type: Literal["cancel"] = "cancel"


class SupportPeriods(Message, frozen=True, kw_only=True):
    """Until when each hardware model gets security updates (issue 17): model -> end of
    its last day (Unix seconds); signed like notices, retained on ``{prefix}/support``."""

    TYPE: ClassVar[str] = "support"

    expires_at: Time
    format: int = FORMAT
    issued_at: Time
    models: Annotated[dict[Name, Time], msgspec.Meta(max_length=MAX_TARGETS)]
    type: Literal["support"] = "support"


class SigningKeyInfo(_Struct, frozen=True, kw_only=True):
    """An online key allowed to sign notices issued between two instants (Unix seconds)."""

    not_after: Time
    not_before: Time
    public_key: PublicKey

    def __post_init__(self) -> None:
        if self.not_after < self.not_before:
            raise ValueError("signing key window ends before it starts")


class Keyring(Message, frozen=True, kw_only=True):
    """Signed by the root keys: which keys may sign notices, and which roots come next.

    Version 0 is never sent: it is the device's built-in trust anchor (root keys only).
    """

    TYPE: ClassVar[str] = "keyring"

    format: int = FORMAT
    issued_at: Time
    revoked: Annotated[tuple[PublicKey, ...], msgspec.Meta(max_length=1024)] = ()
    root_keys: Annotated[tuple[PublicKey, ...], msgspec.Meta(min_length=1, max_length=MAX_KEYS)]
    root_threshold: Threshold
    signing_keys: Annotated[tuple[SigningKeyInfo, ...], msgspec.Meta(max_length=MAX_KEYS)]
    signing_threshold: Threshold
    type: Literal["keyring"] = "keyring"
    # Version 0 is the built-in anchor, never a message: a keyring body claiming it is
    # malformed (step 3), before any version comparison.
    version: Annotated[int, msgspec.Meta(ge=1, le=TIME_MAX)]

    def __post_init__(self) -> None:
        _unique(self.root_keys, "keyring.root_keys")
        _unique(tuple(k.public_key for k in self.signing_keys), "keyring.signing_keys")
        if self.root_threshold > len(self.root_keys):
            raise ValueError("keyring.root_threshold exceeds the number of root keys")
        if self.signing_keys and self.signing_threshold > len(self.signing_keys):
            raise ValueError("keyring.signing_threshold exceeds the number of signing keys")
        if set(self.revoked) & {k.public_key for k in self.signing_keys}:
            raise ValueError("keyring: a key is both allowed and revoked")

    def signing_key(self, public_key: bytes) -> SigningKeyInfo | None:
        for info in self.signing_keys:
            if info.public_key == public_key:
                return info
        return None


class Progress(_Struct, frozen=True, kw_only=True):
    done: Bytes
    total: Bytes


class ErrorInfo(_Struct, frozen=True, kw_only=True):
    code: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    message: Annotated[str, msgspec.Meta(max_length=1024)]


_OUTPUT_STATES = frozenset({ReportState.FAILED, ReportState.ROLLED_BACK})


class Report(Message, frozen=True, kw_only=True):
    """One state change of one device for one notice, numbered by a per-device counter."""

    TYPE: ClassVar[str] = "report"

    # Absent unless the notice is a system update: how far each component got.
    components: ComponentStates | msgspec.UnsetType = msgspec.UNSET
    counter: Seq
    current_version: Annotated[str, msgspec.Meta(max_length=128)]
    # Absent unless set, like UpdateNotice.deltas, so reports without them keep their
    # bytes. ``detail`` says how a step went when that is not a failure (a delta that
    # did not apply, so the full payload was fetched); ``downloaded`` is the payload
    # bytes this device actually received over the wire for the notice (deltas, retries
    # and fallbacks included), on the ``downloaded`` report.
    detail: Annotated[str, msgspec.Meta(max_length=1024)] | msgspec.UnsetType = msgspec.UNSET
    device_id: Name
    downloaded: Bytes | msgspec.UnsetType = msgspec.UNSET
    error: ErrorInfo | None = None
    format: int = FORMAT
    # On a ``deferred`` report held by an application (issue 18): why (who held it and
    # what it said) and until when (Unix seconds); absent otherwise.
    hold_reason: Annotated[str, msgspec.Meta(max_length=512)] | msgspec.UnsetType = msgspec.UNSET
    hold_until: Time | msgspec.UnsetType = msgspec.UNSET
    notice_id: Name
    # What the failing step printed (issue 18, fleetpush_protocol.output): only on failed
    # and rolled_back, absent otherwise, so other reports keep their bytes.
    output: (
        Annotated[tuple[StepOutput, ...], msgspec.Meta(min_length=1, max_length=MAX_OUTPUTS)]
        | msgspec.UnsetType
    ) = msgspec.UNSET
    progress: Progress | None = None
    reported_at: Time
    rollout_id: Name
    state: ReportState
    type: Literal["report"] = "report"

    def __post_init__(self) -> None:
        # One meaning per report: an error explains a failure, and only a failure.
        if (self.error is not None) != (self.state in ERROR_STATES):
            raise ValueError(
                "error must be set exactly for the failed, rolled_back and rejected states"
            )
        if self.output and self.state not in _OUTPUT_STATES:
            raise ValueError("output is only for the failed and rolled_back states")


class Presence(Message, frozen=True, kw_only=True):
    """Online on connect; offline as the MQTT last will or on a clean shutdown."""

    TYPE: ClassVar[str] = "presence"

    at: Time
    device_id: Name
    format: int = FORMAT
    online: bool
    type: Literal["presence"] = "presence"


class Inventory(Message, frozen=True, kw_only=True):
    """What a device is and runs; sent on every connect and after every install."""

    TYPE: ClassVar[str] = "inventory"

    at: Time
    client_version: Annotated[str, msgspec.Meta(max_length=64)]
    device_id: Name
    format: int = FORMAT
    free_bytes: Annotated[int, msgspec.Meta(ge=0, le=TIME_MAX)]
    groups: Names
    installed: Annotated[tuple[Release, ...], msgspec.Meta(max_length=64)]
    model: Name
    type: Literal["inventory"] = "inventory"


MAX_ACK_RANGES = 256


class Ack(Message, frozen=True, kw_only=True):
    """The orchestrator has stored these reports of ``device_id``: ``[first, last]`` counter
    ranges, inclusive, ascending and disjoint. Unsigned (docs/security.md says why).

    Ranges rather than one highest counter: the broker may drop any report before it
    reaches the orchestrator (a full queue, a crash), so a report can be stored while an
    older one is not, and a cumulative ack would confirm the lost one.
    """

    TYPE: ClassVar[str] = "ack"

    device_id: Name
    format: int = FORMAT
    stored: Annotated[
        tuple[tuple[Seq, Seq], ...], msgspec.Meta(min_length=1, max_length=MAX_ACK_RANGES)
    ]
    type: Literal["ack"] = "ack"

    def __post_init__(self) -> None:
        previous = 0
        for first, last in self.stored:
            if not previous < first <= last:
                raise ValueError("ack.stored: ranges must be ascending, disjoint, first <= last")
            previous = last

    def covers(self, counter: int) -> bool:
        return any(first <= counter <= last for first, last in self.stored)


_KNOWN = (UpdateNotice, CancelNotice, Keyring, Report, Presence, Inventory, Ack, SupportPeriods)
_CLASSES: dict[str, type[Message]] = {cls.TYPE: cls for cls in _KNOWN}


def message_class(type_tag: str) -> type[Message] | None:
    """The class for a body ``type`` tag, or None if this implementation does not know it."""
    return _CLASSES.get(type_tag)
