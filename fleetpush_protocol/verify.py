"""The verifier: pure functions from bytes to verified messages. They always raise.

Notices and cancels are checked in this order (docs/protocol.md, "Verification"); the
first failing step raises, with the error code after the arrow:

1. decode: size limit, msgpack, canonical form, envelope shape -> oversized, malformed
2. format version and type tag -> unsupported_format, unknown_type, unexpected_type
3. body fields (types, bounds) -> malformed
4. signatures against the trusted keyring: none -> signature_missing; the same key twice
   -> duplicate_signature; a revoked key -> key_revoked; a key not in the keyring
   -> unknown_key; a key outside its window -> key_not_valid; an invalid signature
   -> bad_signature; fewer signatures than the threshold -> below_threshold
5. expiry against max(device clock, highest trusted time), with grace -> expired
6. sequence in the message's scope: lower -> rollback; equal with the same body
   -> duplicate; equal with another body -> sequence_conflict
7. targeting: scope, device or group -> not_addressed; model -> wrong_model; current
   version -> version_mismatch
8. payload size (a system notice: its components' sum) against the device's limit
   (notices only) -> payload_too_large

Deciding that a duplicate is normal is the driver's job (``driver.py``), not this one's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from fleetpush_protocol.components import notice_bytes
from fleetpush_protocol.envelope import (
    MAX_MESSAGE_BYTES,
    SIGNING_CONTEXT,
    Envelope,
    decode_envelope,
    parse,
)
from fleetpush_protocol.errors import (
    BadSignatureError,
    BelowThresholdError,
    DuplicateMessageError,
    DuplicateSignatureError,
    ExpiredError,
    KeyNotValidError,
    KeyRevokedError,
    KeyringGapError,
    MalformedError,
    NotAddressedError,
    PayloadTooLargeError,
    RollbackError,
    RotationNotSignedByNewRootError,
    RotationNotSignedByOldRootError,
    SequenceConflictError,
    SignatureMissingError,
    TargetingError,
    TooManyRevocationsError,
    TooManyRotationsError,
    UnexpectedTypeError,
    UnknownKeyError,
    VersionMismatchError,
    WrongModelError,
)
from fleetpush_protocol.keys import verify_signature
from fleetpush_protocol.messages import (
    CancelNotice,
    Keyring,
    Message,
    SupportPeriods,
    UpdateNotice,
)
from fleetpush_protocol.topics import device_scope, group_scope

__all__ = [
    "DeviceIdentity",
    "SeenSequence",
    "TrustedKeyring",
    "Verified",
    "VerifyPolicy",
    "verify_keyring",
    "verify_keyring_chain",
    "verify_notice",
    "verify_support",
]

M = TypeVar("M", bound=Message)


@dataclass(frozen=True, slots=True)
class VerifyPolicy:
    """Device-side limits. Every bound has a unit and a sane range."""

    max_message_bytes: int = MAX_MESSAGE_BYTES  # bytes
    max_payload_bytes: int = 1 << 30  # bytes; the device's [download] default too
    clock_skew_s: int = 300  # seconds of grace on expiry and key windows
    max_rotations: int = 64  # keyring versions applied in one go
    max_revoked_keys: int = 4096  # keys remembered as revoked, forever; 32 bytes each

    def __post_init__(self) -> None:
        if not 1024 <= self.max_message_bytes <= 1 << 24:
            raise ValueError("max_message_bytes must be 1 KiB..16 MiB")
        if not 0 <= self.max_payload_bytes <= 1 << 48:
            raise ValueError("max_payload_bytes must be 0..256 TiB")
        if not 0 <= self.clock_skew_s <= 86400:
            raise ValueError("clock_skew_s must be 0..86400 seconds")
        if not 1 <= self.max_rotations <= 1024:
            raise ValueError("max_rotations must be 1..1024")
        if not 1 <= self.max_revoked_keys <= 65536:
            raise ValueError("max_revoked_keys must be 1..65536")


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    device_id: str
    model: str
    groups: frozenset[str]
    current_version: str
    # The scopes this device accepts notices in; computed once, checked on every notice.
    scopes: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        scopes = {device_scope(self.device_id), *(group_scope(g) for g in self.groups)}
        object.__setattr__(self, "scopes", frozenset(scopes))


@dataclass(frozen=True, slots=True)
class SeenSequence:
    """The last accepted sequence of a scope and the SHA-256 of that message's body."""

    seq: int
    digest: bytes


