"""Regenerate docs/protocol/test-vectors.json from fixed keys (deterministic output).

    .venv/bin/python scripts/gen_test_vectors.py > docs/protocol/test-vectors.json

Every case is run through the implementation before it is written; the script refuses to
write a vector whose expected outcome the implementation does not produce.
"""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any

import msgpack
from msgspec.structs import replace

from fleetpush_protocol import canonical
from fleetpush_protocol.envelope import SIGNING_CONTEXT, decode_envelope, sign_message
from fleetpush_protocol.keys import KeyPair
from fleetpush_protocol.messages import Delta, Message, Report, ReportState, Target
from fleetpush_protocol.vectors import jsonable, run_case
from fleetpush_protocol.verify import TrustedKeyring, VerifyPolicy, verify_keyring_chain
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

R1, R2, R3, R4 = (fixed_key(i) for i in (1, 2, 3, 4))
S1, S2, S3 = (fixed_key(i) for i in (11, 12, 13))
STRANGER = fixed_key(99)
PAYLOAD = b"fleetpush test payload\n"
DELTA = Delta(
    base_sha256=hashlib.sha256(b"fleetpush test payload, 1.0.0\n").digest(),
    method="zstd-patch",
    sha256=hashlib.sha256(b"delta bytes").digest(),
    size=11,
    urls=("https://updates.example.com/d/app-1.0.0-2.0.0.zst",),
)

DEVICE = {"device_id": "dev-1", "model": "m1", "groups": ["g1"], "current_version": "1.0.0"}
KEYRING1 = sign_message(make_keyring(1, [R1], [S1, S2]), [R1])
KEYRING1_T2 = sign_message(make_keyring(1, [R1], [S1, S2], signing_threshold=2), [R1])
KEYRING2_REVOKE_S2 = sign_message(make_keyring(2, [R1], [S1], revoked=[S2]), [R1])


def digest_of(message: bytes) -> str:
    return hashlib.sha256(decode_envelope(message).body).hexdigest()


def case(
    name: str,
    description: str,
    message: bytes,
    expected: str,
    *,
    kind: str = "notice",
    keyrings: list[bytes] | None = None,
    roots: list[KeyPair] | None = None,
    root_threshold: int = 1,
    seen: dict[str, Any] | None = None,
    trusted_time: int = 0,
    now: int = BASE_TIME + 60,
    policy: dict[str, int] | None = None,
    device: dict[str, Any] | None = None,
    payload: bytes | None = None,
    messages: list[bytes] | None = None,
) -> dict[str, Any]:
    c: dict[str, Any] = {
        "name": name,
        "description": description,
        "kind": kind,
        "trust": {
            "root_keys": [k.public_key.hex() for k in (roots or [R1])],
            "root_threshold": root_threshold,
            "keyrings": [k.hex() for k in (KEYRING1,) if keyrings is None]
            + [k.hex() for k in (keyrings or [])],
        },
        "device": device or DEVICE,
        "state": {"seen": seen or {}, "trusted_time": trusted_time},
        "policy": policy or {},
        "now": now,
    }
    if messages is not None:
        c["messages"] = [m.hex() for m in messages]
    else:
        c["message"] = message.hex()
    if payload is not None:
        c["payload"] = payload.hex()
    if expected == "accept":
        c["expected"] = {"outcome": "accept"}
    else:
        c["expected"] = {"outcome": "error", "code": expected}
    return c


def signed(msg: Message, *keys: KeyPair) -> bytes:
    return sign_message(msg, keys or (S1,))


