"""The store's contract: every ``Store`` behaviour, checked on SQLite and on PostgreSQL.

Each test runs once per backend (the ``store`` and ``database`` fixtures in conftest.py);
PostgreSQL is a private server the session starts (initdb + pg_ctl), never a mock.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from dataclasses import replace
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner
from store_helpers import raw_sql, sql_rows

from fleetpush_protocol.messages import ErrorInfo, Inventory, Presence, Release, Report, ReportState
from orchestrator.broker import free_port
from orchestrator.cli.main import main
from orchestrator.config import ConfigError, DatabaseConfig, parse_config
from orchestrator.rules import PhaseCounts, RolloutSpec
from orchestrator.store import (
    ConflictError,
    Database,
    DeviceFilter,
    NotFoundError,
    NoticeRecord,
    ReleaseRecord,
    RolloutRecord,
    SchemaError,
    SQLiteStore,
    Store,
    StoreUnavailableError,
    open_store,
)
from orchestrator.store.postgres import redact
from orchestrator.store.postgres.local import LocalPostgres
from orchestrator.store.schema import MIGRATIONS
from orchestrator.store.sqlite.checkpoint import BACKSTOP_PAGES

T0 = 1_700_000_000.0
pytestmark = pytest.mark.integration


def _release(store: Store, version: str = "1", sha: str = "ab") -> ReleaseRecord:
    return store.add_release(
        ReleaseRecord(
            0, "app", version, sha * 32, 10, ("rpi4",), "directory", {"a": "b"}, {"m": "n"}, T0
        )
    )


def _rollout(store: Store, devices: list[str], **spec: object) -> RolloutRecord:
    rel = _release(store, version=f"v{len(store.list_releases())}")
    return store.create_rollout(
        release_id=rel.id, target={"all": True}, spec=RolloutSpec(**spec),  # type: ignore[arg-type]
        assignments=[(d, i, 0) for i, d in enumerate(devices)], now=T0, actor="op",
    )  # fmt: skip


def _report(
    device: str,
    counter: int,
    notice: str,
    state: ReportState,
    rollout: int = 1,
    *,
    error: ErrorInfo | None = None,
) -> Report:
    return Report(device_id=device, notice_id=notice, rollout_id=str(rollout), state=state,
                  current_version="2", counter=counter, reported_at=int(T0),
                  error=error)  # fmt: skip


def _notice(rollout: int, nid: str, device: str, seq: int, kind: str = "notice") -> NoticeRecord:
    return NoticeRecord(nid, device, rollout, kind, f"device/{device}", seq, f"t/{device}",
                        T0 + seq, T0 + 600, b"\x00env\xff")  # fmt: skip


def _inventory(device: str, groups: tuple[str, ...], model: str, version: str = "1") -> Inventory:
    return Inventory(device_id=device, model=model, groups=groups, client_version="c1",
                     installed=(Release(name="app", version=version),), free_bytes=5,
                     at=int(T0))  # fmt: skip


# --- schema ------------------------------------------------------------------------------


def test_migrations_are_one_history_and_idempotent(database: DatabaseConfig) -> None:
    store = open_store(database)
    assert store.migrate() == store.migrate() == len(MIGRATIONS)
    store.close()
    store = open_store(database)  # reopening applies nothing and keeps the data
    assert store.migrate() == len(MIGRATIONS)
    store.close()


def test_upgrading_keeps_every_rollout_target(
    database: DatabaseConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migration 11 rebuilds the targets table (to drop its foreign key) and 13 sizes each
    phase from it: a database made before them keeps every target, its indexes, and counts
    its phases as before."""
    from orchestrator.store.sql import base

    monkeypatch.setattr(base, "MIGRATIONS", MIGRATIONS[:10])
    open_store(database).close()
    # Rows as fleetpush before migration 11 wrote them (ids clear of the identity columns').
    raw_sql(database, "INSERT INTO releases (id, name, version, sha256, size, models, handler, "
                   "handler_args, created_at) VALUES (100, 'app', '1', 'ab', 1, '[]', "
                   "'directory', '{}', 0)")  # fmt: skip
    raw_sql(database, "INSERT INTO rollouts (id, release_id, target, spec, state, created_at, "
                   "updated_at) VALUES (100, 100, '{}', '{}', 'running', 0, 0)")  # fmt: skip
    raw_sql(database, "INSERT INTO rollout_targets (rollout_id, device_id, position, phase, state,"
                   " delivered, downloaded_bytes) VALUES (100, 'd1', 0, 0, 'pending', 0, NULL), "
                   "(100, 'd2', 1, 0, 'canceled', 0, NULL), "
                   "(100, 'd3', 2, 1, 'succeeded', 1, 7)")  # fmt: skip
    # every column of one row unlike its default, compared whole after the upgrade
    raw_sql(database, "UPDATE rollout_targets SET notice_id = 'n3', notified_at = 1.5, "
                   "updated_at = 2.5, last_counter = 9, reason = 'r', attempts = 4, "
                   """components = '[{"name": "c"}]' WHERE device_id = 'd3'""")  # fmt: skip
    every = "SELECT * FROM rollout_targets ORDER BY device_id"
    before = sql_rows(database, every)
    monkeypatch.undo()
    store = open_store(database)
    assert sql_rows(database, every) == before
    foreign = {
        "sqlite": "SELECT * FROM pragma_foreign_key_list('rollout_targets')",
        "postgresql": "SELECT conname FROM pg_constraint WHERE contype = 'f' "
        "AND conrelid = 'rollout_targets'::regclass",
    }
    assert sql_rows(database, foreign[database.backend]) == []
    try:
        targets = store.list_targets(100)
        assert [(t.device_id, t.position, t.phase, t.state, t.delivered) for t in targets] == [
            ("d1", 0, 0, "pending", False), ("d2", 1, 0, "canceled", False),
            ("d3", 2, 1, "succeeded", True),
        ]  # fmt: skip
        assert store.download_totals(100) == (1, 7)
        assert store.phase_counts(100) == {
            0: PhaseCounts(total=2, pending=1, canceled=1),
            1: PhaseCounts(total=1, succeeded=1),
        }
        second = _rollout(store, ["d9"])  # the rebuilt table takes new rollouts
        assert [t.device_id for t in store.list_targets(second.id)] == ["d9"]
    finally:
        store.close()
    indexes = (
        "SELECT count(*) FROM {} WHERE {} IN ('rollout_targets_state', 'rollout_targets_device')"
    )
    where = (
        ("sqlite_master", "name") if database.backend == "sqlite" else ("pg_indexes", "indexname")
    )
    assert sql_rows(database, indexes.format(*where)) == [(2,)]


