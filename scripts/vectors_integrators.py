"""Test vectors for the questions an independent implementation asked (issue 12).

Imported by scripts/gen_test_vectors.py, which runs and writes every case: revocation that
sticks, keyring signature errors, encoding edge cases (integer forms, nesting depth, key
order), the default payload limit, keyring field rules, Ed25519 edge cases, and the
``device_message`` kind for reports, presence and inventory.
"""

from __future__ import annotations

from typing import Any

import msgpack
from gen_test_vectors import (
    DEVICE,
    KEYRING1,
    KEYRING2_REVOKE_S2,
    R1,
    S1,
    S2,
    S3,
    case,
    signed,
)
from msgspec.structs import replace

from fleetpush_protocol import canonical
from fleetpush_protocol.envelope import SIGNING_CONTEXT, encode_message, sign_message
from fleetpush_protocol.messages import (
    ErrorInfo,
    Inventory,
    Presence,
    Progress,
    Release,
    Report,
    ReportState,
    SigningKeyInfo,
)
from fleetpush_sim.signing import (
    BASE_TIME,
    DAY,
    flip_signature_bit,
    make_keyring,
    make_notice,
    raw_envelope,
)

KEYRING3_RELIST_S2 = sign_message(make_keyring(3, [R1], [S1, S2]), [R1])
# Ed25519: the group order, and the encoding of the identity point (a small-order key).
ED25519_L = 2**252 + 27742317777372353535851937790883648493
SMALL_ORDER_KEY = bytes([1]) + bytes(31)
GIB = 1 << 30


def _envelope(body: bytes, sigs: list[dict[str, bytes]]) -> bytes:
    return canonical.encode({"body": body, "signatures": sigs})


def _signed_raw(body: bytes) -> bytes:
    """Sign body bytes exactly as given (non-canonical ones included) with S1."""
    return _envelope(body, [{"key": S1.public_key, "sig": S1.sign(SIGNING_CONTEXT + body)}])


def _packed(body: dict[str, Any]) -> bytes:
    """Keys sorted, but no other check: for bodies the canonical encoder refuses."""
    return msgpack.packb(dict(sorted(body.items())), use_bin_type=True)  # type: ignore[no-any-return]


def _nested(levels: int) -> Any:
    value: Any = "x"
    for _ in range(levels):
        value = [value]
    return value


def _non_canonical_s() -> bytes:
    good = signed(make_notice())
    outer = canonical.decode(good, max_bytes=1 << 20)
    sig = outer["signatures"][0]["sig"]
    s = int.from_bytes(sig[32:], "little") + ED25519_L  # same point equation, S >= L
    outer["signatures"][0]["sig"] = sig[:32] + s.to_bytes(32, "little")
    return canonical.encode(outer)


def _small_order_keyring() -> bytes:
    base = make_keyring(2, [R1], [S1])
    window = base.signing_keys[0]
    small = SigningKeyInfo(
        public_key=SMALL_ORDER_KEY, not_before=window.not_before, not_after=window.not_after
    )
    return sign_message(replace(base, signing_keys=(*base.signing_keys, small)), [R1])


def _small_order_notice() -> bytes:
    # R = identity, S = 0 satisfies [S]B = R + [k]A for A = identity: a verifier that does
    # not refuse small-order keys accepts it for every message.
    body = canonical.encode(make_notice().to_body())
    return _envelope(body, [{"key": SMALL_ORDER_KEY, "sig": SMALL_ORDER_KEY + bytes(32)}])


def _key_order_body(order_by_utf16: bool) -> bytes:
    body = {**make_notice().to_body(), "\uff61": 1, "\U0001f600": 2}

    def key(k: str) -> bytes:
        return k.encode("utf-16-be") if order_by_utf16 else k.encode()

    return msgpack.packb(dict(sorted(body.items(), key=lambda kv: key(kv[0]))), use_bin_type=True)  # type: ignore[no-any-return]


def _keyring_body_edit(**changes: Any) -> bytes:
    body = make_keyring(2, [R1], [S1]).to_body()
    body.update(changes)
    return raw_envelope(body, [R1])


