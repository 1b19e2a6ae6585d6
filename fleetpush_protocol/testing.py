"""Deterministic keys and message builders for tests, test vectors and integrators.

Never use these keys outside tests: their seeds are public.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from msgspec.structs import replace

from fleetpush_protocol.keys import KeyPair
from fleetpush_protocol.messages import (
    CancelNotice,
    Keyring,
    Payload,
    Release,
    SigningKeyInfo,
    Target,
    UpdateNotice,
)

__all__ = ["BASE_TIME", "DAY", "make_cancel", "make_keyring", "make_notice", "fixed_key"]

BASE_TIME = 1_800_000_000  # 2027-01-15T08:00:00Z, a fixed "now" for vectors
DAY = 86_400


def fixed_key(n: int) -> KeyPair:
    """Test key number ``n``, derived from a public seed."""
    return KeyPair.from_seed(hashlib.sha256(f"fleetpush test key {n}".encode()).digest())


def make_keyring(
    version: int,
    roots: Sequence[KeyPair],
    signers: Sequence[KeyPair],
    *,
    root_threshold: int = 1,
    signing_threshold: int = 1,
    revoked: Sequence[KeyPair] = (),
    not_before: int = BASE_TIME - 30 * DAY,
    not_after: int = BASE_TIME + 365 * DAY,
    issued_at: int = BASE_TIME - DAY,
) -> Keyring:
    return Keyring(
        version=version,
        root_keys=tuple(k.public_key for k in roots),
        root_threshold=root_threshold,
        signing_keys=tuple(
            SigningKeyInfo(public_key=k.public_key, not_before=not_before, not_after=not_after)
            for k in signers
        ),
        signing_threshold=signing_threshold,
        revoked=tuple(k.public_key for k in revoked),
        issued_at=issued_at,
    )


def make_notice(
    device_id: str = "dev-1",
    *,
    seq: int = 1,
    payload: bytes = b"fleetpush test payload\n",
    **changes: Any,
) -> UpdateNotice:
    """A valid notice for ``device_id`` issued at BASE_TIME; ``changes`` override fields."""
    notice = UpdateNotice(
        notice_id=f"n-{device_id}-{seq}",
        rollout_id="r-1",
        release=Release(name="app", version="2.0.0"),
        payload=Payload(
            urls=("https://updates.example.com/p/app-2.0.0.tar",),
            size=len(payload),
            sha256=hashlib.sha256(payload).digest(),
        ),
        handler="directory",
        handler_args={},
        target=Target(devices=(device_id,)),
        issued_at=BASE_TIME,
        expires_at=BASE_TIME + 7 * DAY,
        scope=f"device/{device_id}",
        seq=seq,
        reply_topic=f"fleetpush/device/{device_id}/report",
    )
    return replace(notice, **changes)


def make_cancel(device_id: str = "dev-1", *, seq: int = 2, **changes: Any) -> CancelNotice:
    cancel = CancelNotice(
        notice_id=f"c-{device_id}-{seq}",
        rollout_id="r-1",
        target=Target(devices=(device_id,)),
        issued_at=BASE_TIME,
        expires_at=BASE_TIME + 7 * DAY,
        scope=f"device/{device_id}",
        seq=seq,
        reply_topic=f"fleetpush/device/{device_id}/report",
    )
    return replace(cancel, **changes)