@dataclass(frozen=True, slots=True)
class TrustedKeyring:
    """The keyring a device trusts now; version 0 is the built-in root-only anchor.

    ``revoked`` is every signing key any trusted keyring ever revoked, this one's included:
    a later keyring that forgets a revocation (or lists the key again) cannot revive it.
    """

    keyring: Keyring
    digest: bytes  # SHA-256 of the verified body; empty for the anchor
    revoked: frozenset[bytes] = frozenset()

    def __post_init__(self) -> None:
        if not self.revoked.issuperset(self.keyring.revoked):
            object.__setattr__(self, "revoked", self.revoked.union(self.keyring.revoked))

    def then(self, verified: Verified[Keyring]) -> TrustedKeyring:
        """The trust after ``verified`` (the next version): its revocations are added."""
        return TrustedKeyring(verified.message, verified.digest, self.revoked)

    @classmethod
    def anchor(cls, root_keys: Sequence[bytes], threshold: int = 1) -> TrustedKeyring:
        if not root_keys or not 1 <= threshold <= len(root_keys):
            raise ValueError("need at least one root key and 1 <= threshold <= len(keys)")
        if len(set(root_keys)) != len(root_keys) or any(len(k) != 32 for k in root_keys):
            raise ValueError("root keys must be distinct 32-byte Ed25519 public keys")
        ring = Keyring(
            version=0,
            root_keys=tuple(root_keys),
            root_threshold=threshold,
            signing_keys=(),
            signing_threshold=1,
            revoked=(),
            issued_at=0,
        )
        return cls(keyring=ring, digest=b"")


@dataclass(frozen=True, slots=True)
class Verified(Generic[M]):
    message: M
    digest: bytes  # SHA-256 of the body bytes


def _decode(data: bytes, max_bytes: int, expected: tuple[str, ...]) -> tuple[Envelope, Message]:
    env = decode_envelope(data, max_bytes=max_bytes)
    if env.type not in expected:
        raise UnexpectedTypeError(f"expected {' or '.join(expected)}, got {env.type!r}")
    return env, parse(env)


def _check_notice_signatures(
    env: Envelope, trusted: TrustedKeyring, issued_at: int, now: int, skew: int
) -> None:
    ring = trusted.keyring
    sigs = env.signatures
    if not sigs:
        raise SignatureMissingError("the message carries no signature")
    if len(sigs) > 1 and len({s.key for s in sigs}) != len(sigs):
        raise DuplicateSignatureError("the same key signed twice; each key counts once")
    for s in sigs:
        if s.key in trusted.revoked:
            raise KeyRevokedError(f"signed by revoked key {s.key.hex()[:16]}")
    infos = []
    for s in sigs:
        info = ring.signing_key(s.key)
        if info is None:
            raise UnknownKeyError(
                f"signed by key {s.key.hex()[:16]}, not in keyring v{ring.version}"
            )
        infos.append(info)
    for info in infos:
        # The device clock is only trusted to be late, never early: a clock far behind
        # (no RTC) must not brick the device, a clock pushed ahead only makes it stricter.
        if not info.not_before <= issued_at <= info.not_after or now > info.not_after + skew:
            raise KeyNotValidError(
                f"key {info.public_key.hex()[:16]} is valid {info.not_before}..{info.not_after}"
            )
    signed = SIGNING_CONTEXT + env.body
    for s in sigs:
        if not verify_signature(s.key, signed, s.sig):
            raise BadSignatureError(f"invalid signature by key {s.key.hex()[:16]}")
    if len(sigs) < ring.signing_threshold:
        raise BelowThresholdError(
            f"{len(sigs)} valid signature(s), {ring.signing_threshold} required"
        )