def revocation_and_keyring_cases() -> list[dict[str, Any]]:
    k2 = make_keyring(2, [R1], [S1])
    return [
        case(
            "key-revoked-then-relisted",
            "v2 revoked S2, v3 lists S2 again without revoking it: S2 stays revoked.",
            signed(make_notice(), S2),
            "key_revoked",
            keyrings=[KEYRING1, KEYRING2_REVOKE_S2, KEYRING3_RELIST_S2],
        ),
        case(
            "keyring-accept-relists-revoked",
            "A keyring listing a once-revoked key is accepted; the key never counts again.",
            KEYRING3_RELIST_S2,
            "accept",
            kind="keyring",
            keyrings=[KEYRING1, KEYRING2_REVOKE_S2],
        ),
        case(
            "keyring-too-many-revocations",
            "max_revoked_keys 1: v3 revokes S3 while S2 is remembered; refused, not forgotten.",
            sign_message(make_keyring(3, [R1], [S1], revoked=[S3]), [R1]),
            "too_many_revocations",
            kind="keyring",
            keyrings=[KEYRING1, KEYRING2_REVOKE_S2],
            policy={"max_revoked_keys": 1},
        ),
        case(
            "keyring-signature-missing",
            "Keyring v2 without any signature.",
            sign_message(k2, []),
            "signature_missing",
            kind="keyring",
        ),
        case(
            "keyring-duplicate-signature",
            "The root key's signature twice on keyring v2.",
            raw_envelope(k2.to_body(), [R1, R1]),
            "duplicate_signature",
            kind="keyring",
        ),
        case(
            "keyring-bad-signature",
            "Keyring v2 whose root signature has one bit flipped.",
            flip_signature_bit(sign_message(k2, [R1]), byte=5),
            "bad_signature",
            kind="keyring",
        ),
        case(
            "keyring-version-zero",
            "Version 0 is the built-in anchor, never a message: malformed, not a duplicate.",
            sign_message(make_keyring(0, [R1], [S1]), [R1]),
            "malformed",
            kind="keyring",
            keyrings=[],
        ),
        case(
            "keyring-threshold-above-signing-keys",
            "signing_threshold 2 with one signing key.",
            _keyring_body_edit(signing_threshold=2),
            "malformed",
            kind="keyring",
        ),
        case(
            "keyring-key-window-reversed",
            "A signing key whose not_before is after its not_after.",
            _keyring_body_edit(
                signing_keys=[
                    {
                        "not_after": BASE_TIME,
                        "not_before": BASE_TIME + DAY,
                        "public_key": b"\x11" * 32,
                    }
                ]
            ),
            "malformed",
            kind="keyring",
        ),
    ]


def encoding_cases() -> list[dict[str, Any]]:
    n = make_notice()
    body = canonical.encode(replace(n, seq=1000).to_body())
    return [
        case(
            "malformed-no-format",
            "A body without a format field: malformed, not unsupported_format.",
            raw_envelope({k: v for k, v in n.to_body().items() if k != "format"}, [S1]),
            "malformed",
        ),
        case(
            "malformed-int-signed-form",
            "seq 1000 as int16 (d1 03 e8): a non-negative integer uses the unsigned form.",
            _signed_raw(body.replace(b"\xa3seq\xcd\x03\xe8", b"\xa3seq\xd1\x03\xe8")),
            "malformed",
        ),
        case(
            "malformed-int-not-shortest",
            "seq 1 as uint8 (cc 01) instead of the positive fixint 01.",
            _signed_raw(canonical.encode(n.to_body()).replace(b"\xa3seq\x01", b"\xa3seq\xcc\x01")),
            "malformed",
        ),
        case(
            "notice-accept-nesting-depth-8",
            "An unknown field whose innermost value is at depth 8 (the body map is depth 0).",
            raw_envelope({**n.to_body(), "zz": _nested(7)}, [S1]),
            "accept",
        ),
        case(
            "malformed-nesting-depth-9",
            "An unknown field whose innermost value is at depth 9.",
            _signed_raw(_packed({**n.to_body(), "zz": _nested(8)})),
            "malformed",
        ),
        case(
            "notice-accept-keys-utf8-order",
            "Unknown keys U+FF61 and U+1F600, sorted by UTF-8 bytes (U+FF61 first).",
            _signed_raw(_key_order_body(order_by_utf16=False)),
            "accept",
        ),
        case(
            "malformed-keys-utf16-order",
            "The same keys sorted by UTF-16 code units (U+1F600 first): not canonical.",
            _signed_raw(_key_order_body(order_by_utf16=True)),
            "malformed",
        ),
        case(
            "notice-accept-payload-at-default-limit",
            "payload.size exactly 1 GiB, the default maximum payload size.",
            signed(replace(n, payload=replace(n.payload, size=GIB))),
            "accept",
        ),
        case(
            "payload-too-large-default-limit",
            "payload.size 1 GiB + 1 with the default policy.",
            signed(replace(n, payload=replace(n.payload, size=GIB + 1))),
            "payload_too_large",
        ),
        case(
            "bad-signature-non-canonical-s",
            "A valid signature with S replaced by S + L (non-canonical S).",
            _non_canonical_s(),
            "bad_signature",
        ),
        case(
            "bad-signature-small-order-key",
            "The keyring lists the small-order identity key; R = identity, S = 0.",
            _small_order_notice(),
            "bad_signature",
            keyrings=[KEYRING1, _small_order_keyring()],
        ),
    ]


