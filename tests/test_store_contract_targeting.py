"""The store's contract, continued: targets resolved by the database, keyset paging and the
bulk registry import, on SQLite and on PostgreSQL (the ``store`` fixture runs each test on
both; PostgreSQL is a private server, never a mock).

The database's target resolution must give exactly what the Python rules give
(``select_targets`` + ``assign_phases``, which the dry run still uses): the same devices,
positions and phases.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
from store_helpers import raw_sql

from orchestrator.config import DatabaseConfig
from orchestrator.rollouts import TargetSpec, active_owners, phase_key, select_targets, selector
from orchestrator.rules import PhaseCounts, RolloutSpec, assign_phases
from orchestrator.store import DeviceFilter, NoticeRecord, ReleaseRecord, Store, TargetSelector

T0 = 1_700_000_000.0
pytestmark = pytest.mark.integration

MODELS = ("rpi4", "rpi3", "x86", "")
GROUPS = ("eu", "EU", "us", "beta", "prod", "a.b:c-d_e", "axb:c-d_e", "grüppe")


def _fleet(store: Store, n: int = 120, seed: int = 7) -> None:
    """Devices with registry groups and models, some with operator groups, models, tags,
    and some not in the registry at all."""
    rng = random.Random(seed)
    ids = [f"d-{i:03d}" for i in range(n)] + ["Z", "a", "é-1"]  # byte order, not locale
    store.sync_registry(
        [(d, tuple(rng.sample(GROUPS, rng.randrange(3))), rng.choice(MODELS)) for d in ids
         if rng.random() < 0.9],
        T0,
    )  # fmt: skip
    store.ensure_devices(ids, T0)
    for d in rng.sample(ids, n // 4):
        store.set_device_labels(
            d, rng.sample(GROUPS, rng.randrange(2)), {"site": rng.choice("xy"), "k.1": "v"},
            rng.choice(("", "rpi4", "arm")),
        )  # fmt: skip


def _release(
    store: Store, models: tuple[str, ...] = ("rpi4", "rpi3"), v: str = "2"
) -> ReleaseRecord:
    return store.add_release(
        ReleaseRecord(0, "app", "2", "ab" * 32, 1, models, "directory", {}, {}, T0)
    )


TARGETS = [
    TargetSpec(all=True),
    TargetSpec(groups=("eu",)),
    TargetSpec(groups=("beta", "a.b:c-d_e"), models=("x86",)),
    TargetSpec(groups=("grüppe", "EU")),
    TargetSpec(devices=("d-001", "d-050", "Z", "é-1"), groups=("prod",)),
    TargetSpec(devices=("d-002",)),
    TargetSpec(groups=("nobody",)),
]
PHASES = [(100.0,), (1.0, 10.0, 50.0, 100.0), (33.3, 66.6, 100.0), (0.0, 100.0)]


@pytest.mark.parametrize("model_free", [False, True])
def test_database_resolution_equals_the_python_rules(store: Store, model_free: bool) -> None:
    _fleet(store)
    rel = _release(store, () if model_free else ("rpi4", "rpi3"))
    devices = store.list_devices(DeviceFilter(limit=10**6))
    for target in TARGETS:
        for phases in PHASES:
            spec = RolloutSpec(phases=phases)
            key = phase_key(rel.id, target)
            chosen, _ = select_targets(target, devices, rel)
            expected = assign_phases(chosen, key, phases)
            assert store.preview_targets(selector(target, rel)).total == len(chosen)
            r = store.create_rollout_for(
                release_id=rel.id, target=target.to_json(), spec=spec,
                selector=selector(target, rel), key=key, now=T0, actor="op",
            )  # fmt: skip
            got = [(t.device_id, t.position, t.phase)
                   for t in store.list_targets(r.id, limit=10**6)]  # fmt: skip
            assert got == expected, (target, phases)
            assert store.get_rollout(r.id).state == "running"
            store.update_rollout(r.id, T0, state="canceled")


def test_a_large_ordered_fleet_splits_into_the_same_phases(store: Store) -> None:
    ids = [f"dev-{i:05d}" for i in range(3001)]
    store.sync_registry([(d, ("fleet",), "rpi4") for d in ids], T0)
    rel = _release(store)
    target = TargetSpec(groups=("fleet",))
    phases = (0.1, 1.0, 12.5, 33.3333, 99.99, 100.0)
    r = store.create_rollout_for(
        release_id=rel.id, target=target.to_json(), spec=RolloutSpec(phases=phases),
        selector=selector(target, rel), key="k", now=T0, actor="op",
    )  # fmt: skip
    got = [(t.device_id, t.position, t.phase) for t in store.list_targets(r.id, limit=10**6)]
    assert got == assign_phases(ids, "k", phases)
    assert {p: c.total for p, c in store.phase_counts(r.id).items()} == dict(
        Counter(p for *_, p in got)
    )


def _counted(store: Store, rollout_id: int) -> dict[int, PhaseCounts]:
    """The phase counts as the targets' rows give them, one by one."""
    counts: dict[int, PhaseCounts] = {}
    for t in store.list_targets(rollout_id, limit=10**6):
        counts.setdefault(t.phase, PhaseCounts()).add(t.state, t.delivered)
    return counts


