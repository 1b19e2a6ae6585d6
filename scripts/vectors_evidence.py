"""Test vectors for a failure report's output tail (issue 18): ``Report.output``.

Imported by scripts/gen_test_vectors.py, which runs and writes every case. The field is
optional and absent from every other report, so reports written before it keep their
bytes; a reader that predates it ignores it as an unknown field.
"""

from __future__ import annotations

from typing import Any

from msgspec.structs import replace
from vectors_integrators import _report, device_case

from fleetpush_protocol.envelope import encode_message
from fleetpush_protocol.messages import ErrorInfo, ReportState, StepOutput
from fleetpush_sim.signing import raw_envelope

__all__ = ["evidence_cases"]

HEALTH = StepOutput(
    step="health_check",
    printed=4242,
    stdout="checking the app on :8080\n",
    stderr="GET / -> connection refused\nself-test failed\n",
)


def evidence_cases() -> list[dict[str, Any]]:
    rolled_back = _report(
        state=ReportState.ROLLED_BACK,
        progress=None,
        error=ErrorInfo(
            code="health_check_failed", message="health check exit 1: self-test failed"
        ),
        output=(HEALTH,),
    )
    failed = replace(rolled_back, state=ReportState.FAILED, output=(
        StepOutput(step="install", printed=3, stdout="", stderr="no\n"),
        StepOutput(step="rollback", printed=0, stdout="", stderr=""),
    ))  # fmt: skip
    body = rolled_back.to_body()
    step = body["output"][0]
    return [
        device_case(
            "report-accept-rolled-back-with-output",
            "A rolled_back report with the end of what its health check printed (issue 18).",
            encode_message(rolled_back),
            "accept",
            topic="report",
        ),
        device_case(
            "report-accept-failed-with-two-outputs",
            "A failed report: the failing step's output and the failed rollback's.",
            encode_message(failed),
            "accept",
            topic="report",
        ),
        device_case(
            "report-output-outside-failure",
            "A succeeded report carrying an output: output is only for failed and rolled_back.",
            raw_envelope({**body, "state": "succeeded", "error": None}, []),
            "malformed",
            topic="report",
        ),
        device_case(
            "report-output-bad-step-name",
            "An output whose step name is not [A-Za-z0-9][A-Za-z0-9_.:-]{0,63} (here: markup).",
            raw_envelope({**body, "output": [{**step, "step": "<b>install</b>"}]}, []),
            "malformed",
            topic="report",
        ),
        device_case(
            "report-output-stream-too-long",
            "An output stream longer than 8192 characters.",
            raw_envelope({**body, "output": [{**step, "stdout": "x" * 8193}]}, []),
            "malformed",
            topic="report",
        ),
        device_case(
            "report-output-too-many-steps",
            "More than 4 step outputs in one report.",
            raw_envelope({**body, "output": [step] * 5}, []),
            "malformed",
            topic="report",
        ),
        device_case(
            "report-output-empty",
            "An empty output list: absent, not empty, when there is none.",
            raw_envelope({**body, "output": []}, []),
            "malformed",
            topic="report",
        ),
    ]
