"""Every error fleetpush raises, in two families.

    FleetpushError
    ├── ContentError           bad content: never retried, always reported
    │   ├── DecodeError            malformed / oversized / non-canonical bytes
    │   ├── FormatError            unknown message type or format version
    │   ├── SignatureError         missing, unknown key, revoked, invalid, below threshold
    │   ├── KeyringError           rotation rules broken, too many rotations, gaps,
    │   │                          too many revoked keys to remember
    │   ├── FreshnessError         expired, rollback, duplicate, sequence conflict
    │   ├── TargetingError         not addressed to this device / model / version / size
    │   ├── PayloadError           hash or size mismatch of a downloaded payload
    │   └── WrongDeviceError       a device-sent message speaking for another device
    └── TransportError         broker or HTTP trouble: retried with jittered backoff

Each concrete content error has a stable ``code`` string; codes are part of the wire
protocol (they travel in ``rejected`` and ``failed`` reports) and never change meaning.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "BadSignatureError",
    "BelowThresholdError",
    "ContentError",
    "DecodeError",
    "DuplicateMessageError",
    "DuplicateSignatureError",
    "ExpiredError",
    "FleetpushError",
    "FormatError",
    "FreshnessError",
    "KeyNotValidError",
    "KeyRevokedError",
    "KeyringError",
    "KeyringGapError",
    "MalformedError",
    "NotAddressedError",
    "OversizedError",
    "PayloadError",
    "PayloadHashMismatchError",
    "PayloadSizeMismatchError",
    "PayloadTooLargeError",
    "RollbackError",
    "RotationNotSignedByNewRootError",
    "RotationNotSignedByOldRootError",
    "SequenceConflictError",
    "SignatureError",
    "SignatureMissingError",
    "TargetingError",
    "TooManyRevocationsError",
    "TooManyRotationsError",
    "TransportError",
    "UnexpectedTypeError",
    "UnknownKeyError",
    "UnknownTypeError",
    "UnsupportedFormatError",
    "VersionMismatchError",
    "WrongDeviceError",
    "WrongModelError",
    "error_codes",
]


class FleetpushError(Exception):
    """Root of every fleetpush error."""


class ContentError(FleetpushError):
    """The bytes are wrong; retrying cannot help. Always reported, never retried."""

    code: ClassVar[str] = "content_error"


class TransportError(FleetpushError):
    """The broker or an HTTP server misbehaved; the operation may be retried."""

    code: ClassVar[str] = "transport_error"


# --- 1. decoding -------------------------------------------------------------------------


class DecodeError(ContentError):
    code = "malformed"


class OversizedError(DecodeError):
    code = "oversized"


class MalformedError(DecodeError):
    code = "malformed"


# --- 2. type and format ------------------------------------------------------------------


class FormatError(ContentError):
    code = "unsupported_format"


class UnsupportedFormatError(FormatError):
    code = "unsupported_format"


class UnknownTypeError(FormatError):
    code = "unknown_type"


class UnexpectedTypeError(FormatError):
    code = "unexpected_type"


# --- 3. signatures -----------------------------------------------------------------------


class SignatureError(ContentError):
    code = "signature_error"


class SignatureMissingError(SignatureError):
    code = "signature_missing"


class DuplicateSignatureError(SignatureError):
    code = "duplicate_signature"


class KeyRevokedError(SignatureError):
    code = "key_revoked"


class UnknownKeyError(SignatureError):
    code = "unknown_key"


class KeyNotValidError(SignatureError):
    code = "key_not_valid"


class BadSignatureError(SignatureError):
    code = "bad_signature"


class BelowThresholdError(SignatureError):
    code = "below_threshold"


# --- keyring rotation --------------------------------------------------------------------


class KeyringError(ContentError):
    code = "keyring_error"


class RotationNotSignedByOldRootError(KeyringError):
    code = "rotation_unsigned_old_root"


class RotationNotSignedByNewRootError(KeyringError):
    code = "rotation_unsigned_new_root"


class KeyringGapError(KeyringError):
    code = "keyring_gap"


class TooManyRotationsError(KeyringError):
    code = "too_many_rotations"


class TooManyRevocationsError(KeyringError):
    """Accepting the keyring would push the device's revoked-key memory past its limit."""

    code = "too_many_revocations"


# --- 4. freshness ------------------------------------------------------------------------


class FreshnessError(ContentError):
    code = "freshness_error"


class ExpiredError(FreshnessError):
    code = "expired"


class RollbackError(FreshnessError):
    code = "rollback"


class DuplicateMessageError(FreshnessError):
    """Same sequence, same bytes: a QoS 1 redelivery or a retained copy. Drivers ignore it."""

    code = "duplicate"


class SequenceConflictError(FreshnessError):
    code = "sequence_conflict"


# --- 5. targeting ------------------------------------------------------------------------


class TargetingError(ContentError):
    """An authentic, fresh message that is not for this device.

    ``message`` carries the verified message and ``digest`` the SHA-256 of its body, so
    that a driver can record its sequence (and so treat later redeliveries as duplicates)
    before reporting the rejection.
    """

    code = "targeting_error"

    def __init__(self, text: str, message: Any = None, digest: bytes = b"") -> None:
        super().__init__(text)
        self.message = message
        self.digest = digest


class NotAddressedError(TargetingError):
    code = "not_addressed"


class WrongModelError(TargetingError):
    code = "wrong_model"


class VersionMismatchError(TargetingError):
    code = "version_mismatch"


class PayloadTooLargeError(TargetingError):
    code = "payload_too_large"


# --- downloaded payloads -----------------------------------------------------------------


class PayloadError(ContentError):
    code = "payload_error"


class PayloadHashMismatchError(PayloadError):
    code = "hash_mismatch"


class PayloadSizeMismatchError(PayloadError):
    code = "size_mismatch"


# --- device-sent messages ----------------------------------------------------------------


class WrongDeviceError(ContentError):
    """A report, presence or inventory whose ``device_id`` is not its topic's device."""

    code = "wrong_device"


def _leaves(cls: type[ContentError]) -> list[type[ContentError]]:
    out: list[type[ContentError]] = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_leaves(sub))
    return out


def error_codes() -> dict[str, type[ContentError]]:
    """Map each stable error code to the most specific class that raises it."""
    codes: dict[str, type[ContentError]] = {}
    for cls in _leaves(ContentError):
        codes[cls.code] = cls
    return codes