def test_phase_counts_from_sizes_equal_the_targets_rows(store: Store) -> None:
    """The counts read only the targets that left pending, and take the pending from each
    phase's size: through notices, cancels, timeouts, retries and targets added later they
    equal a count of every row."""
    _fleet(store)
    rel = _release(store)
    target = TargetSpec(all=True)
    r = store.create_rollout_for(
        release_id=rel.id, target=target.to_json(), spec=RolloutSpec(phases=(10.0, 50.0, 100.0)),
        selector=selector(target, rel), key="k", now=T0, actor="op",
    )  # fmt: skip
    assert store.phase_counts(r.id) == _counted(store, r.id)
    batch = store.pending_targets(r.id, 1, 20)
    seqs = store.reserve_seqs([f"device/{d}" for d, _ in batch], int(T0 * 1000))
    store.save_notices(
        [NoticeRecord(f"n-{d}", d, r.id, "notice", f"device/{d}", seqs[f"device/{d}"], f"t/{d}",
                      T0 + 1, T0 + 600, b"env") for d, _ in batch],
        {d: i % 3 != 0 for i, (d, _) in enumerate(batch)},
    )  # fmt: skip
    assert store.phase_counts(r.id) == _counted(store, r.id)
    store.cancel_device_targets(r.id, [d for d, _ in batch[:3]], T0 + 2, "operator")
    store.time_out_targets(r.id, T0 + 10**6, T0 + 3)  # every delivered one times out
    assert store.phase_counts(r.id) == _counted(store, r.id)
    store.retry_failed(r.id, T0 + 4)  # back to pending
    store.ensure_devices(["late-1", "late-2"], T0)
    assert store.add_targets(r.id, ["late-1", "late-2", batch[5][0]], 2, T0 + 5) == 2
    counts = store.phase_counts(r.id)
    assert counts == _counted(store, r.id)
    assert sum(c.total for c in counts.values()) == len(store.list_targets(r.id, limit=10**6))


def test_phase_sizes_that_fall_short_are_recounted_not_trusted(
    store: Store, database: DatabaseConfig
) -> None:
    """Sizes missing or short (targets written by a fleetpush before migration 13, or by
    hand) must not make a rollout look finished: the counts come from the rows then, and
    the sizes are repaired."""
    _fleet(store, n=30)
    rel = _release(store)
    target = TargetSpec(all=True)
    r = store.create_rollout_for(
        release_id=rel.id, target=target.to_json(), spec=RolloutSpec(phases=(50.0, 100.0)),
        selector=selector(target, rel), key="k", now=T0, actor="op",
    )  # fmt: skip
    want = _counted(store, r.id)
    raw_sql(database, "DELETE FROM rollout_phase_sizes")  # every size gone
    assert store.phase_counts(r.id) == want
    assert store.phase_counts(r.id) == want  # repaired: the fast path again
    store.cancel_device_targets(r.id, [t.device_id for t in store.list_targets(r.id)[:4]],
                                T0 + 1, "operator")  # fmt: skip
    raw_sql(database, "UPDATE rollout_phase_sizes SET size = 1")  # short: fewer than moved on
    assert store.phase_counts(r.id) == _counted(store, r.id)