def build() -> list[dict[str, Any]]:
    n = make_notice()
    good = signed(n)
    cases = [
        case(
            "notice-accept",
            "A valid notice for this device, signed by a keyring key.",
            good,
            "accept",
        ),
        case(
            "notice-accept-group",
            "A group notice on the group's scope, for a group the device is in.",
            signed(
                make_notice(scope="group/g1", target=Target(groups=("g1",)), notice_id="n-g1-1")
            ),
            "accept",
        ),
        case(
            "notice-accept-unknown-fields",
            "Unknown body fields are kept (covered by the signature) and ignored.",
            raw_envelope({**n.to_body(), "x-future": {"a": 1}, "zzz": "later"}, [S1]),
            "accept",
        ),
        case(
            "notice-accept-deltas",
            "A notice listing a delta from the payload of release 1.0.0 (issue 15).",
            signed(make_notice(deltas=(DELTA,))),
            "accept",
        ),
        case(
            "notice-accept-deltas-unknown-method",
            "A delta method this implementation does not know: the notice is still valid.",
            signed(make_notice(deltas=(DELTA, replace(DELTA, method="x-future-method")))),
            "accept",
        ),
        case(
            "notice-accept-deltas-tar-bsdiff",
            "Two deltas from one base, by zstd-patch and by tar-bsdiff (member by member).",
            signed(make_notice(deltas=(DELTA, replace(DELTA, method="tar-bsdiff")))),
            "accept",
        ),
        case(
            "malformed-deltas-empty",
            "An empty deltas list: no deltas are written by leaving the field out.",
            raw_envelope({**n.to_body(), "deltas": []}, [S1]),
            "malformed",
        ),
        case(
            "notice-accept-two-of-two",
            "Signing threshold 2, signed by both keyring keys.",
            signed(n, S1, S2),
            "accept",
            keyrings=[KEYRING1_T2],
        ),
        case(
            "notice-accept-within-grace",
            "Expired 100 s ago, inside the 300 s clock-skew grace.",
            good,
            "accept",
            now=n.expires_at + 100,
        ),
        case(
            "notice-accept-clock-behind",
            "Device clock far behind (no RTC): an unexpired notice is still accepted.",
            good,
            "accept",
            now=0,
        ),
        case("cancel-accept", "A valid cancel notice.", signed(make_cancel()), "accept"),
        case(
            "oversized",
            "Longer than the device's message limit: refused before decoding.",
            good,
            "oversized",
            policy={"max_message_bytes": 1024},
            device=DEVICE,
        )
        if len(good) > 1024
        else case(
            "oversized",
            "Longer than the device's message limit: refused before decoding.",
            signed(make_notice(handler_args={"pad": "x" * 1200})),
            "oversized",
            policy={"max_message_bytes": 1024},
        ),
        case("malformed-not-msgpack", "Not msgpack at all.", b"\xc1hello", "malformed"),
        case(
            "malformed-non-canonical",
            "Body map keys not sorted: not the canonical encoding.",
            _unsorted(n),
            "malformed",
        ),
        case(
            "malformed-missing-field",
            "A notice without its payload field.",
            raw_envelope({k: v for k, v in n.to_body().items() if k != "payload"}, [S1]),
            "malformed",
        ),
        case(
            "malformed-trailing-bytes",
            "Valid envelope followed by extra bytes.",
            good + b"\x00",
            "malformed",
        ),
        case(
            "unsupported-format",
            "Format version 2 is unknown to a format-1 reader.",
            raw_envelope({**n.to_body(), "format": 2}, [S1]),
            "unsupported_format",
        ),
        case(
            "unknown-type",
            "A message type this reader does not know.",
            raw_envelope({**n.to_body(), "type": "firmware"}, [S1]),
            "unknown_type",
        ),
        case(
            "unexpected-type",
            "A device report where a notice was expected.",
            signed(
                Report(
                    device_id="dev-1",
                    notice_id="n-1",
                    rollout_id="r-1",
                    state=ReportState.SUCCEEDED,
                    current_version="2.0.0",
                    counter=1,
                    reported_at=BASE_TIME,
                )
            ),
            "unexpected_type",
        ),
        case(
            "signature-missing", "No signatures at all.", sign_message(n, []), "signature_missing"
        ),
        case(
            "duplicate-signature",
            "The same key's signature twice, to fake a threshold of 2.",
            raw_envelope(n.to_body(), [S1, S1]),
            "duplicate_signature",
            keyrings=[KEYRING1_T2],
        ),
        case(
            "key-revoked",
            "Signed by a key that keyring v2 revoked.",
            signed(n, S2),
            "key_revoked",
            keyrings=[KEYRING1, KEYRING2_REVOKE_S2],
        ),
        case(
            "unknown-key", "Signed by a key not in the keyring.", signed(n, STRANGER), "unknown_key"
        ),
        case(
            "unknown-key-root-signs-notice",
            "Root keys sign keyrings only; a notice signed by the root is refused.",
            signed(n, R1),
            "unknown_key",
        ),
        case(
            "key-not-valid-issued-after-window",
            "Issued after the signing key's validity window ended.",
            signed(replace(n, issued_at=BASE_TIME + 400 * DAY, expires_at=BASE_TIME + 401 * DAY)),
            "key_not_valid",
            now=BASE_TIME + 400 * DAY,
        ),
        case(
            "key-not-valid-key-expired",
            "Issued inside the key's window, but verified after the key expired.",
            signed(replace(n, expires_at=BASE_TIME + 500 * DAY)),
            "key_not_valid",
            now=BASE_TIME + 366 * DAY,
        ),
        case(
            "bad-signature",
            "A signature with one bit flipped.",
            flip_signature_bit(good, byte=10),
            "bad_signature",
        ),
        case(
            "bad-signature-mix-and-match",
            "A valid signature over another device's notice, attached to this body.",
            tamper_body(signed(make_notice("dev-2")), **n.to_body()),
            "bad_signature",
        ),
        case(
            "below-threshold",
            "Threshold 2, one valid signature.",
            good,
            "below_threshold",
            keyrings=[KEYRING1_T2],
        ),
        case(
            "expired",
            "Expired an hour ago, beyond the grace.",
            good,
            "expired",
            now=n.expires_at + 3600,
        ),
        case(
            "expired-freeze-clock-rolled-back",
            "Device clock rolled back, but the highest trusted time says it expired.",
            good,
            "expired",
            now=BASE_TIME,
            trusted_time=n.expires_at + 3600,
        ),
        case(
            "rollback",
            "Sequence 4 after sequence 5 was accepted in this scope.",
            signed(make_notice(seq=4)),
            "rollback",
            seen={"device/dev-1": {"seq": 5, "digest": "00" * 32}},
        ),
        case(
            "duplicate",
            "The same notice again (QoS 1 redelivery or retained copy).",
            good,
            "duplicate",
            seen={"device/dev-1": {"seq": 1, "digest": digest_of(good)}},
        ),
        case(
            "sequence-conflict",
            "Sequence 1 again but with different content.",
            signed(make_notice(release=replace(n.release, version="6.6.6"))),
            "sequence_conflict",
            seen={"device/dev-1": {"seq": 1, "digest": digest_of(good)}},
        ),
        case(
            "not-addressed-other-device",
            "An authentic notice for dev-2 replayed to dev-1.",
            signed(make_notice("dev-2")),
            "not_addressed",
        ),
        case(
            "not-addressed-other-scope",
            "Lists dev-1 but in dev-2's scope (wrong topic).",
            signed(make_notice(scope="device/dev-2")),
            "not_addressed",
        ),
        case(
            "not-addressed-other-group",
            "A group notice for a group the device is not in.",
            signed(make_notice(scope="group/g2", target=Target(groups=("g2",)))),
            "not_addressed",
        ),
        case(
            "wrong-model",
            "For hardware model m2 only.",
            signed(make_notice(target=Target(devices=("dev-1",), models=("m2",)))),
            "wrong_model",
        ),
        case(
            "version-mismatch",
            "Only for devices running 0.9.0.",
            signed(make_notice(target=Target(devices=("dev-1",), current_versions=("0.9.0",)))),
            "version_mismatch",
        ),
        case(
            "payload-too-large",
            "Payload bigger than the device's limit.",
            signed(make_notice(payload=b"x" * 2048)),
            "payload_too_large",
            policy={"max_payload_bytes": 1024},
        ),
        case(
            "payload-accept",
            "The payload matches the signed size and SHA-256.",
            good,
            "accept",
            kind="payload",
            payload=PAYLOAD,
        ),
        case(
            "payload-hash-mismatch",
            "Same size, different bytes: swapped on the mirror.",
            good,
            "hash_mismatch",
            kind="payload",
            payload=PAYLOAD.upper(),
        ),
        case(
            "payload-endless",
            "More bytes than the signed size (endless data).",
            good,
            "size_mismatch",
            kind="payload",
            payload=PAYLOAD + b"more",
        ),
        case(
            "payload-truncated",
            "Fewer bytes than the signed size.",
            good,
            "size_mismatch",
            kind="payload",
            payload=PAYLOAD[:-1],
        ),
    ]
    cases += keyring_cases()
    from vectors_integrators import integrator_cases  # noqa: PLC0415 - it imports this module

    cases += integrator_cases()
    from vectors_security import security_cases  # noqa: PLC0415 - it imports this module

    cases += security_cases()
    from vectors_system import system_cases  # noqa: PLC0415 - it imports this module

    cases += system_cases()
    from vectors_holds import holds_cases  # noqa: PLC0415 - it imports this module

    cases += holds_cases()
    from vectors_evidence import evidence_cases  # noqa: PLC0415 - it imports this module

    cases += evidence_cases()
    return cases


