"""Keys and message builders for tests, test vectors, benchmarks and integrators.

``fixed_key`` and the ``make_*`` builders are deterministic (never use those keys outside
tests: their seeds are public). ``Signer`` is a live test operator: fresh keys, messages
signed for "now" by its clock, a notice sequence per scope.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from msgspec.structs import replace

from fleetpush_protocol import canonical
from fleetpush_protocol.envelope import SIGNING_CONTEXT, sign_message
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
from fleetpush_protocol.topics import DEFAULT_PREFIX, Topics

__all__ = [
    "BASE_TIME",
    "DAY",
    "Signer",
    "fixed_key",
    "flip_signature_bit",
    "make_cancel",
    "make_keyring",
    "make_notice",
    "raw_envelope",
    "tamper_body",
]

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


@dataclass
class Signer:
    """A test operator: a root key, a signing key, keyring v1, and a notice sequence per scope.

    Messages are issued at ``clock()`` (wall time by default) and valid for a day, so a real
    device agent accepts them.
    """

    root: KeyPair = field(default_factory=KeyPair.generate)
    signing: KeyPair = field(default_factory=KeyPair.generate)
    seqs: dict[str, int] = field(default_factory=dict)
    clock: Callable[[], float] = time.time

    @property
    def root_hex(self) -> str:
        return self.root.public_key.hex()

    def keyring(self, version: int = 1, *, signers: Iterable[KeyPair] | None = None) -> bytes:
        now = int(self.clock())
        keys = list(signers) if signers is not None else [self.signing]
        ring = Keyring(
            version=version,
            root_keys=(self.root.public_key,),
            root_threshold=1,
            signing_keys=tuple(
                SigningKeyInfo(
                    public_key=k.public_key, not_before=now - DAY, not_after=now + 365 * DAY
                )
                for k in keys
            ),
            signing_threshold=1,
            revoked=(),
            issued_at=now - 60,
        )
        return sign_message(ring, [self.root])

    def next_seq(self, scope: str) -> int:
        self.seqs[scope] = self.seqs.get(scope, 0) + 1
        return self.seqs[scope]

    def notice(
        self,
        device_id: str,
        payload: bytes,
        urls: Sequence[str],
        *,
        version: str = "2.0.0",
        notice_id: str | None = None,
        rollout_id: str = "r-1",
        handler: str = "directory",
        scope: str | None = None,
        targets: tuple[str, ...] | None = None,
        groups: tuple[str, ...] = (),
        seq: int | None = None,
        key: KeyPair | None = None,
        size: int | None = None,
        topics: Topics | None = None,
        **fields: Any,
    ) -> tuple[UpdateNotice, bytes]:
        """A notice of ``payload`` for ``device_id`` (or ``targets`` and ``groups``), signed;
        ``fields`` sets other notice fields (``update_class``, ``advisory``...)."""
        scope = scope or f"device/{device_id}"
        seq = seq if seq is not None else self.next_seq(scope)
        now = int(self.clock())
        prefix = topics.prefix if topics else DEFAULT_PREFIX
        notice = UpdateNotice(
            notice_id=notice_id or f"n-{device_id}-{seq}",
            rollout_id=rollout_id,
            release=Release(name="app", version=version),
            payload=Payload(
                urls=tuple(urls),
                size=len(payload) if size is None else size,
                sha256=hashlib.sha256(payload).digest(),
            ),
            handler=handler,
            handler_args={},
            target=Target(devices=targets if targets is not None else (device_id,), groups=groups),
            issued_at=now,
            expires_at=now + DAY,
            scope=scope,
            seq=seq,
            reply_topic=f"{prefix}/device/{{device_id}}/report",
            **fields,
        )
        return notice, sign_message(notice, [key or self.signing])

    def cancel(self, device_id: str, rollout_id: str = "r-1") -> bytes:
        """A signed cancel of ``rollout_id`` for ``device_id``."""
        scope = f"device/{device_id}"
        seq = self.next_seq(scope)
        now = int(self.clock())
        cancel = CancelNotice(
            notice_id=f"c-{device_id}-{seq}",
            rollout_id=rollout_id,
            target=Target(devices=(device_id,)),
            issued_at=now,
            expires_at=now + DAY,
            scope=scope,
            seq=seq,
            reply_topic="unused",
        )
        return sign_message(cancel, [self.signing])


# --- crafting invalid messages (attack tests and test vectors) ---------------------------

_ANY_SIZE = 1 << 24


def raw_envelope(body: Mapping[str, Any], signers: Sequence[KeyPair]) -> bytes:
    """Sign an arbitrary body map (unknown fields, wrong types...) with each of ``signers``;
    the same key twice gives the same signature twice."""
    encoded = canonical.encode(body)
    sigs = [{"key": k.public_key, "sig": k.sign(SIGNING_CONTEXT + encoded)} for k in signers]
    return canonical.encode({"body": encoded, "signatures": sigs})


def tamper_body(data: bytes, **changes: Any) -> bytes:
    """Change body fields but keep the original signatures (a man-in-the-middle edit)."""
    outer = canonical.decode(data, max_bytes=_ANY_SIZE)
    body = canonical.decode(outer["body"], max_bytes=_ANY_SIZE)
    body.update(changes)
    outer["body"] = canonical.encode(body)
    return canonical.encode(outer)


def flip_signature_bit(data: bytes, *, byte: int = 0) -> bytes:
    """Flip the lowest bit of one byte of the first signature."""
    outer = canonical.decode(data, max_bytes=_ANY_SIZE)
    sig = bytearray(outer["signatures"][0]["sig"])
    sig[byte] ^= 0x01
    outer["signatures"][0]["sig"] = bytes(sig)
    return canonical.encode(outer)