def test_preview_counts_what_other_active_rollouts_hold(store: Store) -> None:
    _fleet(store)
    rel = _release(store)
    first = TargetSpec(groups=("eu",))
    second = TargetSpec(groups=("us",))
    for t in (first, second):
        store.create_rollout_for(
            release_id=rel.id, target=t.to_json(), spec=RolloutSpec(),
            selector=selector(t, rel), key="k", now=T0, actor="op",
        )  # fmt: skip
    devices = store.list_devices(DeviceFilter(limit=10**6))
    owners = active_owners(store)
    for target in TARGETS:
        chosen, _ = select_targets(target, devices, rel)
        expected = Counter(owners[d] for d in chosen if d in owners)
        preview = store.preview_targets(selector(target, rel))
        assert (preview.total, preview.held) == (len(chosen), dict(expected))
    assert store.missing_devices(["d-001", "nope", "Z", "also-not", "nope"]) == [
        "also-not",
        "nope",
    ]
    assert store.missing_devices([]) == []


def test_follow_adds_matching_devices_after_the_last_position(store: Store) -> None:
    store.sync_registry([(d, ("fleet",), "rpi4") for d in ("a", "b", "c")], T0)
    rel = _release(store)
    target = TargetSpec(groups=("fleet",))
    sel = selector(target, rel)
    r = store.create_rollout_for(
        release_id=rel.id, target=target.to_json(), spec=RolloutSpec(phases=(50, 100)),
        selector=sel, key="k", now=T0, actor="op",
    )  # fmt: skip
    assert store.follow_targets(r.id, sel, rel.version, 1, T0) == 0  # all in already
    store.sync_registry(
        [(d, ("fleet",), "rpi4") for d in ("a", "b", "c", "f", "e", "g")]
        + [("h", ("fleet",), "x86"), ("i", ("other",), "rpi4")],
        T0,
    )
    other = store.create_rollout(
        release_id=rel.id, target={}, spec=RolloutSpec(), assignments=[("g", 0, 0)], now=T0,
        actor="op",
    )  # fmt: skip
    assert store.follow_targets(r.id, sel, "none-runs-this", 1, T0 + 1) == 2  # e, f
    added = [(t.device_id, t.position, t.phase) for t in store.list_targets(r.id)][3:]
    assert added == [("e", 3, 1), ("f", 4, 1)]
    store.update_rollout(other.id, T0, state="completed")
    assert store.follow_targets(r.id, sel, "none-runs-this", 1, T0 + 2) == 1  # g, freed
    assert store.phase_counts(r.id) == _counted(store, r.id)  # sizes grew with each follow


# --- device pages ----------------------------------------------------------------------


def test_keyset_pages_cover_the_fleet_once_in_order(store: Store) -> None:
    _fleet(store)
    everything = [d.device_id for d in store.list_devices(DeviceFilter(limit=10**6))]
    assert everything == sorted(everything, key=lambda s: s.encode())  # byte order
    for f in ({}, {"group": "eu"}, {"tag": "site=x"}, {"model": "rpi4"}, {"tag": "k.1"}):
        full = [d.device_id for d in store.list_devices(DeviceFilter(limit=10**6, **f))]  # type: ignore[arg-type]
        for size in (1, 7, len(full) or 1, len(full) + 1):
            pages, after = [], None
            while True:
                page = store.list_devices(DeviceFilter(limit=size, after=after, **f))  # type: ignore[arg-type]
                pages += [d.device_id for d in page]
                if len(page) < size:
                    break
                after = page[-1].device_id
            assert pages == full, (f, size)
    last = everything[-1]
    assert store.list_devices(DeviceFilter(after=last)) == []
    assert store.list_devices(DeviceFilter(after="\U0010ffff")) == []
    # a cursor that is no device's id starts after where it would sort
    between = [d.device_id for d in store.list_devices(DeviceFilter(after="d-0505", limit=2))]
    assert between == [d for d in everything if d > "d-0505"][:2]
    assert [d.device_id for d in store.list_devices(DeviceFilter(after="", limit=1))] == [
        everything[0]
    ]