def keyring_cases() -> list[dict[str, Any]]:
    k2_rot = make_keyring(2, [R2], [S1])
    k3_rot = make_keyring(3, [R3], [S3])
    root3 = [R1, R2, R3]
    root3b = [R2, R3, R4]
    return [
        case(
            "keyring-accept-first",
            "Keyring v1 signed by the built-in root key.",
            KEYRING1,
            "accept",
            kind="keyring",
            keyrings=[],
        ),
        case(
            "keyring-accept-root-rotation",
            "v2 moves to root R2, signed by old R1 and new R2.",
            sign_message(k2_rot, [R1, R2]),
            "accept",
            kind="keyring",
        ),
        case(
            "keyring-rotation-missing-old-root",
            "v2 moves to root R2 but only R2 signed.",
            sign_message(k2_rot, [R2]),
            "rotation_unsigned_old_root",
            kind="keyring",
        ),
        case(
            "keyring-rotation-missing-new-root",
            "v2 moves to root R2 but only R1 signed.",
            sign_message(k2_rot, [R1]),
            "rotation_unsigned_new_root",
            kind="keyring",
        ),
        case(
            "keyring-accept-2-of-3-overlap",
            "2-of-3 root {R1,R2,R3} to {R2,R3,R4}: R2 and R3 sign for both.",
            sign_message(make_keyring(1, root3b, [S1], root_threshold=2), [R2, R3]),
            "accept",
            kind="keyring",
            keyrings=[],
            roots=root3,
            root_threshold=2,
        ),
        case(
            "keyring-2-of-3-below-threshold",
            "2-of-3 root, same root kept, only one root signature.",
            sign_message(make_keyring(1, root3, [S1], root_threshold=2), [R1]),
            "below_threshold",
            kind="keyring",
            keyrings=[],
            roots=root3,
            root_threshold=2,
        ),
        case(
            "keyring-unknown-key",
            "Signed by a signing key, not a root key.",
            sign_message(make_keyring(2, [R1], [S1]), [S1]),
            "unknown_key",
            kind="keyring",
        ),
        case(
            "keyring-gap",
            "v3 while v1 is trusted: v2 must come first.",
            sign_message(make_keyring(3, [R1], [S1]), [R1]),
            "keyring_gap",
            kind="keyring",
        ),
        case(
            "keyring-rollback",
            "v1 again after v2 was trusted.",
            sign_message(make_keyring(1, [R1], [S3]), [R1]),
            "rollback",
            kind="keyring",
            keyrings=[KEYRING1, KEYRING2_REVOKE_S2],
        ),
        case(
            "keyring-duplicate",
            "The trusted v1 again.",
            KEYRING1,
            "duplicate",
            kind="keyring",
        ),
        case(
            "keyring-sequence-conflict",
            "Another v1 with different content.",
            sign_message(make_keyring(1, [R1], [S3]), [R1]),
            "sequence_conflict",
            kind="keyring",
        ),
        case(
            "keyring-chain-accept",
            "From the anchor through two root rotations: R1 -> R2 -> R3.",
            b"",
            "accept",
            kind="keyring_chain",
            keyrings=[],
            messages=[KEYRING1, sign_message(k2_rot, [R1, R2]), sign_message(k3_rot, [R2, R3])],
        ),
        case(
            "keyring-chain-skip-rotation",
            "A device still on R1 is sent v3 (signed by R2, R3) without v2.",
            b"",
            "keyring_gap",
            kind="keyring_chain",
            messages=[sign_message(k3_rot, [R2, R3])],
        ),
        case(
            "keyring-chain-too-long",
            "Three keyrings with max_rotations = 2.",
            b"",
            "too_many_rotations",
            kind="keyring_chain",
            keyrings=[],
            messages=[KEYRING1, sign_message(k2_rot, [R1, R2]), sign_message(k3_rot, [R2, R3])],
            policy={"max_rotations": 2},
        ),
    ]


