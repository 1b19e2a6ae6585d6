"""Run the protocol test vectors (docs/protocol/test-vectors.json) through this implementation.

A vector gives the trusted root keys, keyrings already trusted, the device's identity and
stored state, the verification time and the message as hex, and the expected outcome:
``accept`` with the decoded body, or an error code. See docs/protocol.md, "Test vectors".

A case this runner cannot even set up (a policy outside its bounds, bad hex) fails on its
own with ``invalid_case``; the other cases still run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fleetpush_protocol.envelope import decode_envelope, verify_device_message
from fleetpush_protocol.errors import ContentError
from fleetpush_protocol.payload import PayloadCheck
from fleetpush_protocol.verify import (
    DeviceIdentity,
    SeenSequence,
    TrustedKeyring,
    VerifyPolicy,
    verify_keyring,
    verify_keyring_chain,
    verify_notice,
)

__all__ = [
    "INVALID_CASE",
    "KINDS",
    "VectorResult",
    "differences",
    "jsonable",
    "run_case",
    "run_vectors",
]

KINDS = frozenset({"notice", "keyring", "keyring_chain", "payload", "device_message"})
INVALID_CASE = "invalid_case"  # the ``actual`` of a case that could not be run at all


def jsonable(value: Any) -> Any:
    """A decoded body as JSON: byte strings become lowercase hex strings."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, Mapping):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


@dataclass(frozen=True)
class VectorResult:
    name: str
    expected: str  # "accept" or an error code
    actual: str
    ok: bool
    detail: str = ""
    # For an accepted case whose decoded body differs: (path, expected, actual) per field.
    differences: tuple[tuple[str, Any, Any], ...] = ()


_ABSENT = "<absent>"


def differences(expected: Any, actual: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """Where two decoded bodies differ, as (dotted path, expected, actual), in key order."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        out = []
        for key in sorted(set(expected) | set(actual)):
            sub = f"{path}.{key}" if path else key
            if key not in actual:
                out.append((sub, expected[key], _ABSENT))
            elif key not in expected:
                out.append((sub, _ABSENT, actual[key]))
            else:
                out.extend(differences(expected[key], actual[key], sub))
        return out
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        out = []
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            out.extend(differences(e, a, f"{path}[{i}]"))
        return out
    return [] if expected == actual else [(path or "$", expected, actual)]


def _trust(case: Mapping[str, Any], policy: VerifyPolicy) -> TrustedKeyring:
    t = case["trust"]
    anchor = TrustedKeyring.anchor([bytes.fromhex(k) for k in t["root_keys"]], t["root_threshold"])
    return verify_keyring_chain(
        [bytes.fromhex(m) for m in t.get("keyrings", [])], trusted=anchor, policy=policy
    )


def _policy(case: Mapping[str, Any]) -> VerifyPolicy:
    return VerifyPolicy(**case.get("policy", {}))


def _body_of(data: bytes, policy: VerifyPolicy) -> dict[str, Any]:
    return jsonable(decode_envelope(data, max_bytes=policy.max_message_bytes).fields)  # type: ignore[no-any-return]


def _evaluate(case: Mapping[str, Any]) -> tuple[str, dict[str, Any] | None]:
    policy = _policy(case)
    kind = case["kind"]
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}")
    if kind == "device_message":
        data = bytes.fromhex(case["message"])
        verify_device_message(
            data,
            kind=case["topic"],
            device_id=case["device"]["device_id"],
            max_bytes=policy.max_message_bytes,
        )
        return "accept", _body_of(data, policy)
    trusted = _trust(case, policy)
    if kind == "keyring":
        data = bytes.fromhex(case["message"])
        verify_keyring(data, trusted=trusted, policy=policy)
        return "accept", _body_of(data, policy)
    if kind == "keyring_chain":
        chain = [bytes.fromhex(m) for m in case["messages"]]
        final = verify_keyring_chain(chain, trusted=trusted, policy=policy)
        return "accept", jsonable(final.keyring.to_body())
    d = case["device"]
    device = DeviceIdentity(
        device_id=d["device_id"],
        model=d["model"],
        groups=frozenset(d["groups"]),
        current_version=d["current_version"],
    )
    state = case.get("state", {})
    seen = {
        scope: SeenSequence(seq=v["seq"], digest=bytes.fromhex(v["digest"]))
        for scope, v in state.get("seen", {}).items()
    }
    data = bytes.fromhex(case["message"])
    verified = verify_notice(
        data,
        keyring=trusted,
        device=device,
        seen=seen,
        trusted_time=state.get("trusted_time", 0),
        now=case["now"],
        policy=policy,
    )
    if kind == "payload":
        notice = verified.message
        size, sha = notice.payload.size, notice.payload.sha256  # type: ignore[union-attr]
        check = PayloadCheck(size, sha)
        check.update(bytes.fromhex(case["payload"]))
        check.finish()
    return "accept", _body_of(data, policy)


def run_case(case: Mapping[str, Any]) -> VectorResult:
    """Run one vector; never raises for a content error, only reports it."""
    exp = case["expected"]
    expected = "accept" if exp["outcome"] == "accept" else str(exp["code"])
    try:
        actual, decoded = _evaluate(case)
    except ContentError as e:
        return VectorResult(case["name"], expected, e.code, e.code == expected, str(e))
    except (ValueError, TypeError, KeyError) as e:
        # Only this case is unusable (an out-of-bounds policy, bad hex, a missing field).
        what = f"missing field {e}" if isinstance(e, KeyError) else str(e)
        return VectorResult(case["name"], expected, INVALID_CASE, False, what)
    if expected != "accept":
        return VectorResult(case["name"], expected, actual, False, "accepted")
    if "decoded" in exp and decoded != exp["decoded"]:
        diff = tuple(differences(exp["decoded"], decoded))
        return VectorResult(
            case["name"], expected, "accept", False, "decoded fields differ", differences=diff
        )
    return VectorResult(case["name"], expected, actual, True)


def run_vectors(document: Mapping[str, Any]) -> list[VectorResult]:
    return [run_case(case) for case in document["cases"]]
