"""The store's part of system releases (issue 18), on SQLite and on PostgreSQL: a release's
components kept in order, each target's component states from its latest report only, a
component payload counted as in use while a release lists it."""

from __future__ import annotations

import pytest

from fleetpush_protocol.components import ComponentState
from fleetpush_protocol.messages import ErrorInfo, Report, ReportState
from orchestrator.rules import RolloutSpec
from orchestrator.store import NoticeRecord, ReleaseRecord, Store

T0 = 1_700_000_000.0
pytestmark = pytest.mark.integration

PARTS = (
    {"name": "app", "handler": "directory", "sha256": "a1" * 32, "size": 10},
    {"name": "fw", "handler": "command", "sha256": "f1" * 32, "size": 20},
)


def _report(counter: int, state: ReportState, **parts: str) -> Report:
    error = ErrorInfo(code="install_failed", message="x") if state.value == "rolled_back" else None
    return Report(
        device_id="d", notice_id="n-d", rollout_id="1", state=state, current_version="",
        counter=counter, reported_at=int(T0), error=error,
        components=tuple(ComponentState(name=k, state=v) for k, v in parts.items()),
    )  # fmt: skip


def test_system_releases_targets_and_component_states(store: Store) -> None:
    rel = store.add_release(ReleaseRecord(
        0, "edge", "2", "ee" * 32, 90, (), "system", {}, {}, T0, components=PARTS))  # fmt: skip
    assert store.get_release(rel.id).components == PARTS
    assert store.find_release("edge", "2").to_json()["components"] == list(PARTS)
    assert store.sha256_in_use("f1" * 32)
    assert store.sha256_in_use("ee" * 32)
    assert not store.sha256_in_use("0f" * 32)
    r = store.create_rollout(release_id=rel.id, target={"all": True}, spec=RolloutSpec(),
                             assignments=[("d", 0, 0)], now=T0, actor="op")  # fmt: skip
    store.save_notices([NoticeRecord("n-d", "d", r.id, "notice", "device/d", 1, "t/d", T0,
                                     T0 + 600, b"env")], {"d": True})  # fmt: skip
    assert store.device_components("d") == []
    (t,) = store.list_targets(r.id)
    assert "components" not in t.to_json()
    store.ingest([_report(1, ReportState.NOTIFIED),  # no components: nothing stored yet
                  _report(3, ReportState.INSTALLING, app="installed", fw="installing")],
                 T0 + 1)  # fmt: skip
    store.ingest([_report(2, ReportState.DOWNLOADED, app="downloaded", fw="downloaded")],
                 T0 + 2)  # older, arriving later: changes nothing  # fmt: skip
    (t,) = store.list_targets(r.id)
    assert t.components == [{"name": "app", "state": "installed"},
                            {"name": "fw", "state": "installing"}]  # fmt: skip
    store.ingest([_report(4, ReportState.ROLLED_BACK, app="rolled_back", fw="rolled_back")],
                 T0 + 3)  # fmt: skip
    (found,) = store.device_components("d")
    assert (found["rollout_id"], found["state"]) == (r.id, "rolled_back")
    assert found["components"] == [{"name": "app", "state": "rolled_back"},
                                   {"name": "fw", "state": "rolled_back"}]  # fmt: skip