def test_upgrading_fills_the_group_membership_from_both_lists(
    database: DatabaseConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migration 12 builds the membership table from the devices' registry and operator
    groups, so group pages and targets after an upgrade find the devices they did before."""
    from orchestrator.store.sql import base

    monkeypatch.setattr(base, "MIGRATIONS", MIGRATIONS[:11])
    store = open_store(database)
    store.ensure_devices(["a", "b", "c"], T0)
    store.close()
    raw_sql(
        database, """UPDATE devices SET registry_groups = '["eu", "beta"]' WHERE device_id = 'a'"""
    )
    raw_sql(database, """UPDATE devices SET groups_ = '["eu"]' WHERE device_id IN ('a', 'b')""")
    monkeypatch.undo()
    store = open_store(database)
    try:

        def ids(group: str) -> list[str]:
            return [d.device_id for d in store.list_devices(DeviceFilter(group=group))]

        assert (ids("eu"), ids("beta"), ids("us")) == (["a", "b"], ["a"], [])
    finally:
        store.close()


def test_a_newer_schema_is_refused(database: DatabaseConfig) -> None:
    open_store(database).close()
    raw_sql(database, f"UPDATE schema_version SET version = {len(MIGRATIONS) + 1}")  # noqa: S608
    with pytest.raises(SchemaError, match="newer than this fleetpush"):
        open_store(database)


# --- devices -----------------------------------------------------------------------------


def test_devices_register_list_filter_and_page(store: Store) -> None:
    store.ensure_devices(["b", "a", "C", "a"], T0)
    store.ensure_devices(["a"], T0 + 5)  # known devices are left as they are
    assert [d.device_id for d in store.list_devices(DeviceFilter())] == ["C", "a", "b"]
    assert store.get_device("a").first_seen == T0
    with pytest.raises(NotFoundError):
        store.get_device("zz")
    store.sync_registry([("a", ("beta",), "rpi4"), ("b", ("beta", "eu"), "rpi3")], T0)
    store.set_device_labels("C", ["eu"], {"site": "x", "rack": "1"})
    store.ingest([_inventory("b", ("eu",), "rpi3", version="7"),
                  Presence(device_id="a", online=True, at=int(T0))], T0 + 1)  # fmt: skip

    def ids(**f: object) -> list[str]:
        return [d.device_id for d in store.list_devices(DeviceFilter(**f))]  # type: ignore[arg-type]

    assert ids(group="eu") == ["C", "b"]
    assert ids(model="rpi4") == ["a"]
    assert ids(online=True) == ["a"]
    assert ids(online=False) == ["C", "b"]
    assert ids(version="7") == ["b"]
    assert ids(tag="site") == ["C"]
    assert ids(tag="site=x") == ["C"]
    assert ids(tag="site=y") == []
    assert ids(limit=2) == ["C", "a"]
    assert ids(limit=2, offset=2) == ["b"]
    assert store.online_count() == 1
    b = store.get_device("b")
    assert (b.current_version, b.client_version, b.free_bytes) == ("7", "c1", 5)
    assert b.installed == ({"name": "app", "version": "7"},)


def test_labels_registry_and_claims(store: Store) -> None:
    assert store.sync_registry([("a", ("beta",), "rpi4"), ("b", (), "")], T0) == 2
    assert store.sync_registry([("a", ("beta",), "rpi4"), ("b", (), "")], T0) == 0
    store.ingest([_inventory("a", ("beta", "prod"), "rpi9")], T0 + 1)
    a = store.get_device("a")
    assert (a.groups, a.model) == (("beta",), "rpi4")
    assert (a.claimed_groups, a.claimed_model, a.claims_mismatch) == (("beta", "prod"), "rpi9",
                                                                      True)  # fmt: skip
    assert [d.device_id for d in store.list_devices(DeviceFilter(group="prod"))] == []
    assert [d.device_id for d in store.list_devices(DeviceFilter(model="rpi9"))] == []
    assert store.claims_mismatch_count() == 1
    assert store.set_device_labels("a", ["prod"], None, "rpi9").model == "rpi9"
    assert store.claims_mismatch_count() == 0
    assert store.set_device_labels("a", ["eu"], {"k": "v"}, "").model == "rpi4"
    assert store.get_device("a").tags == {"k": "v"}
    assert store.claims_mismatch_count() == 1
    with pytest.raises(NotFoundError):
        store.set_device_labels("nobody", ["x"], None)
    store.sync_registry([("b", (), "")], T0 + 2)
    a = store.get_device("a")
    assert (a.registry_groups, a.groups, a.registry_model) == ((), ("eu",), "")


def test_presence_latest_device_time_wins(store: Store) -> None:
    # rules.presence_applies: out of order messages never turn a device back
    store.ingest([Presence(device_id="p", online=True, at=int(T0) + 10)], T0)
    store.ingest([Presence(device_id="p", online=False, at=int(T0) + 5)], T0 + 1)  # stale
    assert store.get_device("p").online
    assert store.get_device("p").last_seen == T0 + 1
    store.ingest([Presence(device_id="p", online=False, at=int(T0) + 10)], T0 + 2)  # tie: new
    assert not store.get_device("p").online
    # in one batch too, whatever the order
    store.ingest([Presence(device_id="q", online=True, at=int(T0) + 9),
                  Presence(device_id="q", online=False, at=int(T0) + 3)], T0 + 3)  # fmt: skip
    assert store.get_device("q").online


# --- ingestion ---------------------------------------------------------------------------


def test_reports_dedupe_check_the_notice_owner_and_count(store: Store) -> None:
    store.ensure_devices(["a", "b"], T0)
    r = _rollout(store, ["a", "b"])
    store.save_notices([_notice(r.id, "n-a", "a", 1)], {"a": True})
    batch = [
        _report("a", 1, "n-a", ReportState.DOWNLOADING, r.id),
        _report("a", 1, "n-a", ReportState.DOWNLOADING, r.id),  # redelivery
        _report("a", 2, "n-a", ReportState.SUCCEEDED, r.id),
        _report("b", 1, "n-a", ReportState.SUCCEEDED, r.id),  # about a's notice
        _report("a", 3, "n-a", ReportState.SUCCEEDED, r.id + 1),  # another rollout's
        Presence(device_id="b", online=True, at=int(T0)),
    ]
    result = store.ingest(batch, T0 + 1)
    assert (result.accepted, result.duplicates, result.rejected, result.presence) == (2, 1, 2, 1)
    again = store.ingest([_report("a", 1, "n-a", ReportState.DOWNLOADING, r.id)], T0 + 2)
    assert (again.accepted, again.duplicates) == (0, 1)
    assert store.state_counts(r.id) == {"succeeded": 1, "pending": 1}
    assert store.counters() == {"reports_ingested": 2, "reports_duplicate": 2,
                                "reports_rejected": 2}  # fmt: skip
    history = store.device_history("a")
    assert [(h["counter"], h["accepted"]) for h in history] == [(3, 0), (2, 1), (1, 1)]
    assert history[1]["state"] == "succeeded"
    assert history[1]["received_at"] == T0 + 1
    assert [h["counter"] for h in store.device_history("a", limit=1)] == [3]
    assert store.get_device("b").current_version == "2"  # a rejected report still says so


def test_downloaded_bytes_detail_and_field_versions(store: Store) -> None:
    """Issue 15: what devices downloaded, per rollout and in the counters; the detail in the
    history; how many devices run each version (the bases deltas are made from)."""
    r = _rollout(store, ["a", "b", "c"])  # its release is 10 bytes
    store.save_notices([_notice(r.id, f"n-{d}", d, 1) for d in "abc"], dict.fromkeys("abc", True))
    assert store.download_totals(r.id) == (0, 0)
    store.ingest([
        msgspec.structs.replace(_report("a", 1, "n-a", ReportState.DOWNLOADED, r.id),
                                downloaded=3, detail="rebuilt from a delta"),
        msgspec.structs.replace(_report("b", 1, "n-b", ReportState.DOWNLOADED, r.id),
                                downloaded=10),
        _report("c", 1, "n-c", ReportState.DOWNLOADED, r.id),  # an older device: no figure
    ], T0 + 1)  # fmt: skip
    store.ingest([_inventory("a", (), "m", version="2"), _inventory("b", (), "m", version="2"),
                  _inventory("c", (), "m", version="1")], T0 + 2)  # fmt: skip
    assert store.download_totals(r.id) == (2, 13)
    counters = store.counters()
    assert (counters["payload_bytes_downloaded"], counters["payload_bytes_saved"]) == (13, 7)
    (first,) = store.device_history("a")
    assert (first["downloaded"], first["detail"]) == (3, "rebuilt from a delta")
    assert store.device_history("c")[0]["downloaded"] is None
    assert store.version_counts() == {"2": 2, "1": 1}


def test_reports_out_of_order_never_move_a_target_back(store: Store) -> None:
    r = _rollout(store, ["a"])
    store.save_notices([_notice(r.id, "n", "a", 1)], {"a": True})
    store.ingest([_report("a", 5, "n", ReportState.FAILED, r.id,
                          error=ErrorInfo(code="E_X", message="boom"))], T0 + 1)  # fmt: skip
    store.ingest([_report("a", 4, "n", ReportState.DOWNLOADING, r.id)], T0 + 2)
    (t,) = store.list_targets(r.id)
    assert (t.state, t.reason, t.delivered) == ("failed", "E_X: boom", True)


def test_a_large_batch_moves_each_target_to_its_latest_report(store: Store) -> None:
    # More reports than one INSERT statement takes, several per target, out of order, with
    # redeliveries inside the batch and of an earlier batch.
    r = _rollout(store, ["a", "b"])
    store.save_notices([_notice(r.id, "n-a", "a", 1), _notice(r.id, "n-b", "b", 2)],
                       {"a": True, "b": True})  # fmt: skip
    store.ingest([_report("a", 150, "n-a", ReportState.DOWNLOADING, r.id)], T0)
    counters = list(range(1, 301))
    random.Random(7).shuffle(counters)
    batch = [_report("a", c, "n-a", ReportState.DOWNLOADING, r.id) for c in counters if c != 300]
    batch.insert(120, _report("a", 300, "n-a", ReportState.SUCCEEDED, r.id))
    batch.append(_report("a", 5, "n-a", ReportState.DOWNLOADING, r.id))
    batch += [_report("b", 3, "n-b", ReportState.FAILED, r.id,
                      error=ErrorInfo(code="E_X", message="boom")),
              _report("b", 1, "n-b", ReportState.DOWNLOADING, r.id)]  # fmt: skip
    result = store.ingest(batch, T0 + 1)
    assert (result.accepted, result.duplicates, result.rejected) == (301, 2, 0)
    assert sorted(result.stored["a"]) == sorted([*range(1, 301), 5])
    targets = {t.device_id: t for t in store.list_targets(r.id)}
    assert (targets["a"].state, targets["a"].reason) == ("succeeded", "")
    assert (targets["b"].state, targets["b"].reason) == ("failed", "E_X: boom")
    assert len(store.device_history("a", limit=1000)) == 300
    assert store.counters()["reports_ingested"] == 302


def test_reports_are_stored_once_under_concurrent_writers(database: DatabaseConfig) -> None:
    # PostgreSQL's Database runs calls on several threads at once (one SQLite thread).
    db = Database(lambda: open_store(database))
    try:
        rid = db.call(lambda s: _rollout(s, ["a"]).id)
        db.call(lambda s: s.save_notices([_notice(rid, "n", "a", 1)], {"a": True}))
        batch = [_report("a", c, "n", ReportState.DOWNLOADING, rid) for c in range(1, 51)]

        async def all_at_once() -> list[int]:
            results = await asyncio.gather(
                *(db.run(lambda s: s.ingest(batch, T0 + 1)) for _ in range(6))
            )
            return [x.accepted for x in results]

        assert sum(asyncio.run(all_at_once())) == 50
        assert db.call(lambda s: s.counters())["reports_ingested"] == 50
        assert len(db.call(lambda s: s.device_history("a", limit=1000))) == 50
        assert db.call(lambda s: s.list_targets(rid))[0].state == "downloading"
    finally:
        db.close()


def test_ingest_says_what_is_stored_to_acknowledge(store: Store) -> None:
    r = _rollout(store, ["a"])
    store.save_notices([_notice(r.id, "n", "a", 1)], {"a": True})
    first = store.ingest([_report("a", 1, "n", ReportState.DOWNLOADING, r.id)], T0)
    again = store.ingest([_report("a", 1, "n", ReportState.DOWNLOADING, r.id),
                          _report("a", 2, "n", ReportState.SUCCEEDED, r.id)], T0 + 1)  # fmt: skip
    assert (first.stored, again.stored) == ({"a": [1]}, {"a": [1, 2]})


def test_flagged_devices_and_counters(store: Store) -> None:
    store.ensure_devices(["a"], T0)
    store.flag_devices({("a", "rate_limited"): 3, ("new", "oversize"): 1}, T0 + 1)
    store.flag_devices({("a", "oversize"): 2}, T0 + 2)
    a, new = store.get_device("a"), store.get_device("new")
    assert (a.limited, a.limited_at, a.limited_reason) == (5, T0 + 2, "oversize")
    assert (new.limited, new.first_seen) == (1, T0 + 1)
    assert a.to_json()["flagged"] is True
    counters = store.counters()
    assert (counters["messages_rate_limited"], counters["messages_oversize"]) == (3, 3)


def test_prune_keeps_the_newest_reports_of_each_device(store: Store) -> None:
    r = _rollout(store, ["a", "b"])
    store.save_notices([_notice(r.id, "na", "a", 1), _notice(r.id, "nb", "b", 1)], {})
    for c in range(1, 6):
        store.ingest([_report("a", c, "na", ReportState.DOWNLOADING, r.id),
                      _report("b", c, "nb", ReportState.DOWNLOADING, r.id)], T0 + c)  # fmt: skip
    # keep 3 per device, nothing too old: 2 of each go, in two steps of at most 3 rows
    assert store.prune_reports(keep=3, before=0, after_device="", limit=3) == (3, "a")
    assert store.prune_reports(keep=3, before=0, after_device="a", limit=3) == (1, None)
    assert [h["counter"] for h in store.device_history("a")] == [5, 4, 3]
    assert [h["counter"] for h in store.device_history("b")] == [5, 4, 3]
    # and by age
    assert store.prune_reports(keep=3, before=T0 + 4.5, after_device="", limit=100) == (4, None)
    assert [h["counter"] for h in store.device_history("a")] == [5]
    assert store.counters()["reports_pruned"] == 8


# --- releases ----------------------------------------------------------------------------


def test_releases_add_find_list_delete(store: Store) -> None:
    rel = _release(store)
    assert rel.id > 0
    assert rel.models == ("rpi4",)
    assert rel.handler_args == {"a": "b"}
    assert store.get_release(rel.id) == rel == store.find_release("app", "1")
    with pytest.raises(ConflictError):
        _release(store)
    with pytest.raises(NotFoundError):
        store.get_release(rel.id + 100)
    with pytest.raises(NotFoundError):
        store.find_release("app", "9")
    assert store.sha256_in_use("ab" * 32)
    assert not store.sha256_in_use("cd" * 32)
    unused = _release(store, version="2", sha="cd")
    assert [x.id for x in store.list_releases()] == [rel.id, unused.id]
    assert store.delete_release(unused.id, T0) == unused  # never used: gone
    with pytest.raises(NotFoundError):
        store.get_release(unused.id)
    r = store.create_rollout(release_id=rel.id, target={}, spec=RolloutSpec(),
                             assignments=[], now=T0, actor="op")  # fmt: skip
    with pytest.raises(ConflictError, match="active rollout"):
        store.delete_release(rel.id, T0)
    store.update_rollout(r.id, T0, state="completed")
    store.delete_release(rel.id, T0)  # used by a finished rollout: hidden, kept
    assert store.list_releases() == []
    assert store.get_release(rel.id) == rel
    assert not store.sha256_in_use("ab" * 32)
    _release(store)  # the name and version are free again


# --- rollouts ----------------------------------------------------------------------------


def test_rollouts_create_update_list_and_count(store: Store) -> None:
    store.ensure_devices(["a", "b", "c"], T0)
    r = _rollout(store, ["a", "b", "c"])
    assert (r.state, r.phase, r.phase_started_at, r.created_by) == ("running", 0, T0, "op")
    assert r.target == {"all": True}
    assert r.spec == RolloutSpec()
    later = _rollout(store, ["a"], start_at=T0 + 3600)
    assert (later.state, later.phase_started_at) == ("scheduled", None)
    with pytest.raises(NotFoundError):
        store.create_rollout(release_id=999, target={}, spec=RolloutSpec(), assignments=[],
                             now=T0, actor="op")  # fmt: skip
    with pytest.raises(NotFoundError):
        store.get_rollout(999)
    u = store.update_rollout(r.id, T0 + 1, state="paused", reason="why", gate_met_at=T0)
    assert (u.state, u.reason, u.gate_met_at, u.updated_at) == ("paused", "why", T0, T0 + 1)
    with pytest.raises(ValueError, match="cannot update"):
        store.update_rollout(r.id, T0, release_id=2)
    assert [x.id for x in store.list_rollouts()] == [r.id, later.id]
    assert [x.id for x in store.list_rollouts(["scheduled"])] == [later.id]
    assert store.rollout_state_counts() == {"paused": 1, "scheduled": 1}
    assert store.phase_counts(r.id) == {0: PhaseCounts(total=3, pending=3)}
    assert store.active_target_ids() == {"a", "b", "c"}
    store.update_rollout(r.id, T0, state="canceled")
    assert store.active_target_ids() == {"a"}


def test_targets_pending_add_timeout_retry_cancel(store: Store) -> None:
    store.ensure_devices(["a", "b", "c"], T0)
    store.ingest([Presence(device_id="b", online=True, at=int(T0))], T0)
    rel = _release(store)
    r = store.create_rollout(release_id=rel.id, target={}, spec=RolloutSpec(phases=(50, 100)),
                             assignments=[("a", 0, 0), ("b", 1, 0), ("c", 2, 1)], now=T0,
                             actor="op")  # fmt: skip
    assert store.pending_targets(r.id, 0, 10) == [("a", False), ("b", True)]
    assert store.pending_targets(r.id, 1, 2) == [("a", False), ("b", True)]
    assert store.add_targets(r.id, ["c", "d", "e"], 1, T0) == 2  # c is targeted already
    assert [(t.device_id, t.position, t.phase) for t in store.list_targets(r.id)][2:] == [
        ("c", 2, 1),
        ("d", 4, 1),
        ("e", 5, 1),
    ]  # fmt: skip  (skipped c keeps its place)
    store.save_notices([_notice(r.id, "na", "a", 1), _notice(r.id, "nb", "b", 1)], {"b": True})
    assert [t.state for t in store.list_targets(r.id, state="sent")] == ["sent", "sent"]
    assert [t.device_id for t in store.list_targets(r.id, limit=1)] == ["a"]
    # b reports, then goes silent; a never came online: its timeout has not started
    store.ingest([_report("b", 1, "nb", ReportState.INSTALLING, r.id)], T0 + 10)
    assert store.time_out_targets(r.id, cutoff=T0 + 5, now=T0 + 100) == 0
    assert store.time_out_targets(r.id, cutoff=T0 + 50, now=T0 + 100) == 1
    (b,) = store.list_targets(r.id, state="timed_out")
    assert (b.device_id, b.reason) == ("b", "no report since installing for 90s")
    assert store.phase_counts(r.id)[0] == PhaseCounts(total=2, waiting=1, failed=1)
    assert store.retry_failed(r.id, T0 + 101) == 1
    b = store.list_targets(r.id, state="pending")[0]
    assert (b.device_id, b.attempts, b.reason) == ("b", 1, "")
    assert store.cancel_targets(r.id, T0 + 102, "operator") == ["a"]  # a had a notice out
    assert store.state_counts(r.id) == {"canceled": 5}
    assert {t.reason for t in store.list_targets(r.id)} == {"operator"}


# --- notices -----------------------------------------------------------------------------


def test_sequences_only_grow_and_survive_reopening(database: DatabaseConfig) -> None:
    store = open_store(database)
    seqs = store.reserve_seqs(["device/a", "group/x"], 1_000_000_000_000)
    assert seqs == {"device/a": 1_000_000_000_000, "group/x": 1_000_000_000_000}
    assert store.reserve_seqs(["device/a"], 5)["device/a"] == 1_000_000_000_001
    store.close()
    store = open_store(database)
    assert store.reserve_seqs(["device/a"], 5)["device/a"] == 1_000_000_000_002
    store.close()


def test_notices_supersede_publish_and_wait(store: Store) -> None:
    # rules.supersedes: one never acknowledged must not be sent again over a newer one
    store.ensure_devices(["a", "b"], T0)
    r = _rollout(store, ["a", "b"])
    store.save_notices([_notice(r.id, "a1", "a", 1), _notice(r.id, "b1", "b", 1)], {})
    assert {n.notice_id for n in store.unpublished_notices()} == {"a1", "b1"}
    assert store.unpublished_notices()[0].envelope == b"\x00env\xff"
    assert [d for d, _, _ in store.waiting_notices(r.id)] == ["a", "b"]
    assert store.waiting_notices(r.id)[0] == ("a", T0 + 1, T0 + 600)
    store.ingest([Presence(device_id="b", online=True, at=int(T0) + 5)], T0 + 5)
    assert store.replace_notices([_notice(r.id, "a2", "a", 2), _notice(r.id, "b2", "b", 2)]) == {
        "a"}  # fmt: skip
    assert {n.notice_id for n in store.unpublished_notices()} == {"a2", "b1"}
    assert [d for d, _, _ in store.waiting_notices(r.id)] == ["a"]
    store.save_notices([_notice(r.id, "a3", "a", 3, kind="cancel")], {})
    assert {n.notice_id for n in store.unpublished_notices()} == {"a3", "b1"}
    assert {t.notice_id for t in store.list_targets(r.id)} == {"a2", "b1"}  # a cancel: no target
    store.mark_published(["a3", "b1"])
    assert store.unpublished_notices() == []
    assert store.counters()["notices_published"] == 2
    assert len(store.unpublished_notices(limit=0)) == 0


def test_sent_notices_are_the_published_ones_no_device_answered(store: Store) -> None:
    # What the engine publishes again after a broker reconnect (it may have lost them).
    store.ensure_devices(["a", "b"], T0)
    r = _rollout(store, ["a", "b"])
    store.save_notices([_notice(r.id, "a1", "a", 1), _notice(r.id, "b1", "b", 1)], {})
    assert store.sent_notices() == []  # never published: the republish path's
    store.mark_published(["a1"])
    assert [(n.notice_id, n.envelope) for n in store.sent_notices()] == [("a1", b"\x00env\xff")]
    store.mark_published(["b1"])
    assert [n.notice_id for n in store.sent_notices()] == ["a1", "b1"]
    assert len(store.sent_notices(limit=1)) == 1
    store.cancel_targets(r.id, T0 + 2, "operator")
    assert store.sent_notices() == []


def test_a_report_about_a_replaced_notice_still_belongs_to_its_device(store: Store) -> None:
    r = _rollout(store, ["a"])
    store.save_notices([_notice(r.id, "a1", "a", 1)], {})
    store.replace_notices([_notice(r.id, "a2", "a", 2)])
    # a report about the older notice is the device's (accepted) but moves no target
    res = store.ingest([_report("a", 1, "a1", ReportState.DOWNLOADING, r.id)], T0 + 1)
    assert (res.accepted, res.rejected) == (1, 0)
    assert store.list_targets(r.id)[0].state == "sent"


# --- audit and tokens --------------------------------------------------------------------


def test_audit_and_tokens(store: Store) -> None:
    for i in range(3):
        store.add_audit(at=T0 + i, actor="op", action="x", subject=f"s{i}", detail={"i": i})
    entries = store.list_audit()
    assert [e.subject for e in entries] == ["s2", "s1", "s0"]
    assert entries[0].detail == {"i": 2}
    assert entries[0].at == T0 + 2
    assert [e.subject for e in store.list_audit(limit=1)] == ["s2"]
    assert [e.subject for e in store.list_audit(after_id=entries[1].id)] == ["s2"]
    store.add_token("ci", "operator", "f" * 64, T0)
    store.add_token("ro", "viewer", "e" * 64, T0)
    with pytest.raises(ConflictError):
        store.add_token("ci", "viewer", "d" * 64, T0)
    found = store.find_token("f" * 64)
    assert found is not None
    assert (found.name, found.role, found.revoked) == ("ci", "operator", False)
    assert store.find_token("0" * 64) is None
    store.revoke_token("ci")
    assert {(t.name, t.revoked) for t in store.list_tokens()} == {("ci", True), ("ro", False)}
    with pytest.raises(NotFoundError):
        store.revoke_token("nobody")


def test_a_failed_transaction_leaves_nothing(store: Store) -> None:
    rel = _release(store)
    with pytest.raises(NotFoundError):  # inside create_rollout's transaction
        store.create_rollout(release_id=rel.id + 1, target={}, spec=RolloutSpec(),
                             assignments=[("a", 0, 0)], now=T0, actor="op")  # fmt: skip
    assert store.list_rollouts() == []
    assert replace(rel) == store.get_release(rel.id)  # and the store still works


def test_postgres_restart_is_survived_by_the_pool(postgres: LocalPostgres) -> None:
    pg = LocalPostgres()  # a server of its own: this test stops it
    pg.start()
    try:
        url = pg.create_database("fleet")
        store = open_store(DatabaseConfig(url=url, pool_min=2, pool_max=2, connect_timeout_s=5))
        store.ensure_devices(["a"], T0)
        pg.restart()  # every pooled connection is dropped by the server
        store.ensure_devices(["b"], T0)
        assert [d.device_id for d in store.list_devices(DeviceFilter())] == ["a", "b"]
        pg.stop(remove=False)
        with pytest.raises(StoreUnavailableError, match="fleet"):
            store.get_device("a")
        store.close()
    finally:
        pg.stop()


def test_sqlite_checkpoints_on_a_thread_of_their_own(tmp_path: Path) -> None:
    # Once ingestion starts, the WAL is copied back into the database by the store's
    # checkpoint thread; the writer's own automatic checkpoint is only a backstop, far
    # above one batch.
    path = tmp_path / "db.sqlite"
    store = SQLiteStore(path)
    try:
        store.migrate()
        r = _rollout(store, ["a"])
        store.save_notices([_notice(r.id, "n", "a", 1)], {"a": True})
        before = path.stat().st_size
        batch = [_report("a", c, "n", ReportState.DOWNLOADING, r.id) for c in range(1, 3001)]
        assert store.ingest(batch, T0).accepted == 3000
        assert store.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == BACKSTOP_PAGES
        deadline = time.monotonic() + 60
        while path.stat().st_size <= before + 100_000:  # the reports' pages, checkpointed
            assert time.monotonic() < deadline, "nothing was checkpointed"
            time.sleep(0.05)
        assert "fleetpush-db-checkpoint" in {t.name for t in threading.enumerate()}
    finally:
        store.close()
    assert "fleetpush-db-checkpoint" not in {t.name for t in threading.enumerate()}


# --- configuration -----------------------------------------------------------------------


def test_database_setting(tmp_path: Path) -> None:
    cfg = parse_config({"data_dir": "data"}, tmp_path)
    assert cfg.database.backend == "sqlite"
    assert cfg.database.sqlite_path == cfg.db_path == tmp_path / "data" / "fleetpush.db"
    cfg = parse_config({"data_dir": "data", "database": {"url": "sqlite:///x/f.db"}}, tmp_path)
    assert cfg.db_path == tmp_path / "data" / "x" / "f.db"  # relative to the data folder
    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "pw").chmod(0o644)
    with pytest.raises(ConfigError, match=r"\[database\] password_file: .*chmod 600"):
        parse_config({"data_dir": "data", "database": {"password_file": "pw"}}, tmp_path)
    (tmp_path / "pw").chmod(0o600)
    cfg = parse_config({"data_dir": "data", "database": {
        "url": "postgresql://fp@db.example:5433/fleet", "password_file": "pw",
        "pool_min": 2, "pool_max": 20, "connect_timeout": "3s"}}, tmp_path)  # fmt: skip
    d = cfg.database
    assert (d.backend, d.password, d.pool_min, d.pool_max, d.connect_timeout_s) == (
        "postgresql", "s3cret", 2, 20, 3.0)  # fmt: skip
    assert "s3cret" not in repr(d)
    bad = [
        ({"url": "mysql://x"}, r"\[database\] url: expected sqlite"),
        ({"url": "sqlite:///"}, r"\[database\] url: sqlite:/// needs a file name"),
        ({"url": "postgresql:///fleet"}, r"\[database\] url: expected postgresql://"),
        ({"url": "postgresql://h/d", "pool_min": 5, "pool_max": 2}, r"pool_max: must be at"),
        ({"pool_max": 0}, r"\[database\] pool_max: must be 1..1000"),
        ({"password_file": "missing"}, r"\[database\] password_file: cannot read"),
        ({"pool": 1}, r"\[database\] pool: unknown setting"),
    ]
    for table, message in bad:
        with pytest.raises(ConfigError, match=message):
            parse_config({"data_dir": "data", "database": table}, tmp_path)


def test_passwords_are_kept_out_of_messages() -> None:
    assert redact("postgresql://fp:hunter2@db:5432/x") == "postgresql://fp:***@db:5432/x"
    assert redact("postgresql://fp@db/x") == "postgresql://fp@db/x"


def test_cli_names_an_unreachable_database_without_its_password(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    config = tmp_path / "orchestrator.toml"
    config.write_text(
        'data_dir = "data"\n[mqtt]\nurl = "mqtt://127.0.0.1:1"\n'
        f'[database]\nurl = "postgresql://fp:hunter2@127.0.0.1:{port}/fleet"\n'
        'connect_timeout = "1s"\n'
    )
    config.chmod(0o600)
    result = CliRunner().invoke(main, ["tokens", "list", "--config", str(config)])
    assert result.exit_code == 1, result.output
    assert f"database postgresql://fp:***@127.0.0.1:{port}/fleet: no connection" in result.output
    assert "hunter2" not in result.output
    assert "Traceback" not in result.output


def test_a_hold_is_kept_with_its_report(store: Store) -> None:
    """Issue 18: a deferred report's hold (who and why, until when) is in the history."""
    r = _rollout(store, ["a"])
    store.save_notices([_notice(r.id, "n-a", "a", 1)], {"a": True})
    why = "held by gate: call active"
    deferred = _report("a", 1, "n-a", ReportState.DEFERRED, r.id)
    held = msgspec.structs.replace(deferred, hold_reason=why, hold_until=int(T0) + 7200, detail=why)
    store.ingest([held, _report("a", 2, "n-a", ReportState.INSTALLING, r.id)], T0 + 1)
    later, first = store.device_history("a")
    assert (first["hold_reason"], first["hold_until"]) == ("held by gate: call active",
                                                           int(T0) + 7200)  # fmt: skip
    assert (later["hold_reason"], later["hold_until"]) == (None, None)
