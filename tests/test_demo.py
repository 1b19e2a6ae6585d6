"""``fleetpush demo``: the real console script, a real broker, orchestrator and 20 agents."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli.main import main

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def fleetpush() -> list[str]:
    """The installed console script, or the same entry point through this interpreter."""
    script = Path(sys.executable).parent / "fleetpush"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from orchestrator.cli.main import main; main()"]


def mosquittos_under(folder: Path, program: bytes = b"mosquitto") -> list[int]:
    """Pids of mosquitto (or ``program``) processes whose command line mentions ``folder``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(program) and str(folder).encode() in b" ".join(cmdline):
            found.append(int(proc.name))
    return found


def rollouts_under(folder: Path) -> int:
    """Rollouts in the database of the demo running under ``folder`` (0 until it has one)."""
    for db in folder.glob("fleetpush-demo-*/orch/fleetpush.db"):
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
            try:
                (n,) = con.execute("SELECT count(*) FROM rollouts").fetchone()
            finally:
                con.close()
        except sqlite3.Error:  # not created or not migrated yet
            continue
        return int(n)
    return 0


def demo_env(tmp_path: Path) -> dict[str, str]:
    # The demo's temporary folder goes under tmp_path, so the test can see what is left.
    return {**os.environ, "TMPDIR": str(tmp_path), "PATH": f"/usr/sbin:{os.environ['PATH']}"}


def test_demo_rolls_out_to_every_device_and_leaves_nothing_running(tmp_path: Path) -> None:
    result = subprocess.run(
        [*fleetpush(), "demo", "--devices", "20", "--json"],
        env=demo_env(tmp_path), capture_output=True, timeout=100, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    summary = json.loads(result.stdout)  # stdout holds only the JSON object
    assert summary["devices"] == 20
    assert summary["rollout_state"] == "completed"
    assert summary["final_states"] == {"succeeded": 20}
    assert summary["device_final_states"] == {"succeeded": 20}
    assert summary["devices_notified"] == 20
    assert 0 < summary["time_to_notify_s"] <= summary["time_to_complete_s"] < 60
    phases = summary["phases"]
    assert [p["devices"] for p in phases] == [2, 8, 10]
    assert [p["succeeded"] for p in phases] == [2, 8, 10]
    assert all(p["notify_s"] is not None and p["notify_s"] >= 0 for p in phases)
    assert summary["reports_ingested"] >= 20 * 5  # notified ... succeeded, per device
    assert mosquittos_under(tmp_path) == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(300)
def test_demo_with_replicas_finishes_when_one_is_sigkilled() -> None:
    """``--replicas 2 --kill-replica``: two serve processes on a private PostgreSQL; the
    rollout's driver is SIGKILLed after phase 1 is notified, the other finishes it. Each
    device got one notice, from one of the two; nothing is left running or on disk."""
    # PostgreSQL runs as the postgres user when the tests run as root: its folder must be
    # reachable, and pytest's own folders are 0700.
    tmp = Path(tempfile.mkdtemp(prefix="demo-replicas-", dir="/tmp"))
    tmp.chmod(0o755)
    try:
        result = subprocess.run(
            [*fleetpush(), "demo", "--devices", "10", "--replicas", "2", "--kill-replica",
             "--json"],
            env=demo_env(tmp), capture_output=True, timeout=280, check=False,
        )  # fmt: skip
        left = list(tmp.iterdir())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    summary = json.loads(result.stdout)
    assert summary["rollout_state"] == "completed"
    assert summary["devices_succeeded"] == 10
    assert summary["replicas"] == 2
    killed = summary["killed_replica"]
    sent = summary["notices_by_replica"]
    assert killed in sent
    assert sum(sent.values()) == 10  # one notice per device, across the replicas
    assert 0 < sent[killed] < 10  # the killed one sent phase 1, the other the rest
    assert mosquittos_under(tmp) == []
    assert left == []


def test_demo_on_a_broker_cluster_finishes_when_the_devices_node_is_sigkilled(
    tmp_path: Path,
) -> None:
    """``--broker-cluster 3``: three nats-server nodes, every device on node a, the
    orchestrator on b; a is SIGKILLed once the first device verified its notice, the
    devices move on and all succeed; nothing is left running or on disk."""
    result = subprocess.run(
        [*fleetpush(), "demo", "--devices", "6", "--soak", "0.2", "--broker-cluster", "3",
         "--json"],
        env=demo_env(tmp_path), capture_output=True, timeout=110, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    summary = json.loads(result.stdout)
    assert summary["rollout_state"] == "completed"
    assert summary["devices_succeeded"] == 6
    assert summary["broker_nodes"] == 3
    assert (summary["devices_started_on"], summary["orchestrator_on"]) == ("a", "b")
    assert summary["killed_broker_node"] == "a"
    where = summary["devices_by_node"]
    assert where["a"] == 0
    assert where["b"] + where["c"] == 6
    assert summary["time_to_reconnect_s"] > 0
    assert summary["device_final_states"] == {"succeeded": 6}  # as the devices say
    assert mosquittos_under(tmp_path, b"nats-server") == []
    assert list(tmp_path.iterdir()) == []


def test_demo_stops_everything_on_sigterm(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [*fleetpush(), "demo", "--devices", "30", "--soak", "30", "--json"],
        env=demo_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        # Until the rollout exists: with its 30 s soak it is then certainly under way, so
        # the signal lands while agents, orchestrator and broker all run.
        deadline = time.monotonic() + 60
        while not rollouts_under(tmp_path):
            assert time.monotonic() < deadline, "the demo never started its rollout"
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        assert mosquittos_under(tmp_path)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err.decode()[-2000:]
    assert b"Traceback" not in err
    assert mosquittos_under(tmp_path) == []
    assert list(tmp_path.iterdir()) == []


def test_demo_without_mosquitto_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # The real finder, on a machine where neither PATH nor the usual sbin folders hold it.
    monkeypatch.setattr(shutil, "which", lambda *_a, **_k: None)
    monkeypatch.setattr(os, "access", lambda *_a, **_k: False)
    result = CliRunner().invoke(main, ["demo", "--devices", "3"])
    assert result.exit_code == 2
    assert "mosquitto is not installed" in result.output
    assert "apt-get install mosquitto" in result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)


def test_the_demo_view_keeps_its_bars_at_80_columns() -> None:
    from rich.console import Console

    from fleetpush_sim.cli import demo_view

    big = {"failed": 4000, "in_flight": 4000, "pending": 4000, "waiting_offline": 4000,
           "canceled": 0}  # fmt: skip
    status = {
        "id": 1, "release": {"name": "demo-app", "version": "2.0.0"}, "state": "running",
        "devices": 5000, "reason": "", "states": {"succeeded": 2500},
        "phases": [
            {"index": i + 1, "percent": pct, "devices": 2500, "succeeded": 2500, "open": True,
             **big}
            for i, pct in enumerate((10, 50, 100))
        ],
    }  # fmt: skip
    console = Console(width=80, record=True, color_system=None)
    console.print(demo_view(status, "devices that verified a notice: 2500/5000"))
    lines = console.export_text().splitlines()
    rows = [line for line in lines if line.startswith("phase ")]
    assert len(rows) == 3
    for row in rows:
        assert len(row) <= 80
        assert row.count("━") >= 10, row  # the bar, not squeezed out by the counts
