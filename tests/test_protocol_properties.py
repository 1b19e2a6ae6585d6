"""Property tests: random and mutated bytes never crash the decoder and never verify."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetpush_protocol import canonical
from fleetpush_protocol.envelope import decode_message, sign_message
from fleetpush_protocol.errors import ContentError
from fleetpush_protocol.verify import (
    DeviceIdentity,
    TrustedKeyring,
    VerifyPolicy,
    verify_keyring,
    verify_keyring_chain,
    verify_notice,
)
from fleetpush_sim.signing import BASE_TIME, fixed_key, make_keyring, make_notice

ROOT, S1 = fixed_key(1), fixed_key(11)
RING = sign_message(make_keyring(1, [ROOT], [S1]), [ROOT])
TRUST = verify_keyring_chain(
    [RING], trusted=TrustedKeyring.anchor([ROOT.public_key]), policy=VerifyPolicy()
)
GOOD = sign_message(make_notice(), [S1])
DEVICE = DeviceIdentity("dev-1", "m1", frozenset({"g1"}), "1.0.0")


def verify(data: bytes) -> object:
    return verify_notice(
        data,
        keyring=TRUST,
        device=DEVICE,
        seen={},
        trusted_time=0,
        now=BASE_TIME,
        policy=VerifyPolicy(),
    )


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_random_bytes_never_crash_and_never_verify(data: bytes) -> None:
    for decode in (verify, decode_message):
        try:
            decode(data)
        except ContentError:
            continue
        raise AssertionError("random bytes were accepted")


@st.composite
def mutations(draw: st.DrawFn) -> bytes:
    data = bytearray(GOOD)
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "overwrite"]))
    pos = draw(st.integers(0, len(data) - 1))
    if kind == "flip":
        data[pos] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate":
        del data[pos:]
    elif kind == "insert":
        data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
    elif kind == "delete":
        del data[pos : pos + draw(st.integers(1, 8))]
    else:
        chunk = draw(st.binary(min_size=1, max_size=8))
        data[pos : pos + len(chunk)] = chunk
    return bytes(data)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(mutations())
def test_mutated_notice_never_verifies(data: bytes) -> None:
    if data == GOOD:
        return
    try:
        verify(data)
    except ContentError:
        return
    raise AssertionError("a mutated notice verified")


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_random_keyring_bytes_never_verify(data: bytes) -> None:
    try:
        verify_keyring(data, trusted=TRUST, policy=VerifyPolicy())
    except ContentError:
        return
    raise AssertionError("random bytes verified as a keyring")


values = st.recursive(
    st.one_of(
        st.booleans(), st.integers(-(2**63), 2**64 - 1), st.text(max_size=8), st.binary(max_size=8)
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300)
@given(st.dictionaries(st.text(max_size=6), values, max_size=6))
def test_canonical_round_trip(value: dict[str, object]) -> None:
    try:
        data = canonical.encode(value)
    except ContentError:
        return  # deeper than MAX_DEPTH
    assert canonical.decode(data, max_bytes=1 << 20) == value
    assert canonical.encode(canonical.decode(data, max_bytes=1 << 20)) == data
