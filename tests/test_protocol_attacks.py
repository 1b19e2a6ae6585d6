"""Table-driven attacks on notice verification: each row must raise its exact error.

Rows follow python-tuf's style: a readable name, how the message is built, the device's
state, and the expected error class (None = accepted).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from msgspec.structs import replace

from fleetpush_protocol import errors
from fleetpush_protocol.envelope import decode_envelope, sign_message
from fleetpush_protocol.keys import KeyPair
from fleetpush_protocol.messages import Report, ReportState, Target, UpdateNotice
from fleetpush_protocol.verify import (
    DeviceIdentity,
    SeenSequence,
    TrustedKeyring,
    VerifyPolicy,
    verify_keyring_chain,
    verify_notice,
)
from fleetpush_sim.signing import (
    BASE_TIME,
    DAY,
    fixed_key,
    flip_signature_bit,
    make_cancel,
    make_keyring,
    make_notice,
    raw_envelope,
    tamper_body,
)

ROOT = fixed_key(1)
S1, S2, S3 = fixed_key(11), fixed_key(12), fixed_key(13)
EVIL = fixed_key(666)
DEVICE = DeviceIdentity("dev-1", "m1", frozenset({"g1"}), "1.0.0")


def _trust(*rings: bytes) -> TrustedKeyring:
    anchor = TrustedKeyring.anchor([ROOT.public_key])
    return verify_keyring_chain(list(rings), trusted=anchor, policy=VerifyPolicy())


RING1 = sign_message(make_keyring(1, [ROOT], [S1, S2]), [ROOT])
RING1_T2 = sign_message(make_keyring(1, [ROOT], [S1, S2], signing_threshold=2), [ROOT])
RING2_REVOKE = sign_message(make_keyring(2, [ROOT], [S1], revoked=[S2]), [ROOT])
SHORT_KEY = sign_message(
    make_keyring(1, [ROOT], [S1], not_before=BASE_TIME - DAY, not_after=BASE_TIME + DAY), [ROOT]
)


def body_digest(data: bytes) -> bytes:
    return hashlib.sha256(decode_envelope(data).body).digest()


def signed(notice: UpdateNotice | None = None, *keys: KeyPair) -> bytes:
    return sign_message(notice or make_notice(), keys or (S1,))


GOOD = signed()


@dataclass
class Row:
    build: Callable[[], bytes]
    error: type[errors.ContentError] | None
    ring: tuple[bytes, ...] = (RING1,)
    seen: dict[str, SeenSequence] = field(default_factory=dict)
    now: int = BASE_TIME + 60
    trusted_time: int = 0
    device: DeviceIdentity = DEVICE
    policy: VerifyPolicy = field(default_factory=VerifyPolicy)


ROWS: dict[str, Row] = {
    "valid notice": Row(lambda: GOOD, None),
    "valid cancel": Row(lambda: sign_message(make_cancel(), [S1]), None),
    "valid group notice": Row(
        lambda: signed(make_notice(scope="group/g1", target=Target(groups=("g1",)))), None
    ),
    "threshold 2 met by two keys": Row(
        lambda: signed(make_notice(), S1, S2), None, ring=(RING1_T2,)
    ),
    "oversized": Row(
        lambda: GOOD, errors.OversizedError, policy=VerifyPolicy(max_message_bytes=1024)
    )
    if len(GOOD) > 1024
    else Row(
        lambda: signed(make_notice(handler_args={"x": "y" * 2000})),
        errors.OversizedError,
        policy=VerifyPolicy(max_message_bytes=1024),
    ),
    "garbage": Row(lambda: b"\x00\x01garbage", errors.MalformedError),
    "empty": Row(lambda: b"", errors.MalformedError),
    "truncated": Row(lambda: GOOD[:-3], errors.MalformedError),
    "unknown type": Row(lambda: tamper_body(GOOD, type="firmware"), errors.UnknownTypeError),
    "future format": Row(lambda: tamper_body(GOOD, format=2), errors.UnsupportedFormatError),
    "report on a notice topic": Row(
        lambda: sign_message(
            Report(
                device_id="dev-1",
                notice_id="n",
                rollout_id="r",
                state=ReportState.SUCCEEDED,
                current_version="2",
                counter=1,
                reported_at=BASE_TIME,
            ),
            [S1],
        ),
        errors.UnexpectedTypeError,
    ),
    "keyring on a notice topic": Row(lambda: RING1, errors.UnexpectedTypeError),
    "unsigned (compromised broker, no key)": Row(
        lambda: sign_message(make_notice(), []), errors.SignatureMissingError
    ),
    "forged by broker client with its own key": Row(
        lambda: signed(make_notice(), EVIL), errors.UnknownKeyError
    ),
    "root key signs a notice": Row(lambda: signed(make_notice(), ROOT), errors.UnknownKeyError),
    "one good one unknown signature": Row(
        lambda: signed(make_notice(), S1, EVIL), errors.UnknownKeyError
    ),
    "same key counted twice": Row(
        lambda: raw_envelope(make_notice().to_body(), [S1, S1]),
        errors.DuplicateSignatureError,
        ring=(RING1_T2,),
    ),
    "below threshold": Row(lambda: GOOD, errors.BelowThresholdError, ring=(RING1_T2,)),
    "revoked signing key": Row(
        lambda: signed(make_notice(), S2), errors.KeyRevokedError, ring=(RING1, RING2_REVOKE)
    ),
    "revoked key beside a good one": Row(
        lambda: signed(make_notice(), S1, S2), errors.KeyRevokedError, ring=(RING1, RING2_REVOKE)
    ),
    "issued after key window": Row(
        lambda: signed(make_notice(issued_at=BASE_TIME + 2 * DAY, expires_at=BASE_TIME + 3 * DAY)),
        errors.KeyNotValidError,
        ring=(SHORT_KEY,),
        now=BASE_TIME + 2 * DAY,
    ),
    "key expired at verification": Row(
        lambda: signed(make_notice(expires_at=BASE_TIME + 30 * DAY)),
        errors.KeyNotValidError,
        ring=(SHORT_KEY,),
        now=BASE_TIME + 3 * DAY,
    ),
    "bit flip in signature": Row(
        lambda: flip_signature_bit(GOOD),
        errors.BadSignatureError,
    ),
    "mix-and-match: new target under old signature": Row(
        lambda: tamper_body(GOOD, target=Target(groups=("g1",)).to_body()),
        errors.BadSignatureError,
    ),
    "swapped payload hash under old signature": Row(
        lambda: tamper_body(
            GOOD, payload={"urls": ["https://evil"], "size": 1, "sha256": b"\x01" * 32}
        ),
        errors.BadSignatureError,
    ),
    "freeze: expired": Row(lambda: GOOD, errors.ExpiredError, now=BASE_TIME + 8 * DAY),
    "freeze: clock rolled back below trusted time": Row(
        lambda: GOOD, errors.ExpiredError, now=BASE_TIME, trusted_time=BASE_TIME + 8 * DAY
    ),
    "expiry inside grace": Row(lambda: GOOD, None, now=BASE_TIME + 7 * DAY + 200),
    "device clock at zero (no RTC)": Row(lambda: GOOD, None, now=0),
    "rollback to an older sequence": Row(
        lambda: signed(make_notice(seq=3)),
        errors.RollbackError,
        seen={"device/dev-1": SeenSequence(4, b"\x00" * 32)},
    ),
    "replay of the same notice": Row(
        lambda: GOOD,
        errors.DuplicateMessageError,
        seen={"device/dev-1": SeenSequence(1, body_digest(GOOD))},
    ),
    "same sequence, other content": Row(
        lambda: signed(make_notice(handler="command")),
        errors.SequenceConflictError,
        seen={"device/dev-1": SeenSequence(1, body_digest(GOOD))},
    ),
    "sequences are per scope": Row(
        lambda: signed(make_notice(scope="group/g1", target=Target(groups=("g1",)))),
        None,
        seen={"device/dev-1": SeenSequence(9, b"\x00" * 32)},
    ),
    "another device's notice": Row(lambda: signed(make_notice("dev-2")), errors.NotAddressedError),
    "lists us but in another device's scope": Row(
        lambda: signed(make_notice(scope="device/dev-2")), errors.NotAddressedError
    ),
    "another group": Row(
        lambda: signed(make_notice(scope="group/g2", target=Target(groups=("g2",)))),
        errors.NotAddressedError,
    ),
    "another model": Row(
        lambda: signed(make_notice(target=Target(devices=("dev-1",), models=("m9",)))),
        errors.WrongModelError,
    ),
    "wrong current version": Row(
        lambda: signed(make_notice(target=Target(devices=("dev-1",), current_versions=("0.1",)))),
        errors.VersionMismatchError,
    ),
    "payload above the device limit": Row(
        lambda: signed(make_notice(payload=b"x" * 5000)),
        errors.PayloadTooLargeError,
        policy=VerifyPolicy(max_payload_bytes=4096),
    ),
}


@pytest.mark.parametrize("name", list(ROWS))
def test_notice_attack(name: str) -> None:
    row = ROWS[name]
    kwargs = {
        "keyring": _trust(*row.ring),
        "device": row.device,
        "seen": row.seen,
        "trusted_time": row.trusted_time,
        "now": row.now,
        "policy": row.policy,
    }
    data = row.build()
    if row.error is None:
        verified = verify_notice(data, **kwargs)  # type: ignore[arg-type]
        assert verified.digest == body_digest(data)
        return
    with pytest.raises(row.error) as caught:
        verify_notice(data, **kwargs)  # type: ignore[arg-type]
    # The exact class, not a sibling that happens to share a base.
    assert type(caught.value) is row.error
    assert caught.value.code == row.error.code


def test_targeting_errors_carry_the_authentic_message() -> None:
    with pytest.raises(errors.NotAddressedError) as caught:
        verify_notice(
            signed(make_notice("dev-2")),
            keyring=_trust(RING1),
            device=DEVICE,
            seen={},
            trusted_time=0,
            now=BASE_TIME,
            policy=VerifyPolicy(),
        )
    assert isinstance(caught.value.message, UpdateNotice)
    assert caught.value.message.target.devices == ("dev-2",)


def test_every_verification_error_code_is_exercised() -> None:
    raised = {row.error.code for row in ROWS.values() if row.error is not None}
    notice_codes = {
        "oversized", "malformed", "unknown_type", "unsupported_format", "unexpected_type",
        "signature_missing", "unknown_key", "duplicate_signature", "below_threshold",
        "key_revoked", "key_not_valid", "bad_signature", "expired", "rollback", "duplicate",
        "sequence_conflict", "not_addressed", "wrong_model", "version_mismatch",
        "payload_too_large",
    }  # fmt: skip
    assert notice_codes <= raised


def test_verify_policy_bounds() -> None:
    with pytest.raises(ValueError, match="clock_skew_s"):
        VerifyPolicy(clock_skew_s=10**6)
    with pytest.raises(ValueError, match="max_message_bytes"):
        VerifyPolicy(max_message_bytes=10)


def test_notice_expiring_before_issue_is_malformed() -> None:
    bad = signed(replace(make_notice(), expires_at=BASE_TIME - 1))
    with pytest.raises(errors.MalformedError):
        verify_notice(
            bad,
            keyring=_trust(RING1),
            device=DEVICE,
            seen={},
            trusted_time=0,
            now=BASE_TIME,
            policy=VerifyPolicy(),
        )
