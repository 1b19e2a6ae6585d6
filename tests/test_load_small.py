"""A small version of benchmarks/load.py in CI: 300 lightweight devices, a real
``fleetpush serve``, a rollout and four operators polling the API. Correctness only (no
timing assertions): the rollout completes with every device succeeded, every report is
stored exactly once, and no API call failed. The figures for 5,000 devices are in
docs/performance.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parents[1]


def test_load_300_devices_rollout_while_operators_query() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "load", "--quick", "--json"],
        capture_output=True, text=True, cwd=REPO, check=False, timeout=220,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout)["load"]
    assert figures["devices"] == 300
    assert figures["rollout_state"] == "completed"
    assert figures["states"] == {"succeeded": 300}
    assert figures["reports_stored"] == figures["reports_sent"] == 300 * 6
    assert figures["api_errors"] == 0
    assert figures["api_calls"] > 0
