"""Whole-system updates (issue 18): one notice, several components installed as one.

A system notice lists its ``components`` in installation order, each with its own handler
and the SHA-256, size and URLs of its own payload. Its top-level ``handler`` is
``"system"`` and its top-level ``payload`` pins the *manifest*: the canonical encoding of
the components without their URLs (``system_manifest``). Two consequences, both on
purpose (docs/protocol.md, "System updates"):

* a device older than this field ignores ``components`` and sees a notice for a handler
  called ``system``, which no device has: it refuses the notice before downloading
  anything, instead of installing one part of a system as if it were the whole;
* the top-level payload is a small msgpack document, never a tar or a firmware image, so
  even a device that did try to install it as a plain payload would install nothing.

Sans-IO and pure: the checks run inside ``UpdateNotice.__post_init__`` (a violation is
``malformed``), the size sum in the verifier's step 8.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Protocol

import msgspec

if TYPE_CHECKING:
    from fleetpush_protocol.messages import UpdateNotice

__all__ = [
    "COMPONENT_NAME_PATTERN",
    "COMPONENT_STATES",
    "MAX_COMPONENTS",
    "SYSTEM_HANDLER",
    "Component",
    "ComponentState",
    "ComponentStates",
    "Components",
    "Pinned",
    "check_system",
    "manifest_digest",
    "notice_bytes",
    "system_manifest",
]

SYSTEM_HANDLER = "system"  # the top-level handler of a system notice; no device has one
MAX_COMPONENTS = 16

# Component names become file and folder names on the device (downloads, slots), so they
# are stricter than other names: lowercase, no dots (no "..", no hidden files), no slash.
COMPONENT_NAME_PATTERN = r"\A[a-z0-9][a-z0-9_-]{0,31}\Z"
COMPONENT_STATES = (
    "pending",  # not downloaded yet
    "downloaded",  # fetched and verified; not installed (or never reached)
    "installing",  # its handler runs (or ran when the agent stopped)
    "installed",
    "rolled_back",
    "failed",  # its install failed without changing anything, or its rollback failed
)
"""Every state a report gives a component; an unknown one is shown as it is."""

ComponentName = Annotated[str, msgspec.Meta(pattern=COMPONENT_NAME_PATTERN)]
# The same bounds as ``messages.Payload``'s fields (messages imports this module, so it
# cannot import them from there).
_HandlerName = Annotated[str, msgspec.Meta(pattern=r"\A[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}\Z")]
_Sha256 = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
_Bytes = Annotated[int, msgspec.Meta(ge=0, le=2**48)]
_Url = Annotated[str, msgspec.Meta(min_length=8, max_length=2048)]


class Component(msgspec.Struct, frozen=True, kw_only=True):
    """One part of a system: installed by ``handler`` from the payload it pins."""

    handler: _HandlerName
    name: ComponentName
    sha256: _Sha256
    size: _Bytes
    urls: Annotated[tuple[_Url, ...], msgspec.Meta(min_length=1, max_length=8)]

    def __post_init__(self) -> None:
        if self.handler == SYSTEM_HANDLER:
            raise ValueError(f"components: {self.name!r}: a component cannot be a system")
        for url in self.urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError("components.urls: only http and https URLs are allowed")


class ComponentState(msgspec.Struct, frozen=True, kw_only=True):
    """How far one component of a system update got (in a report)."""

    name: ComponentName
    state: Annotated[str, msgspec.Meta(pattern=r"\A[a-z_]{1,32}\Z")]


Components = Annotated[tuple[Component, ...], msgspec.Meta(min_length=1, max_length=MAX_COMPONENTS)]
ComponentStates = Annotated[
    tuple[ComponentState, ...], msgspec.Meta(min_length=1, max_length=MAX_COMPONENTS)
]


class Pinned(Protocol):
    """What the manifest holds of a component (a ``Component``, or the orchestrator's
    record of one before any URL exists)."""

    @property
    def name(self) -> str: ...
    @property
    def handler(self) -> str: ...
    @property
    def sha256(self) -> bytes: ...
    @property
    def size(self) -> int: ...


class _Pin(msgspec.Struct, frozen=True):
    # Fields in sorted order and msgspec's shortest forms: this encoding is the canonical
    # one (checked against fleetpush_protocol.canonical by the tests), at a tenth of its cost.
    handler: str
    name: str
    sha256: bytes
    size: int


class _Manifest(msgspec.Struct, frozen=True):
    components: list[_Pin]


_ENCODER = msgspec.msgpack.Encoder()


def system_manifest(components: Sequence[Pinned]) -> bytes:
    """The canonical bytes the top-level payload of a system notice must be: every
    component's name, handler, SHA-256 and size, in order (URLs left out: they are signed
    per notice and expire, the manifest is stored once per release)."""
    pins = [_Pin(c.handler, c.name, c.sha256, c.size) for c in components]
    return _ENCODER.encode(_Manifest(pins))


def manifest_digest(components: Sequence[Pinned]) -> tuple[bytes, int]:
    """``(SHA-256, size)`` of ``system_manifest(components)``."""
    data = system_manifest(components)
    return hashlib.sha256(data).digest(), len(data)


def check_system(notice: UpdateNotice) -> None:
    """A notice is a system exactly when its handler is ``system``; then its names are
    unique, it carries no deltas, and its payload is the components' manifest.

    Raises:
        ValueError: any of these fails (a body field error: ``malformed``).
    """
    components = notice.components
    if isinstance(components, msgspec.UnsetType):
        if notice.handler == SYSTEM_HANDLER:
            raise ValueError("handler 'system' needs components")
        return
    if notice.handler != SYSTEM_HANDLER:
        raise ValueError("components go with handler 'system', and only with it")
    names = [c.name for c in components]
    if len(set(names)) != len(names):
        raise ValueError("components: duplicate names")
    if not isinstance(notice.deltas, msgspec.UnsetType):
        raise ValueError("a system notice carries no deltas")  # noqa: TRY004 - msgspec wants ValueError
    sha256, size = manifest_digest(components)
    if (notice.payload.sha256, notice.payload.size) != (sha256, size):
        raise ValueError("payload: a system notice's payload must be its components' manifest")


def notice_bytes(notice: UpdateNotice) -> int:
    """What installing ``notice`` downloads at most, in bytes (the verifier's step 8)."""
    components = notice.components
    if isinstance(components, msgspec.UnsetType):
        return notice.payload.size
    return sum(c.size for c in components)
