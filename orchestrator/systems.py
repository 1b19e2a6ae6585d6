"""System releases (issue 18): several stored payloads installed on a device as one.

A system release is a ``ReleaseRecord`` whose handler is ``system``, whose ``components``
list each component's name, handler, SHA-256 and size in installation order, and whose own
payload (``sha256``, ``size``) is the components' manifest
(``fleetpush_protocol.components.system_manifest``), stored content-addressed like any
payload and served at a signed URL like one. Component payloads are uploaded first
(``POST /v1/payloads``), each checked for its handler as a release's payload is; the
release then names them by hash (``POST /v1/systems``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import Meta

from fleetpush_common.config import Name
from fleetpush_protocol.components import (
    COMPONENT_NAME_PATTERN,
    MAX_COMPONENTS,
    Component,
    system_manifest,
)
from orchestrator.payloads import PayloadError, PayloadStore, check_tar
from orchestrator.store import ReleaseRecord

__all__ = [
    "NewComponent",
    "NewSystem",
    "SystemReleaseError",
    "notice_components",
    "pinned_components",
    "store_manifest",
]

Handler = Literal["directory", "command"]
Sha256Hex = Annotated[str, Meta(pattern=r"\A[0-9a-f]{64}\Z")]


class SystemReleaseError(ValueError):
    """The system release cannot be made as asked (the message says why: a 400)."""


class NewComponent(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[str, Meta(pattern=COMPONENT_NAME_PATTERN)]
    handler: Handler
    sha256: Sha256Hex  # of a payload uploaded with POST /v1/payloads


class NewSystem(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``POST /v1/systems``: a release made of stored payloads, installed in this order."""

    missing_hints: ClassVar[dict[str, str]] = {
        "components": "a list of {name, handler, sha256}, in installation order"
    }

    name: Name
    version: Annotated[str, Meta(min_length=1, max_length=128)]
    models: Annotated[tuple[Name, ...], Meta(max_length=1000)] = ()
    meta: Annotated[dict[str, str], Meta(max_length=64)] = {}
    components: Annotated[tuple[NewComponent, ...], Meta(min_length=1, max_length=MAX_COMPONENTS)]

    def __post_init__(self) -> None:
        if not self.version.isprintable():  # it reaches devices' environments and terminals
            raise ValueError("version: printable characters only (no control characters)")
        names = [c.name for c in self.components]
        if len(set(names)) != len(names):
            raise ValueError("components: duplicate names")


@dataclass(frozen=True, slots=True)
class _Pin:
    name: str
    handler: str
    sha256: bytes
    size: int


def _pins(components: tuple[dict[str, Any], ...]) -> list[_Pin]:
    return [_Pin(c["name"], c["handler"], bytes.fromhex(c["sha256"]), int(c["size"]))
            for c in components]  # fmt: skip


async def pinned_components(payloads: PayloadStore, body: NewSystem) -> tuple[dict[str, Any], ...]:
    """Each component with the size of its stored payload; a ``directory`` component's
    payload is read as the device will unpack it.

    Raises:
        SystemReleaseError: a payload is not stored, or does not suit its handler.
    """
    out = []
    for c in body.components:
        if not payloads.exists(c.sha256):
            raise SystemReleaseError(
                f"component {c.name!r}: no payload {c.sha256[:16]}... is stored; upload it "
                "first (POST /v1/payloads)"
            )
        path = payloads.path(c.sha256)
        if c.handler == "directory":
            try:
                await asyncio.to_thread(check_tar, path)
            except PayloadError as e:
                raise SystemReleaseError(
                    f"component {c.name!r}: handler 'directory' unpacks a tar archive and "
                    f"this is {e}"
                ) from None
        size = path.stat().st_size
        out.append({"name": c.name, "handler": c.handler, "sha256": c.sha256, "size": size})
    return tuple(out)


async def store_manifest(
    payloads: PayloadStore, components: tuple[dict[str, Any], ...]
) -> tuple[str, int]:
    """Store the components' manifest as a payload; ``(sha256 hex, size)``."""
    data = system_manifest(_pins(components))

    async def chunks() -> AsyncIterator[bytes]:
        yield data

    return await payloads.store_stream(chunks(), len(data))


def notice_components(
    release: ReleaseRecord, urls: Callable[[str], tuple[str, ...]]
) -> tuple[Component, ...]:
    """The notice's ``components``: each pinned as stored, on the URLs ``urls`` gives."""
    return tuple(
        Component(
            name=c["name"],
            handler=c["handler"],
            sha256=bytes.fromhex(c["sha256"]),
            size=int(c["size"]),
            urls=urls(c["sha256"]),
        )
        for c in release.components
    )