def test_group_and_tag_filters_in_sql_equal_the_records(store: Store) -> None:
    _fleet(store)
    devices = store.list_devices(DeviceFilter(limit=10**6))
    for g in (*GROUPS, "nobody"):
        got = [d.device_id for d in store.list_devices(DeviceFilter(group=g, limit=10**6))]
        assert got == [d.device_id for d in devices if g in d.groups], g
    for tag in ("site", "site=x", "site=y", "k.1=v", "k.1=w", "nope"):
        key, sep, value = tag.partition("=")
        want = [d.device_id for d in devices
                if key in d.tags and (not sep or d.tags[key] == value)]  # fmt: skip
        assert [d.device_id for d in store.list_devices(DeviceFilter(tag=tag, limit=10**6))] == want


def test_group_membership_follows_every_edit(store: Store) -> None:
    """The membership table behind group pages and group targets is kept with both lists:
    registry imports that add, move and drop devices, and operator edits, in any order."""
    rng = random.Random(11)
    ids = [f"m-{i:02d}" for i in range(40)]
    store.ensure_devices(ids, T0)

    def check(step: int) -> None:
        devices = store.list_devices(DeviceFilter(limit=10**6))
        for g in GROUPS[:4]:
            want = [d.device_id for d in devices if g in d.groups]
            got = [d.device_id for d in store.list_devices(DeviceFilter(group=g, limit=10**6))]
            assert got == want, (step, g)
            assert store.preview_targets(TargetSelector(groups=(g,))).total == len(want)

    for step in range(30):
        if rng.random() < 0.5:
            store.sync_registry(
                [(d, tuple(rng.sample(GROUPS[:4], rng.randrange(3))), "rpi4")
                 for d in ids if rng.random() < 0.8],
                T0 + step,
            )  # fmt: skip
        else:
            for d in rng.sample(ids, 5):
                store.set_device_labels(d, rng.sample(GROUPS[:4], rng.randrange(3)), None)
        check(step)
    groups = store.get_device(ids[1]).groups
    store.set_device_labels(ids[1], None, {"k": "v"}, "x86")  # groups left as they are
    assert store.get_device(ids[1]).groups == groups
    check(30)
    store.sync_registry([], T0 + 31)  # every device leaves the registry
    check(31)


# --- registry import ---------------------------------------------------------------------


def test_bulk_registry_import_counts_only_changes(store: Store) -> None:
    ids = [f"r-{i:04d}" for i in range(2500)]
    assert store.sync_registry([(d, ("g",), "m") for d in ids], T0) == 2500
    assert store.sync_registry([(d, ("g",), "m") for d in ids], T0 + 1) == 0
    moved = [(d, ("g", "h") if i % 10 == 0 else ("g",), "m2" if i % 25 == 0 else "m")
             for i, d in enumerate(ids[:2000])]  # fmt: skip
    changed = sum(1 for i in range(2000) if i % 10 == 0 or i % 25 == 0)
    assert store.sync_registry(moved, T0 + 2) == changed + 500  # 500 left the registry
    gone = store.get_device(ids[-1])
    assert (gone.registry_groups, gone.registry_model, gone.first_seen) == ((), "", T0)
    d10 = store.get_device(ids[10])
    assert (d10.registry_groups, d10.model, d10.first_seen) == (("g", "h"), "m", T0)
    assert store.get_device(ids[50]).model == "m2"
    assert store.sync_registry([*moved, (ids[-1], ("g",), "m")], T0 + 3) == 1  # back in
    assert len(store.list_devices(DeviceFilter(group="g", limit=10**6))) == 2001


def test_selector_with_nothing_selects_nothing(store: Store) -> None:
    _fleet(store)
    assert store.preview_targets(TargetSelector()).total == 0
    assert store.preview_targets(TargetSelector(all=True, models=("nope",))).total == len(
        [d for d in store.list_devices(DeviceFilter(limit=10**6)) if not d.model]
    )
