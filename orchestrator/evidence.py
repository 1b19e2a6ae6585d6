"""The evidence of a failure (issue 18): the output tail a failed or rolled_back report
carries, as the orchestrator accepts, stores and shows it.

A device's text is never trusted. The protocol's decode already refused a report whose
output is longer than the format allows (``MAX_OUTPUT_CHARS`` per stream, ``MAX_OUTPUTS``
steps, a step name of ``[A-Za-z0-9_.:-]``): such a report is malformed and dropped. What
passes is cleaned again here (escape sequences and control characters, exactly as the
device should have done: ``fleetpush_protocol.output.clean_text``) and cut to its last
``ingest.max_output_bytes`` in all, before it reaches the database. The dashboard sets it
as text (``textContent``), never as markup; the CLI prints it cleaned.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from fleetpush_protocol.messages import Report, StepOutput
from fleetpush_protocol.output import clean_text, fit_outputs

__all__ = ["OutputRecord", "accept_output", "dump_output", "load_output"]


def accept_output(report: Report, max_bytes: int) -> Report:
    """``report`` with its output cleaned and bounded (absent when ``max_bytes`` is 0)."""
    if not report.output:
        return report
    if max_bytes <= 0:
        return msgspec.structs.replace(report, output=msgspec.UNSET)
    return msgspec.structs.replace(report, output=fit_outputs(report.output, max_bytes))


def dump_output(outputs: Sequence[StepOutput]) -> str:
    return json.dumps([msgspec.to_builtins(o) for o in outputs], ensure_ascii=False)


def load_output(text: str) -> list[dict[str, Any]]:
    """Stored output as JSON-ready rows, cleaned once more: rows written by anything but
    ``accept_output`` (a restored backup, a hand edit) get the same treatment on the way out."""
    rows: list[dict[str, Any]] = []
    for o in json.loads(text):
        rows.append({
            "step": clean_text(str(o.get("step", "")))[:64],
            "printed": int(o.get("printed", 0)),
            "stdout": clean_text(str(o.get("stdout", ""))),
            "stderr": clean_text(str(o.get("stderr", ""))),
        })  # fmt: skip
    return rows


@dataclass(frozen=True, slots=True)
class OutputRecord:
    """One stored failure output, with the report it came with and its release."""

    device_id: str
    counter: int
    rollout_id: int
    notice_id: str
    state: str
    reported_at: int
    received_at: float
    error_code: str
    error_message: str
    release: str  # name@version, "" when the rollout is gone
    output: str  # JSON, as stored

    def to_json(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "counter": self.counter,
            "rollout_id": self.rollout_id,
            "notice_id": self.notice_id,
            "state": self.state,
            "reported_at": self.reported_at,
            "received_at": self.received_at,
            "error_code": self.error_code,
            "error_message": clean_text(self.error_message),
            "release": self.release,
            "output": load_output(self.output),
        }
