"""Pure parts of creating and reverting rollouts: the dry-run plan, the gate view, the
version a device ran before, and the tar check of directory payloads."""

from __future__ import annotations

import gzip
import io
import tarfile
import tracemalloc
from pathlib import Path

import pytest

from fleetpush_sim.release import make_tar
from orchestrator.payloads import PayloadError, check_tar
from orchestrator.revert import version_before
from orchestrator.rollouts import TargetSpec, phase_key, plan_rollout
from orchestrator.rules import PhaseCounts, RolloutSpec, assign_phases, gate_view
from orchestrator.store import DeviceRecord, ReleaseRecord


def device(device_id: str, *, online: bool = True, model: str = "") -> DeviceRecord:
    return DeviceRecord(
        device_id=device_id, registry_groups=("g",), registry_model=model, operator_groups=(),
        operator_model="", claimed_groups=(), claimed_model="", tags={}, online=online,
        last_seen=0.0, first_seen=0.0, current_version="1.0", installed=(), client_version="",
        free_bytes=None,
    )  # fmt: skip


RELEASE = ReleaseRecord(
    id=7, name="app", version="2.0", sha256="0" * 64, size=1, models=("rpi4",),
    handler="directory", handler_args={}, metadata={}, created_at=0.0,
)  # fmt: skip


def test_plan_is_the_create_assignment_and_names_what_holds_devices_back() -> None:
    devices = [device(f"d-{i}") for i in range(8)]
    devices += [device("off", online=False), device("x86", model="x86"), device("pi", model="rpi4")]
    target = TargetSpec(groups=("g",))
    spec = RolloutSpec(phases=(10.0, 50.0, 100.0))
    plan = plan_rollout(target, spec, RELEASE, devices, {"d-3": 4})
    covered = [d.device_id for d in devices if d.device_id != "x86"]
    # The same order and phases the create stores, seeded by release and target only.
    assert plan.assignments == assign_phases(covered, phase_key(7, target), spec.phases)
    out = plan.to_json(spec.phases)
    assert [p["phase"] for p in out["phases"]] == [1, 2, 3]
    assert sum(len(p["devices"]) for p in out["phases"]) == out["total"] == 10
    held = {h["device"]: h for h in out["held"]}
    assert set(held) == {"off", "d-3", "x86"}
    assert held["off"]["reasons"] == ["offline"]
    assert held["d-3"]["reasons"] == ["other_rollout"]
    assert held["d-3"]["rollout_id"] == 4
    assert held["x86"]["phase"] is None
    assert plan.conflicts == {"d-3": 4}
    phase_of = {d: ph + 1 for d, _, ph in plan.assignments}
    assert held["off"]["phase"] == phase_of["off"]


def test_phase_key_ignores_time_and_target_order() -> None:
    a = phase_key(1, TargetSpec(groups=("a",), devices=("x",)))
    assert a == phase_key(1, TargetSpec(groups=("a",), devices=("x",)))
    assert a != phase_key(2, TargetSpec(groups=("a",), devices=("x",)))


@pytest.mark.parametrize(
    ("counts", "met", "stalled", "words"),
    [
        (PhaseCounts(total=2, succeeded=2), True, False, ""),
        (PhaseCounts(total=2, succeeded=1, failed=1), False, True, "rollout retry"),
        (PhaseCounts(total=2, succeeded=1, in_flight=1), False, False, "not finished yet"),
        (PhaseCounts(total=3, succeeded=2, waiting=1), True, False, ""),
    ],
)
def test_gate_view(counts: PhaseCounts, met: bool, stalled: bool, words: str) -> None:
    view = gate_view(counts, 2, 100.0)
    assert view["met"] is met
    assert view["stalled"] is stalled
    assert view["phase"] == 2
    assert words in view["next"]
    assert "phases 1-2" in view["needed"]


def test_version_before_is_the_first_accepted_report_of_the_rollout() -> None:
    history = [  # newest first, as the store answers
        {"rollout_id": "5", "current_version": "2.0", "accepted": True},
        {"rollout_id": "5", "current_version": "1.0", "accepted": True},
        {"rollout_id": "5", "current_version": "0.1", "accepted": False},
        {"rollout_id": "4", "current_version": "0.9", "accepted": True},
    ]
    assert version_before(history, 5) == "1.0"
    assert version_before(history, 6) is None


def _gz(data: bytes) -> bytes:
    return gzip.compress(data)


TAR = make_tar({"app/VERSION": b"2.0\n", "app/bin": b"x" * 5000})


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (TAR, None),
        (_gz(TAR), None),
        (b"hello, not a tar\n", "not a readable tar"),
        (TAR[:700], "not a readable tar"),  # truncated inside a member
        (_gz(TAR)[:-20], "not a readable tar"),  # truncated gzip stream
        (make_tar({}), "empty"),
        (_gz(b"\x00" * 100), "not a readable tar"),
    ],
)
def test_check_tar(tmp_path: Path, payload: bytes, problem: str | None) -> None:
    path = tmp_path / "payload"
    path.write_bytes(payload)
    if problem is None:
        check_tar(path)
        return
    with pytest.raises(PayloadError, match=problem):
        check_tar(path)


def test_check_tar_streams(tmp_path: Path) -> None:
    """A large archive is read a block at a time, not into memory."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("big")
        info.size = 32 * 2**20
        tar.addfile(info, io.BytesIO(b"\x00" * info.size))
    path = tmp_path / "big.tar"
    path.write_bytes(buf.getvalue())
    del buf
    tracemalloc.start()
    try:
        check_tar(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20
