"""A revoked signing key stays refused forever, even when a later keyring lists it again."""

from __future__ import annotations

from collections.abc import Sequence

from fleetpush_protocol import canonical
from fleetpush_protocol.driver import Accepted, DeviceTrust, KeyringAccepted, Rejected
from fleetpush_protocol.envelope import sign_message
from fleetpush_protocol.keys import KeyPair
from fleetpush_protocol.verify import DeviceIdentity, TrustedKeyring, VerifyPolicy
from fleetpush_sim.signing import BASE_TIME, fixed_key, make_keyring, make_notice

ROOT, S1, S2, S3, S4 = fixed_key(1), fixed_key(11), fixed_key(12), fixed_key(13), fixed_key(14)
DEVICE = DeviceIdentity("dev-1", "m1", frozenset({"g1"}), "1.0.0")
NOW = BASE_TIME + 10
ANCHOR = TrustedKeyring.anchor([ROOT.public_key])


def ring(version: int, signers: Sequence[KeyPair], revoked: Sequence[KeyPair] = ()) -> bytes:
    return sign_message(make_keyring(version, [ROOT], signers, revoked=revoked), [ROOT])


def relisted(policy: VerifyPolicy | None = None) -> DeviceTrust:
    """v1 lists S1 and S2, v2 revokes S2, v3 lists S2 again and forgets the revocation."""
    trust = DeviceTrust(trusted=ANCHOR, policy=policy or VerifyPolicy())
    assert trust.on_keyring(ring(1, [S1, S2])) == [KeyringAccepted(1)]
    assert trust.on_keyring(ring(2, [S1], [S2])) == [KeyringAccepted(2)]
    assert trust.on_keyring(ring(3, [S1, S2])) == [KeyringAccepted(3)]
    return trust


def test_relisted_revoked_key_is_refused_and_the_keyring_accepted() -> None:
    trust = relisted()
    assert trust.trusted.keyring.version == 3
    outcome = trust.on_notice(sign_message(make_notice(), [S2]), DEVICE, NOW)
    assert isinstance(outcome, Rejected)
    assert outcome.error.code == "key_revoked"
    assert not trust.parked_notices  # not retried after the next keyring either
    # The keyring still counts for its other keys.
    assert isinstance(trust.on_notice(sign_message(make_notice(), [S1]), DEVICE, NOW), Accepted)


def test_revoked_keys_survive_a_restart() -> None:
    trust = relisted()
    state = canonical.decode(canonical.encode(trust.to_state()), max_bytes=1 << 20)
    restored = DeviceTrust.from_state(state, ANCHOR, VerifyPolicy())
    assert restored.trusted.revoked == frozenset({S2.public_key})
    outcome = restored.on_notice(sign_message(make_notice(), [S2]), DEVICE, NOW)
    assert isinstance(outcome, Rejected)
    assert outcome.error.code == "key_revoked"


def test_state_written_before_revoked_keys_existed_still_loads() -> None:
    trust = DeviceTrust(trusted=ANCHOR)
    trust.on_keyring(ring(1, [S1, S2]))
    trust.on_keyring(ring(2, [S1], [S2]))
    state = trust.to_state()
    del state["revoked_keys"]
    restored = DeviceTrust.from_state(state, ANCHOR, VerifyPolicy())
    assert restored.trusted.keyring.version == 2
    # The saved keyring's own list is where an old snapshot's memory starts.
    assert restored.trusted.revoked == frozenset({S2.public_key})
    restored.on_keyring(ring(3, [S1, S2]))
    outcome = restored.on_notice(sign_message(make_notice(), [S2]), DEVICE, NOW)
    assert isinstance(outcome, Rejected)
    assert outcome.error.code == "key_revoked"


def test_a_keyring_past_the_revocation_limit_is_refused_not_forgotten() -> None:
    trust = DeviceTrust(trusted=ANCHOR, policy=VerifyPolicy(max_revoked_keys=2))
    trust.on_keyring(ring(1, [S1]))
    assert trust.on_keyring(ring(2, [S1], [S2, S3])) == [KeyringAccepted(2)]
    # v3 forgets S2 and S3 and revokes S4: three to remember, one over the limit.
    [outcome] = trust.on_keyring(ring(3, [S1], [S4]))
    assert isinstance(outcome, Rejected)
    assert outcome.error.code == "too_many_revocations"
    assert trust.trusted.keyring.version == 2
    assert trust.trusted.revoked == frozenset({S2.public_key, S3.public_key})