def device_case(
    name: str, description: str, message: bytes, expected: str, *, topic: str
) -> dict[str, Any]:
    c: dict[str, Any] = {
        "name": name,
        "description": description,
        "kind": "device_message",
        "topic": topic,
        "device": {"device_id": DEVICE["device_id"]},
        "policy": {},
        "message": message.hex(),
    }
    if expected == "accept":
        c["expected"] = {"outcome": "accept"}
    else:
        c["expected"] = {"outcome": "error", "code": expected}
    return c


def _report(**changes: Any) -> Report:
    report = Report(
        device_id="dev-1",
        notice_id="n-dev-1-1",
        rollout_id="r-1",
        state=ReportState.DOWNLOADING,
        current_version="1.0.0",
        counter=7,
        reported_at=BASE_TIME + 30,
        progress=Progress(done=1024, total=4096),
    )
    return replace(report, **changes)


def device_message_cases() -> list[dict[str, Any]]:
    downloading = _report().to_body()
    failed = _report(
        state=ReportState.FAILED,
        progress=None,
        error=ErrorInfo(code="hash_mismatch", message="payload SHA-256 differs"),
    )
    inventory = Inventory(
        device_id="dev-1",
        model="m1",
        groups=("g1",),
        client_version="0.1.0",
        installed=(Release(name="app", version="1.0.0"),),
        free_bytes=10 * GIB,
        at=BASE_TIME,
    )
    online = Presence(device_id="dev-1", online=True, at=BASE_TIME)
    return [
        device_case(
            "report-accept-downloading",
            "A progress report.",
            encode_message(_report()),
            "accept",
            topic="report",
        ),
        device_case(
            "report-accept-failed",
            "A failed report with its error.",
            encode_message(failed),
            "accept",
            topic="report",
        ),
        device_case(
            "report-accept-unknown-fields",
            "Unknown fields in a report are kept and ignored.",
            raw_envelope({**downloading, "x-future": 1}, []),
            "accept",
            topic="report",
        ),
        device_case(
            "report-error-outside-failure",
            "A succeeded report carrying an error: error is nil outside failures.",
            raw_envelope(
                {
                    **downloading,
                    "state": "succeeded",
                    "progress": None,
                    "error": {"code": "x", "message": ""},
                },
                [],
            ),
            "malformed",
            topic="report",
        ),
        device_case(
            "report-failed-without-error",
            "A failed report with error nil.",
            raw_envelope({**failed.to_body(), "error": None}, []),
            "malformed",
            topic="report",
        ),
        device_case(
            "report-unknown-state",
            "A state this format does not define: malformed (dropped by the receiver).",
            raw_envelope({**downloading, "state": "paused"}, []),
            "malformed",
            topic="report",
        ),
        device_case(
            "report-wrong-device",
            "dev-1's report topic carrying a report for dev-2.",
            encode_message(_report(device_id="dev-2")),
            "wrong_device",
            topic="report",
        ),
        device_case(
            "presence-accept",
            "The online presence sent on connect.",
            encode_message(online),
            "accept",
            topic="presence",
        ),
        device_case(
            "presence-on-report-topic",
            "A presence message on the report topic.",
            encode_message(online),
            "unexpected_type",
            topic="report",
        ),
        device_case(
            "inventory-accept",
            "An inventory sent on connect.",
            encode_message(inventory),
            "accept",
            topic="inventory",
        ),
        device_case(
            "inventory-malformed-group-name",
            "A group name with a '/' (names end up in topic levels).",
            raw_envelope({**inventory.to_body(), "groups": ["g1/../x"]}, []),
            "malformed",
            topic="inventory",
        ),
    ]


def integrator_cases() -> list[dict[str, Any]]:
    return revocation_and_keyring_cases() + encoding_cases() + device_message_cases()
