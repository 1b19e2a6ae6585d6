"""Test vectors for security notices (issue 17): ``update_class`` and ``advisory``.

Imported by scripts/gen_test_vectors.py, which runs and writes every case. Both fields are
optional and absent from a feature notice, so every notice written before them keeps its
bytes; a reader that predates them ignores them as unknown fields (the signature covers
the body bytes, which it verifies unchanged) and treats the notice as a feature update.
"""

from __future__ import annotations

from typing import Any

from gen_test_vectors import S1, case, signed

from fleetpush_protocol.messages import SECURITY, Advisory
from fleetpush_sim.signing import make_notice, raw_envelope

__all__ = ["ADVISORY", "security_cases"]

ADVISORY = Advisory(
    cves=("CVE-2026-10001", "CVE-2026-10002"),
    disruptive=True,
    max_postpone_s=86400,
    severity="high",
    summary="Fixes a remote code execution in the update agent's HTTP parser.",
)


def security_cases() -> list[dict[str, Any]]:
    n = make_notice()
    body = make_notice(update_class=SECURITY, advisory=ADVISORY).to_body()
    advisory = body["advisory"]
    return [
        case(
            "notice-accept-security",
            "A security notice: update_class 'security' and its advisory (issue 17).",
            signed(make_notice(update_class=SECURITY, advisory=ADVISORY)),
            "accept",
        ),
        case(
            "notice-accept-security-no-cve",
            "A security fix without a CVE id: an empty cves list is valid.",
            signed(
                make_notice(
                    update_class=SECURITY,
                    advisory=Advisory(
                        cves=(),
                        disruptive=False,
                        max_postpone_s=0,
                        severity="low",
                        summary="Hardens file permissions.",
                    ),
                )
            ),
            "accept",
        ),
        case(
            "notice-accept-unknown-update-class",
            "An update class this reader does not know: valid, treated as a feature update.",
            raw_envelope({**n.to_body(), "update_class": "x-future-class"}, [S1]),
            "accept",
        ),
        case(
            "malformed-security-without-advisory",
            "update_class 'security' without an advisory.",
            raw_envelope({**n.to_body(), "update_class": SECURITY}, [S1]),
            "malformed",
        ),
        case(
            "malformed-advisory-without-security",
            "An advisory on a notice that is not a security update.",
            raw_envelope({**n.to_body(), "advisory": advisory}, [S1]),
            "malformed",
        ),
        case(
            "malformed-advisory-bad-cve",
            "An advisory whose CVE id is not CVE-YYYY-NNNN.",
            raw_envelope({**body, "advisory": {**advisory, "cves": ["CVE-26-1"]}}, [S1]),
            "malformed",
        ),
        case(
            "malformed-advisory-unknown-severity",
            "An advisory severity outside none/low/medium/high/critical.",
            raw_envelope({**body, "advisory": {**advisory, "severity": "urgent"}}, [S1]),
            "malformed",
        ),
        case(
            "malformed-advisory-missing-field",
            "An advisory without max_postpone_s: every advisory field is always written.",
            raw_envelope(
                {**body, "advisory": {k: v for k, v in advisory.items() if k != "max_postpone_s"}},
                [S1],
            ),
            "malformed",
        ),
    ]
