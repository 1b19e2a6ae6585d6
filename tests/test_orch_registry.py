"""Groups and model are the registry's facts; a device's inventory is only a claim.

Pure logic (what counts as a mismatch, who a target covers) and the real SQLite store and
registry file: the sync from ``identities.json``, the migration of a database whose model
came from inventory, and ingestion that stores claims and never moves the facts.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from fleetpush_common.clock import ManualClock
from fleetpush_protocol.messages import Inventory
from orchestrator.broker.credentials import ORCHESTRATOR_ROLE
from orchestrator.broker.registry import Identity, IdentityRegistry
from orchestrator.config import ConfigError, parse_config
from orchestrator.registry_sync import WRITE_TRIES, RegistrySync
from orchestrator.rollouts import TargetSpec, resolve_targets
from orchestrator.store import (
    Database,
    DeviceFilter,
    DeviceRecord,
    ReleaseRecord,
    SQLiteStore,
    Store,
    StoreUnavailableError,
)
from orchestrator.store.schema import MIGRATIONS

T = TypeVar("T")

T0 = 1_800_000_000.0


def _device(**kw: Any) -> DeviceRecord:
    base: dict[str, Any] = {
        "device_id": "d", "registry_groups": ("beta",), "registry_model": "rpi4",
        "operator_groups": (), "operator_model": "", "claimed_groups": ("beta",),
        "claimed_model": "rpi4", "tags": {}, "online": True, "last_seen": T0,
        "first_seen": T0, "current_version": "", "installed": (), "client_version": "",
        "free_bytes": None,
    }  # fmt: skip
    return DeviceRecord(**{**base, **kw})


@pytest.mark.parametrize(
    ("fields", "mismatch"),
    [
        ({}, False),
        ({"claimed_groups": ("beta", "canary", "prod")}, True),  # claims more groups
        ({"claimed_groups": ()}, True),  # its configuration lost a provisioned group
        ({"claimed_model": "rpi5"}, True),
        ({"operator_groups": ("eu",)}, False),  # operator groups are not in its config
        ({"claimed_groups": ("beta", "eu"), "operator_groups": ("eu",)}, False),
        ({"operator_model": "rpi5"}, True),  # the operator corrected the model
        ({"registry_model": "", "claimed_model": "x"}, False),  # no known model to differ
        ({"claimed_groups": (), "claimed_model": ""}, False),  # no inventory yet
    ],
)
def test_claims_mismatch(fields: dict[str, Any], mismatch: bool) -> None:
    assert _device(**fields).claims_mismatch is mismatch


def test_targets_follow_the_registry_never_the_claims() -> None:
    rel = ReleaseRecord(1, "app", "2", "ab" * 32, 1, ("rpi4",), "directory", {}, {}, T0)
    devices = [
        _device(device_id="honest"),
        _device(device_id="liar", registry_groups=("alpha",), claimed_groups=("beta",)),
        _device(device_id="wrong-hw", registry_model="rpi3", claimed_model="rpi4"),
        _device(device_id="labelled", registry_groups=(), operator_groups=("beta",)),
        _device(device_id="fixed", registry_model="rpi3", operator_model="rpi4"),
    ]
    chosen = resolve_targets(TargetSpec(groups=("beta",)), devices, rel)
    assert chosen == ["honest", "labelled", "fixed"]


def _store(tmp_path: Path) -> SQLiteStore:
    store = SQLiteStore(tmp_path / "db.sqlite")
    store.migrate()
    return store


def _inventory(device: str, groups: tuple[str, ...], model: str) -> Inventory:
    return Inventory(device_id=device, model=model, groups=groups, client_version="1",
                     installed=(), free_bytes=1, at=int(T0))  # fmt: skip


def test_migration_turns_the_inventory_model_into_a_claim(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0])
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    db.execute("INSERT INTO schema_version VALUES (1)")
    db.execute(
        "INSERT INTO devices (device_id, model, reported_groups, groups_) "
        "VALUES ('old', 'rpi4', '[\"beta\", \"prod\"]', '[\"eu\"]')"
    )
    db.commit()
    db.close()
    store = SQLiteStore(path)
    store.migrate()
    d = store.get_device("old")
    assert (d.model, d.groups) == ("", ("eu",))
    assert (d.claimed_model, d.claimed_groups) == ("rpi4", ("beta", "prod"))
    store.close()


async def test_registry_sync_follows_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broker" / "identities.json"
    db = Database(lambda: _store(tmp_path))
    sync = RegistrySync(db, path, ManualClock(T0))
    try:
        assert await sync.refresh() == 0  # no registry: nothing to apply
        with IdentityRegistry(path).locked() as reg:
            reg.put(Identity("dev-1", groups=("beta",), model="rpi4"))
            reg.put(Identity("orch", role=ORCHESTRATOR_ROLE))
        assert await sync.refresh() == 1
        # Two writes in quick succession, same size: still seen.
        with IdentityRegistry(path).locked() as reg:
            reg.put(Identity("dev-1", groups=("prod",), model="rpi4"))
        assert await sync.refresh() == 1
        assert await sync.refresh() == 0
        devices = await db.run(lambda s: s.list_devices(DeviceFilter()))
        assert [(d.device_id, d.groups) for d in devices] == [("dev-1", ("prod",))]
        # A damaged registry changes nothing (and is retried once repaired).
        good = path.read_bytes()
        path.write_text("{not json")
        assert await sync.refresh() == 0
        d = await db.run(lambda s: s.get_device("dev-1"))
        assert d.groups == ("prod",)
        path.write_bytes(good.replace(b'"prod"', b'"beta"'))
        assert await sync.refresh() == 1
    finally:
        db.close()


class _AbortsFirstWrites(Database):
    """A real SQLite database whose first ``aborts`` calls fail as PostgreSQL fails the
    transaction it picks to end a deadlock (seen in CI: ingestion and the registry's upsert
    of the same device rows)."""

    aborts = 2

    async def run(self, fn: Callable[[Store], T]) -> T:
        if self.aborts:
            self.aborts -= 1
            raise StoreUnavailableError("database postgresql://db: deadlock detected")
        return await super().run(fn)


async def test_a_registry_write_aborted_by_the_database_is_tried_again(tmp_path: Path) -> None:
    path = tmp_path / "broker" / "identities.json"
    db = _AbortsFirstWrites(lambda: _store(tmp_path))
    sync = RegistrySync(db, path, ManualClock(T0))
    try:
        with IdentityRegistry(path).locked() as reg:
            reg.put(Identity("dev-1", groups=("beta",), model="rpi4"))
        assert await sync.refresh() == 1  # two aborts, then applied
        assert db.aborts == 0
        d = await db.run(lambda s: s.get_device("dev-1"))
        assert d.groups == ("beta",)
        # Past the last try: the last facts stay, the request is not failed, and the next
        # refresh applies the change.
        with IdentityRegistry(path).locked() as reg:
            reg.put(Identity("dev-1", groups=("prod",), model="rpi4"))
        db.aborts = WRITE_TRIES
        assert await sync.refresh() == 0
        assert (await db.run(lambda s: s.get_device("dev-1"))).groups == ("beta",)
        assert await sync.refresh() == 1
        assert (await db.run(lambda s: s.get_device("dev-1"))).groups == ("prod",)
    finally:
        db.close()


def test_registry_file_setting(tmp_path: Path) -> None:
    cfg = parse_config({"data_dir": "data"}, tmp_path)
    assert cfg.registry_path == tmp_path / "data" / "broker" / "identities.json"
    cfg = parse_config({"data_dir": "data", "registry": {"file": "b/ids.json"}}, tmp_path)
    assert cfg.registry_path == tmp_path / "b" / "ids.json"
    with pytest.raises(ConfigError, match=r"\[registry\] path: unknown setting"):
        parse_config({"data_dir": "data", "registry": {"path": "x"}}, tmp_path)
