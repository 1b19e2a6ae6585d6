"""docs/quickstart.md, run exactly as written: its shell blocks, in order, in one bash.

HOME is a temporary folder, so the doc's ``~/fleetpush-quickstart`` lands there; the
script runs from the checkout (the doc's first block puts ``.venv/bin`` on PATH). The
script is its own process group: whatever it leaves running is stopped by group id, and
the broker (its own session, started by ``quickstart run``) through its pid file.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from orchestrator.broker import find_mosquitto

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "quickstart.md"
BLOCK = re.compile(r"^```sh\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def doc_script() -> str:
    blocks = BLOCK.findall(DOC.read_text())
    assert len(blocks) >= 5, "docs/quickstart.md lost its shell blocks"
    return "set -eu\n" + "\n".join(blocks)


def _gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def _stop_group(pgid: int, within: float) -> bool:
    """Wait for the group to end; SIGKILL what is left. Whether it ended by itself."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if _gone(pgid):
            return True
        time.sleep(0.1)
    os.killpg(pgid, signal.SIGKILL)
    return False


def _stop_broker(pid_file: Path) -> bool:
    """Kill the quickstart's mosquitto if it outlived the script; whether it had."""
    try:
        pid = int(pid_file.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False
    if b"mosquitto" not in cmdline or str(pid_file.parent).encode() not in cmdline:
        return False
    os.kill(pid, signal.SIGKILL)
    return True


def test_the_quickstart_runs_as_written_up_to_a_device_reporting_succeeded(
    tmp_path: Path,
) -> None:
    try:
        find_mosquitto()
    except RuntimeError:
        pytest.skip("mosquitto is not installed")
    qs = tmp_path / "fleetpush-quickstart"
    env = {**os.environ, "HOME": str(tmp_path), "COLUMNS": "120"}
    for name in ("FLEETPUSH_SERVER", "FLEETPUSH_TOKEN", "FLEETPUSH_CONFIG", "FLEETPUSH_DATA"):
        env.pop(name, None)
    proc = subprocess.Popen(
        ["bash", "-c", doc_script()],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"the quickstart did not finish:\n{out.decode(errors='replace')}")
    finally:
        stopped = _stop_group(proc.pid, 30)
        orphan = _stop_broker(qs / "data" / "broker" / "mosquitto.pid")
    text = out.decode(errors="replace")
    log = qs / "run.log"
    detail = f"{text}\n--- run.log:\n{log.read_text() if log.exists() else '(none)'}"
    assert proc.returncode == 0, detail
    assert re.search(r"^.*dev-001\b.*\bsucceeded\b", text, re.MULTILINE), detail
    slot = qs / "devices" / "dev-001" / "state" / "slots" / "current" / "hello.txt"
    assert slot.read_text() == "hello from 1.0\n"
    # The doc's own stop step stopped everything: nothing had to be killed.
    assert stopped, detail
    assert not orphan, "quickstart run left its broker running"
    assert "stopped" in log.read_text()