def verify_notice(
    data: bytes,
    *,
    keyring: TrustedKeyring,
    device: DeviceIdentity,
    seen: Mapping[str, SeenSequence],
    trusted_time: int,
    now: int,
    policy: VerifyPolicy,
) -> Verified[UpdateNotice | CancelNotice]:
    """Verify an update or cancel notice for ``device``; return it only if all checks pass.

    Args:
        data: the bytes received on a notice topic.
        keyring: the device's trusted keyring.
        device: who the device is and what it runs.
        seen: last accepted sequence per scope.
        trusted_time: highest ``issued_at`` the device has already trusted (Unix seconds).
        now: the device clock (Unix seconds), injected.
        policy: limits.

    Raises:
        ContentError: a subclass per failed step, in the module docstring's order.
        TargetingError: carries the authentic message on ``.message``.
    """
    env, msg = _decode(data, policy.max_message_bytes, (UpdateNotice.TYPE, CancelNotice.TYPE))
    assert isinstance(msg, UpdateNotice | CancelNotice)  # noqa: S101 - parse follows the tag
    if msg.expires_at < msg.issued_at:
        raise MalformedError("expires_at is before issued_at")
    effective_now = max(now, trusted_time)
    skew = policy.clock_skew_s
    _check_notice_signatures(env, keyring, msg.issued_at, effective_now, skew)
    if effective_now > msg.expires_at + skew:
        raise ExpiredError(f"expired at {msg.expires_at}, now {effective_now}")
    digest = hashlib.sha256(env.body).digest()
    last = seen.get(msg.scope)
    if last is not None:
        if msg.seq < last.seq:
            raise RollbackError(f"sequence {msg.seq} < last accepted {last.seq} in {msg.scope}")
        if msg.seq == last.seq:
            if digest == last.digest:
                raise DuplicateMessageError(f"sequence {msg.seq} in {msg.scope} already seen")
            raise SequenceConflictError(
                f"sequence {msg.seq} in {msg.scope} reused for other content"
            )
    target = msg.target

    def refuse(cls: type[TargetingError], text: str) -> TargetingError:
        return cls(text, msg, digest)

    if msg.scope not in device.scopes or not (
        device.device_id in target.devices or device.groups.intersection(target.groups)
    ):
        raise refuse(NotAddressedError, f"not addressed to {device.device_id} or its groups")
    if isinstance(msg, UpdateNotice):
        if target.models and device.model not in target.models:
            raise refuse(
                WrongModelError, f"for models {list(target.models)}, device is {device.model}"
            )
        if target.current_versions and device.current_version not in target.current_versions:
            raise refuse(
                VersionMismatchError,
                f"for current versions {list(target.current_versions)}, device runs "
                f"{device.current_version!r}",
            )
        if (size := notice_bytes(msg)) > policy.max_payload_bytes:
            raise refuse(
                PayloadTooLargeError,
                f"payload is {size} bytes, device limit is {policy.max_payload_bytes}",
            )
    return Verified(message=msg, digest=digest)


def verify_support(
    data: bytes, *, keyring: TrustedKeyring, last_issued_at: int, trusted_time: int,
    now: int, policy: VerifyPolicy,
) -> Verified[SupportPeriods]:  # fmt: skip
    """Verify the support periods (``{prefix}/support``): signed by the keyring's signing
    keys as a notice is, not expired, and newer than the last accepted (``rollback``
    otherwise; the same ``issued_at`` again is a ``duplicate``)."""
    env, msg = _decode(data, policy.max_message_bytes, (SupportPeriods.TYPE,))
    assert isinstance(msg, SupportPeriods)  # noqa: S101 - parse follows the tag
    if msg.expires_at < msg.issued_at:
        raise MalformedError("expires_at is before issued_at")
    effective_now = max(now, trusted_time)
    _check_notice_signatures(env, keyring, msg.issued_at, effective_now, policy.clock_skew_s)
    if effective_now > msg.expires_at + policy.clock_skew_s:
        raise ExpiredError(f"expired at {msg.expires_at}, now {effective_now}")
    if msg.issued_at < last_issued_at:
        raise RollbackError(f"issued {msg.issued_at}, older than the last ({last_issued_at})")
    if msg.issued_at == last_issued_at:
        raise DuplicateMessageError(f"support periods of {msg.issued_at} already seen")
    return Verified(msg, hashlib.sha256(env.body).digest())


