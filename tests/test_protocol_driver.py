"""The driver decides what is normal: duplicates ignored, attacks rejected, state kept."""

from __future__ import annotations

from fleetpush_protocol import canonical
from fleetpush_protocol.driver import Accepted, DeviceTrust, Ignored, KeyringAccepted, Rejected
from fleetpush_protocol.envelope import sign_message
from fleetpush_protocol.messages import CancelNotice, Target
from fleetpush_protocol.verify import DeviceIdentity, TrustedKeyring, VerifyPolicy
from fleetpush_sim.signing import BASE_TIME, fixed_key, make_cancel, make_keyring, make_notice

ROOT, S1, S2 = fixed_key(1), fixed_key(11), fixed_key(12)
DEVICE = DeviceIdentity("dev-1", "m1", frozenset({"g1"}), "1.0.0")
NOW = BASE_TIME + 10


def fresh() -> DeviceTrust:
    trust = DeviceTrust(trusted=TrustedKeyring.anchor([ROOT.public_key]))
    assert trust.on_keyring(sign_message(make_keyring(1, [ROOT], [S1]), [ROOT])) == [
        KeyringAccepted(1)
    ]
    return trust


def test_qos1_duplicate_is_ignored_not_rejected() -> None:
    trust = fresh()
    data = sign_message(make_notice(), [S1])
    assert isinstance(trust.on_notice(data, DEVICE, NOW), Accepted)
    assert trust.on_notice(data, DEVICE, NOW) == Ignored("duplicate")


def test_rollback_after_newer_notice_is_rejected() -> None:
    trust = fresh()
    old = sign_message(make_notice(seq=1), [S1])
    new = sign_message(make_notice(seq=2), [S1])
    assert isinstance(trust.on_notice(new, DEVICE, NOW), Accepted)
    outcome = trust.on_notice(old, DEVICE, NOW)
    assert isinstance(outcome, Rejected)
    assert outcome.error.code == "rollback"
    assert outcome.notice_id == "n-dev-1-1"
    assert not outcome.authentic


def test_stale_retained_notice_after_cancel_is_rejected() -> None:
    trust = fresh()
    notice = sign_message(make_notice(seq=1), [S1])
    cancel = sign_message(make_cancel(seq=2), [S1])
    assert isinstance(trust.on_notice(notice, DEVICE, NOW), Accepted)
    accepted = trust.on_notice(cancel, DEVICE, NOW)
    assert isinstance(accepted, Accepted)
    assert isinstance(accepted.verified.message, CancelNotice)
    outcome = trust.on_notice(notice, DEVICE, NOW)
    assert isinstance(outcome, Rejected)
    assert outcome.error.code == "rollback"


def test_targeting_rejection_is_recorded_so_redelivery_is_a_duplicate() -> None:
    trust = fresh()
    data = sign_message(
        make_notice(scope="group/g1", target=Target(groups=("g1",), models=("m9",))), [S1]
    )
    first = trust.on_notice(data, DEVICE, NOW)
    assert isinstance(first, Rejected)
    assert first.error.code == "wrong_model"
    assert first.authentic
    assert trust.on_notice(data, DEVICE, NOW) == Ignored("duplicate")


def test_accepting_raises_trusted_time() -> None:
    trust = fresh()
    trust.on_notice(sign_message(make_notice(issued_at=BASE_TIME + 100), [S1]), DEVICE, 0)
    assert trust.trusted_time == BASE_TIME + 100


def test_notice_for_a_key_from_a_later_keyring_is_retried() -> None:
    trust = fresh()
    data = sign_message(make_notice(), [S2])
    outcome = trust.on_notice(data, DEVICE, NOW)
    assert isinstance(outcome, Rejected)
    assert outcome.error.code == "unknown_key"
    ring2 = sign_message(make_keyring(2, [ROOT], [S1, S2]), [ROOT])
    assert trust.on_keyring(ring2) == [KeyringAccepted(2)]
    [parked] = trust.take_parked()
    assert isinstance(trust.on_notice(parked, DEVICE, NOW), Accepted)
    assert trust.take_parked() == []


def test_forged_keyring_is_rejected_and_trust_unchanged() -> None:
    trust = fresh()
    forged = sign_message(make_keyring(2, [fixed_key(66)], [fixed_key(67)]), [fixed_key(66)])
    [outcome] = trust.on_keyring(forged)
    assert isinstance(outcome, Rejected)
    assert outcome.error.code == "rotation_unsigned_old_root"
    assert trust.trusted.keyring.version == 1


def test_state_round_trip_survives_restart() -> None:
    trust = fresh()
    trust.on_notice(sign_message(make_notice(seq=5), [S1]), DEVICE, NOW)
    state = canonical.decode(canonical.encode(trust.to_state()), max_bytes=1 << 20)
    anchor = TrustedKeyring.anchor([ROOT.public_key])
    restored = DeviceTrust.from_state(state, anchor, VerifyPolicy())
    assert restored.trusted == trust.trusted
    assert restored.seen == trust.seen
    assert restored.trusted_time == trust.trusted_time
    # The restored device still refuses the replay.
    old = sign_message(make_notice(seq=4), [S1])
    outcome = restored.on_notice(old, DEVICE, NOW)
    assert isinstance(outcome, Rejected)
    assert outcome.error.code == "rollback"
