"""Test support for delta payloads: releases that differ a little, and signed notices that
list a delta (the orchestrator's NoticeFactory does the same in production)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import msgspec

from fleetpush_protocol import delta as codec
from fleetpush_protocol.envelope import sign_message
from fleetpush_protocol.messages import Delta, UpdateNotice
from fleetpush_protocol.topics import Topics
from fleetpush_sim.release import make_tar
from fleetpush_sim.signing import Signer

__all__ = ["delta_entry", "delta_notice", "releases"]


def releases(size: int = 200_000) -> tuple[bytes, bytes]:
    """Two consecutive releases: the same large file, a few bytes changed, a new VERSION."""
    blob = bytearray(os.urandom(size))
    v1 = make_tar({"VERSION": b"1.0.0\n", "lib/data.bin": bytes(blob)})
    blob[size // 2 : size // 2 + 16] = b"security fix 2.0"
    v2 = make_tar({"VERSION": b"2.0.0\n", "lib/data.bin": bytes(blob)})
    return v1, v2


def delta_entry(base: bytes, patch: bytes, urls: Sequence[str], **changes: object) -> Delta:
    entry = Delta(
        base_sha256=hashlib.sha256(base).digest(),
        method=codec.METHOD,
        sha256=hashlib.sha256(patch).digest(),
        size=len(patch),
        urls=tuple(urls),
    )
    return msgspec.structs.replace(entry, **changes)


def delta_notice(
    signer: Signer,
    device_id: str,
    payload: bytes,
    urls: Sequence[str],
    deltas: Sequence[Delta],
    *,
    topics: Topics,
    version: str = "2.0.0",
) -> tuple[UpdateNotice, bytes]:
    """A signed notice of ``payload`` that lists ``deltas``."""
    notice, _ = signer.notice(device_id, payload, urls, topics=topics, version=version)
    notice = msgspec.structs.replace(notice, deltas=tuple(deltas))
    return notice, sign_message(notice, [signer.signing])