def _count_valid(env: Envelope, keys: frozenset[bytes]) -> int:
    return sum(1 for s in env.signatures if s.key in keys)


def verify_keyring(
    data: bytes, *, trusted: TrustedKeyring, policy: VerifyPolicy
) -> Verified[Keyring]:
    """Verify the keyring that follows ``trusted`` (version exactly one higher).

    Order: decode, format and type, fields; version (rollback, duplicate, conflict, gap);
    signatures: none, the same key twice, a key that is neither an old nor a new root key,
    an invalid signature; then the thresholds of both the trusted root and the new root;
    last, the number of revoked keys the device would have to remember.

    Raises:
        ContentError: a subclass per failed step.
    """
    env, ring = _decode(data, policy.max_message_bytes, (Keyring.TYPE,))
    assert isinstance(ring, Keyring)  # noqa: S101 - parse follows the tag
    digest = hashlib.sha256(env.body).digest()
    current = trusted.keyring
    if ring.version < current.version:
        raise RollbackError(f"keyring version {ring.version} < trusted {current.version}")
    if ring.version == current.version:
        if digest == trusted.digest:
            raise DuplicateMessageError(f"keyring version {ring.version} already trusted")
        raise SequenceConflictError(f"keyring version {ring.version} reused for other content")
    if ring.version != current.version + 1:
        raise KeyringGapError(f"keyring version {ring.version} does not follow {current.version}")
    sigs = env.signatures
    if not sigs:
        raise SignatureMissingError("the keyring carries no signature")
    keys = [s.key for s in sigs]
    if len(set(keys)) != len(keys):
        raise DuplicateSignatureError("the same key signed twice; each key counts once")
    old_root = frozenset(current.root_keys)
    new_root = frozenset(ring.root_keys)
    for s in sigs:
        if s.key not in old_root and s.key not in new_root:
            raise UnknownKeyError(f"keyring signed by {s.key.hex()[:16]}, not a root key")
    signed = SIGNING_CONTEXT + env.body
    for s in sigs:
        if not verify_signature(s.key, signed, s.sig):
            raise BadSignatureError(f"invalid signature by key {s.key.hex()[:16]}")
    old_count = _count_valid(env, old_root)
    new_count = _count_valid(env, new_root)
    same_root = old_root == new_root and current.root_threshold == ring.root_threshold
    if same_root:
        if old_count < current.root_threshold:
            raise BelowThresholdError(
                f"{old_count} root signature(s), {current.root_threshold} required"
            )
    else:
        if old_count < current.root_threshold:
            raise RotationNotSignedByOldRootError(
                f"root rotation signed by {old_count} of the trusted root keys, "
                f"{current.root_threshold} required"
            )
        if new_count < ring.root_threshold:
            raise RotationNotSignedByNewRootError(
                f"root rotation signed by {new_count} of the new root keys, "
                f"{ring.root_threshold} required"
            )
    # Revocations are never forgotten, so their number is bounded by refusing the keyring
    # that would exceed it: the device stays on the keyring it has, every revocation kept.
    remembered = len(trusted.revoked.union(ring.revoked))
    if remembered > policy.max_revoked_keys:
        raise TooManyRevocationsError(
            f"keyring v{ring.version} would make {remembered} revoked keys to remember, "
            f"device limit {policy.max_revoked_keys}"
        )
    return Verified(message=ring, digest=digest)


def verify_keyring_chain(
    chain: Sequence[bytes], *, trusted: TrustedKeyring, policy: VerifyPolicy
) -> TrustedKeyring:
    """Apply consecutive keyrings in order; return the last one trusted.

    Raises:
        TooManyRotationsError: ``chain`` is longer than ``policy.max_rotations``.
        ContentError: the first keyring that fails; nothing after it is applied.
    """
    if len(chain) > policy.max_rotations:
        raise TooManyRotationsError(f"{len(chain)} keyrings, at most {policy.max_rotations}")
    for data in chain:
        verified = verify_keyring(data, trusted=trusted, policy=policy)
        trusted = trusted.then(verified)
    return trusted
