"""Property tests: random and mutated bytes never crash the decoder and never verify."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetpush_protocol import canonical
from fleetpush_protocol.envelope import (
    decode_envelope,
    decode_message,
    encode_message,
    parse,
    sign_message,
)
from fleetpush_protocol.errors import ContentError
from fleetpush_protocol.messages import ErrorInfo, Report, ReportState
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
def mutations(draw: st.DrawFn, base: bytes = GOOD) -> bytes:
    data = bytearray(base)
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


REPORTS = [
    encode_message(Report(device_id="dev-1", notice_id="n-1", rollout_id="1", counter=3,
                          state=ReportState.DOWNLOADING, current_version="1.0", reported_at=5)),
    # a body over 255 bytes: its envelope holds it as bin 16
    encode_message(Report(device_id="dev-1", notice_id="n-1", rollout_id="1", counter=3,
                          state=ReportState.FAILED, current_version="1.0", reported_at=5,
                          error=ErrorInfo(code="E_X", message="x" * 300))),
]  # fmt: skip


def _outcome(decode: Callable[[bytes], object], data: bytes) -> object:
    try:
        return decode(data)
    except ContentError as e:
        return type(e), str(e)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(REPORTS).flatmap(mutations))
def test_device_message_fast_path_agrees_with_the_envelope_path(data: bytes) -> None:
    # decode_message reads a canonical unsigned envelope by its bytes; the result, or the
    # error, is the one the generic envelope decode and parse give.
    generic = _outcome(lambda d: parse(decode_envelope(d, max_unknown_bytes=8),
                                       max_unknown_bytes=8), data)  # fmt: skip
    assert _outcome(lambda d: decode_message(d, max_unknown_bytes=8), data) == generic


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


def test_device_message_fast_path_refuses_a_non_canonical_envelope() -> None:
    # The short report's body written as bin 16 (canonical is bin 8), and the long one's
    # with one byte cut: refused, with the generic path's error.
    short, long = REPORTS
    widened = short[:6] + b"\xc5\x00" + short[7:]
    cut = long[:-13] + long[-12:]
    for data in (widened, cut):
        outcome = _outcome(decode_message, data)
        assert isinstance(outcome, tuple), "a non-canonical envelope was accepted"
        assert outcome == _outcome(lambda d: parse(decode_envelope(d)), data)
