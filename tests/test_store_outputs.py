"""The store's contract for failure outputs (issue 18), on SQLite and on PostgreSQL.

The ``store`` fixture (conftest.py) runs each test once per backend.
"""

from __future__ import annotations

import pytest

from fleetpush_protocol.messages import ErrorInfo, Report, ReportState, StepOutput
from orchestrator.rules import RolloutSpec
from orchestrator.store import NoticeRecord, ReleaseRecord, RolloutRecord, Store

T0 = 1_700_000_000.0
pytestmark = pytest.mark.integration


def _rollout(store: Store, devices: list[str]) -> RolloutRecord:
    rel = store.add_release(ReleaseRecord(
        0, "app", f"v{len(store.list_releases())}", "ab" * 32, 10, (), "command", {}, {}, T0
    ))  # fmt: skip
    return store.create_rollout(
        release_id=rel.id, target={"all": True}, spec=RolloutSpec(),
        assignments=[(d, i, 0) for i, d in enumerate(devices)], now=T0, actor="op",
    )  # fmt: skip


def _notice(rollout: int, nid: str, device: str) -> NoticeRecord:
    return NoticeRecord(nid, device, rollout, "notice", f"device/{device}", 1, f"t/{device}",
                        T0, T0 + 600, b"env")  # fmt: skip


def _failed(device: str, counter: int, notice: str, rollout: int, text: str = "") -> Report:
    return Report(
        device_id=device, notice_id=notice, rollout_id=str(rollout),
        state=ReportState.ROLLED_BACK, current_version="1", counter=counter,
        reported_at=int(T0) + counter,
        error=ErrorInfo(code="health_check_failed", message="health check exit 1"),
        output=(StepOutput(step="health_check", printed=5, stdout=text or f"out {counter}",
                           stderr="err"),),
    )  # fmt: skip


def test_outputs_are_stored_with_their_release_and_listed_newest_first(store: Store) -> None:
    r1, r2 = _rollout(store, ["a"]), _rollout(store, ["a"])
    store.save_notices([_notice(r1.id, "n1", "a"), _notice(r2.id, "n2", "a")], {"a": True})
    store.ingest([_failed("a", 1, "n1", r1.id), _failed("a", 2, "n2", r2.id)], T0 + 5)
    store.ingest([_failed("a", 2, "n2", r2.id, "a duplicate")], T0 + 6)  # stored once
    logs = store.device_outputs("a")
    assert [(x.counter, x.rollout_id, x.release) for x in logs] == [
        (2, r2.id, "app@v1"), (1, r1.id, "app@v0")]  # fmt: skip
    entry = logs[0].to_json()
    assert entry["output"] == [
        {"step": "health_check", "printed": 5, "stdout": "out 2", "stderr": "err"}]  # fmt: skip
    assert (entry["state"], entry["error_code"], entry["received_at"]) == (
        "rolled_back", "health_check_failed", T0 + 5)  # fmt: skip
    assert [x.counter for x in store.device_outputs("a", r1.id)] == [1]
    assert set(store.rollout_outputs(r2.id, ["a", "b"])) == {"a"}


def test_a_report_about_another_devices_notice_keeps_no_output(store: Store) -> None:
    r = _rollout(store, ["a", "b"])
    store.save_notices([_notice(r.id, "na", "a")], {"a": True})
    result = store.ingest([_failed("b", 1, "na", r.id)], T0)
    assert result.rejected == 1
    assert store.device_outputs("b") == []


def test_outputs_are_pruned_with_their_reports_and_beyond_the_newest_kept(store: Store) -> None:
    r = _rollout(store, ["a"])
    store.save_notices([_notice(r.id, "n", "a")], {"a": True})
    for c in range(1, 8):
        store.ingest([_failed("a", c, "n", r.id)], T0 + c)
    # reports: keep 5 (1 and 2 go, and their outputs); outputs: keep 3 (3 and 4 go too)
    assert store.prune_reports(keep=5, before=0, after_device="", limit=100,
                               keep_outputs=3) == (2, None)  # fmt: skip
    assert [x.counter for x in store.device_outputs("a")] == [7, 6, 5]
    assert [h["counter"] for h in store.device_history("a")] == [7, 6, 5, 4, 3]
    # by age, with the reports received before it
    store.prune_reports(keep=100, before=T0 + 6.5, after_device="", limit=100, keep_outputs=10)
    assert [x.counter for x in store.device_outputs("a")] == [7]
    assert store.counters()["outputs_pruned"] == 6