def _unsorted(n: Any) -> bytes:
    body = n.to_body()
    reordered = dict(sorted(body.items(), reverse=True))
    encoded: bytes = msgpack.packb(reordered, use_bin_type=True)
    sig = S1.sign(SIGNING_CONTEXT + encoded)
    return canonical.encode({"body": encoded, "signatures": [{"key": S1.public_key, "sig": sig}]})


def main() -> None:
    cases = build()
    for c in cases:
        expected = c["expected"]
        result = run_case(c)
        if not result.ok:
            got = f"{result.actual} ({result.detail})"
            sys.exit(f"vector {c['name']}: expected {result.expected}, got {got}")
        if expected["outcome"] == "accept":
            # Record the decoded body so other implementations can compare field by field.
            c["expected"]["decoded"] = _decoded(c)
    doc = {
        "format": 1,
        "description": (
            "fleetpush protocol test vectors; see docs/protocol.md 'Test vectors'. "
            "Bytes are lowercase hex. Regenerate with scripts/gen_test_vectors.py."
        ),
        "base_time": BASE_TIME,
        "day": DAY,
        "cases": cases,
    }
    json.dump(doc, sys.stdout, indent=1)
    sys.stdout.write("\n")


def _decoded(c: dict[str, Any]) -> Any:
    if c["kind"] == "keyring_chain":
        anchor = TrustedKeyring.anchor(
            [bytes.fromhex(k) for k in c["trust"]["root_keys"]], c["trust"]["root_threshold"]
        )
        final = verify_keyring_chain(
            [bytes.fromhex(m) for m in c["messages"]],
            trusted=anchor,
            policy=VerifyPolicy(**c["policy"]),
        )
        return jsonable(final.keyring.to_body())
    return jsonable(decode_envelope(bytes.fromhex(c["message"])).fields)


if __name__ == "__main__":
    main()
