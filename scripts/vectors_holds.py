"""Test vectors for hold limits on notices (issue 18): the optional ``holds`` field.

Imported by scripts/gen_test_vectors.py, which runs and writes every case. The field is
absent unless the release caps holds, so every notice written before it keeps its bytes; a
reader that predates it ignores it as an unknown field (the signature covers the body bytes)
and, having no holds at all, installs as it always did.
"""

from __future__ import annotations

from typing import Any

from gen_test_vectors import S1, case, signed

from fleetpush_protocol.messages import HoldLimits
from fleetpush_sim.signing import make_notice, raw_envelope

__all__ = ["holds_cases"]


def holds_cases() -> list[dict[str, Any]]:
    body = make_notice(holds=HoldLimits(max_each_s=3600, max_total_s=14400)).to_body()
    holds = body["holds"]
    return [
        case(
            "notice-accept-holds",
            "A notice capping application holds: 1 h per hold, 4 h in total (issue 18).",
            signed(make_notice(holds=HoldLimits(max_each_s=3600, max_total_s=14400))),
            "accept",
        ),
        case(
            "notice-accept-holds-urgent",
            "An urgent release: max_total_s 0, so no application may hold it.",
            signed(make_notice(holds=HoldLimits(max_each_s=0, max_total_s=0))),
            "accept",
        ),
        case(
            "malformed-holds-negative",
            "A hold limit below zero.",
            raw_envelope({**body, "holds": {**holds, "max_each_s": -1}}, [S1]),
            "malformed",
        ),
        case(
            "malformed-holds-too-long",
            "A hold limit above 365 days.",
            raw_envelope({**body, "holds": {**holds, "max_total_s": 365 * 86400 + 1}}, [S1]),
            "malformed",
        ),
        case(
            "malformed-holds-missing-field",
            "holds without max_total_s: both fields are always written.",
            raw_envelope({**body, "holds": {"max_each_s": 60}}, [S1]),
            "malformed",
        ),
    ]
