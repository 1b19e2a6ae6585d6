"""Keyring rotations, in python-tuf's table style: each row is a chain of versions.

``KeyringVersion(roots, threshold, sigs, error)``: the version's root keys and threshold,
which key numbers sign it, and the error expected when a device applies it (None = ok).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from fleetpush_protocol import errors
from fleetpush_protocol.driver import DeviceTrust, Ignored, KeyringAccepted, Rejected
from fleetpush_protocol.envelope import sign_message
from fleetpush_protocol.verify import (
    TrustedKeyring,
    VerifyPolicy,
    verify_keyring,
    verify_keyring_chain,
)
from fleetpush_sim.signing import fixed_key, make_keyring

SIGNER = fixed_key(100)


@dataclass(frozen=True)
class KeyringVersion:
    roots: tuple[int, ...]
    threshold: int
    sigs: tuple[int, ...]
    error: type[errors.ContentError] | None = None


V = KeyringVersion

# The built-in anchor is always roots (1,) threshold 1 unless a table starts otherwise.
TABLES: dict[str, tuple[tuple[int, ...], int, list[KeyringVersion]]] = {
    "1-of-1 first keyring": ((1,), 1, [V((1,), 1, (1,))]),
    "1-of-1 first keyring unsigned by root": ((1,), 1, [V((1,), 1, (2,), errors.UnknownKeyError)]),
    "1-of-1 rotation": ((1,), 1, [V((1,), 1, (1,)), V((2,), 1, (1, 2))]),
    "1-of-1 rotation fail: not signed with old key": (
        (1,), 1, [V((1,), 1, (1,)), V((2,), 1, (2,), errors.RotationNotSignedByOldRootError)],
    ),
    "1-of-1 rotation fail: not signed with new key": (
        (1,), 1, [V((1,), 1, (1,)), V((2,), 1, (1,), errors.RotationNotSignedByNewRootError)],
    ),
    "1-of-1 rotation fail: signed by an outsider": (
        (1,), 1, [V((1,), 1, (1,)), V((2,), 1, (1, 9), errors.UnknownKeyError)],
    ),
    "3-of-5 rotation, 3 old and 3 new sign": (
        (1, 2, 3, 4, 5), 3, [V((4, 5, 6, 7, 8), 3, (1, 2, 3, 6, 7, 8))],
    ),
    "3-of-5 rotation, overlapping keys count for both": (
        (1, 2, 3, 4, 5), 3, [V((3, 4, 5, 6, 7), 3, (3, 4, 5))],
    ),
    "3-of-5 rotation fail: only 2 old keys": (
        (1, 2, 3, 4, 5), 3,
        [V((6, 7, 8, 9, 10), 3, (1, 2, 6, 7, 8), errors.RotationNotSignedByOldRootError)],
    ),
    "3-of-5 rotation fail: only 2 new keys": (
        (1, 2, 3, 4, 5), 3,
        [V((6, 7, 8, 9, 10), 3, (1, 2, 3, 6, 7), errors.RotationNotSignedByNewRootError)],
    ),
    "threshold increase signed by enough": ((1, 2, 3), 1, [V((1, 2, 3), 2, (1, 2))]),
    "threshold increase fail: new threshold not met": (
        (1, 2, 3), 1, [V((1, 2, 3), 2, (1,), errors.RotationNotSignedByNewRootError)],
    ),
    "threshold decrease needs the old threshold": (
        (1, 2, 3), 2, [V((1, 2, 3), 1, (1,), errors.RotationNotSignedByOldRootError)],
    ),
    "same root below threshold": (
        (1, 2, 3), 2, [V((1, 2, 3), 2, (3,), errors.BelowThresholdError)],
    ),
    "all keys rotated with an intermediate step": (
        (1, 2), 2, [V((2, 3), 2, (1, 2, 3)), V((3, 4), 2, (2, 3, 4))],
    ),
    "all keys rotated at once fails without the old ones": (
        (1, 2), 2, [V((3, 4), 2, (3, 4), errors.RotationNotSignedByOldRootError)],
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(TABLES))
def test_rotation_table(name: str) -> None:
    anchor_roots, anchor_threshold, versions = TABLES[name]
    trusted = TrustedKeyring.anchor(
        [fixed_key(i).public_key for i in anchor_roots], anchor_threshold
    )
    policy = VerifyPolicy()
    for number, v in enumerate(versions, start=1):
        ring = make_keyring(
            number, [fixed_key(i) for i in v.roots], [SIGNER], root_threshold=v.threshold
        )
        data = sign_message(ring, [fixed_key(i) for i in v.sigs])
        if v.error is None:
            verified = verify_keyring(data, trusted=trusted, policy=policy)
            trusted = TrustedKeyring(verified.message, verified.digest)
        else:
            with pytest.raises(v.error) as caught:
                verify_keyring(data, trusted=trusted, policy=policy)
            assert type(caught.value) is v.error
            return


def _chain(n: int) -> list[bytes]:
    out = []
    for version in range(1, n + 1):
        old, new = fixed_key(version), fixed_key(version + 1)
        ring = make_keyring(version, [new], [SIGNER])
        out.append(sign_message(ring, [old, new]))
    return out


def test_chain_is_capped() -> None:
    anchor = TrustedKeyring.anchor([fixed_key(1).public_key])
    chain = _chain(5)
    final = verify_keyring_chain(chain, trusted=anchor, policy=VerifyPolicy(max_rotations=5))
    assert final.keyring.version == 5
    assert final.keyring.root_keys == (fixed_key(6).public_key,)
    with pytest.raises(errors.TooManyRotationsError):
        verify_keyring_chain(chain, trusted=anchor, policy=VerifyPolicy(max_rotations=4))


def test_driver_walks_keyrings_delivered_out_of_order() -> None:
    """Retained keyring topics may arrive in any order; the driver closes gaps."""
    anchor = TrustedKeyring.anchor([fixed_key(1).public_key])
    trust = DeviceTrust(trusted=anchor)
    chain = _chain(4)
    assert trust.on_keyring(chain[2]) == [Ignored("keyring waits for its predecessor")]
    assert trust.on_keyring(chain[3]) == [Ignored("keyring waits for its predecessor")]
    assert trust.on_keyring(chain[0]) == [KeyringAccepted(1)]
    assert trust.on_keyring(chain[1]) == [
        KeyringAccepted(2),
        KeyringAccepted(3),
        KeyringAccepted(4),
    ]
    assert trust.trusted.keyring.version == 4
    [replayed] = trust.on_keyring(chain[1])
    assert isinstance(replayed, Rejected)
    assert replayed.error.code == "rollback"
    assert trust.on_keyring(chain[3]) == [Ignored("duplicate")]
