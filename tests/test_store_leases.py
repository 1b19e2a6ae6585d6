"""The store's replica contract, on SQLite and PostgreSQL: rollout leases, notices saved
under a lease, compare-and-set rollout updates, the replicas table. And two stores on one
PostgreSQL database (two replicas) racing for the same rollout: each target notified once.
"""

from __future__ import annotations

import threading

import pytest
from store_helpers import raw_sql

from orchestrator.config import DatabaseConfig
from orchestrator.rules import RolloutSpec
from orchestrator.store import (
    ConflictError,
    LeaseLostError,
    NoticeRecord,
    ReleaseRecord,
    RolloutRecord,
    Store,
    open_store,
)

T0 = 1_700_000_000.0
pytestmark = pytest.mark.integration


def _rollout(store: Store, devices: list[str]) -> RolloutRecord:
    rel = store.add_release(
        ReleaseRecord(0, "app", "1", "ab" * 32, 10, ("rpi4",), "directory", {}, {}, T0)
    )
    return store.create_rollout(
        release_id=rel.id, target={"all": True}, spec=RolloutSpec(),
        assignments=[(d, i, 0) for i, d in enumerate(devices)], now=T0, actor="op",
    )  # fmt: skip


def _notice(rollout: int, nid: str, device: str, seq: int) -> NoticeRecord:
    return NoticeRecord(nid, device, rollout, "notice", f"device/{device}", seq, f"t/{device}",
                        T0, T0 + 600, b"env")  # fmt: skip


def test_a_lease_is_held_renewed_and_taken_over_only_after_it_expires(store: Store) -> None:
    a = _rollout(store, ["d1"])
    assert store.claim_rollouts("r1", [a.id], T0, T0 + 10) == [a.id]
    assert store.claim_rollouts("r2", [a.id], T0 + 5, T0 + 15) == []  # r1's still
    assert store.claim_rollouts("r1", [a.id], T0 + 9, T0 + 19) == [a.id]  # renewed
    assert store.claim_rollouts("r2", [a.id], T0 + 18, T0 + 28) == []
    assert store.claim_rollouts("r2", [a.id], T0 + 19.5, T0 + 29) == [a.id]  # expired: taken
    assert store.rollout_leases() == {a.id: ("r2", T0 + 29)}
    assert store.release_rollouts("r1") == 0  # not r1's any more
    assert store.release_rollouts("r2", [a.id]) == 1
    assert store.claim_rollouts("r1", [a.id], T0 + 20, T0 + 30) == [a.id]  # free again


def test_notices_are_saved_only_under_the_lease_and_for_pending_targets(store: Store) -> None:
    r = _rollout(store, ["d1", "d2", "d3"])
    with pytest.raises(LeaseLostError):  # never claimed
        store.save_notices_leased("r1", r.id, [_notice(r.id, "n1", "d1", 1)], {}, T0)
    store.claim_rollouts("r1", [r.id], T0, T0 + 10)
    kept = store.save_notices_leased(
        "r1", r.id, [_notice(r.id, "n1", "d1", 1), _notice(r.id, "n2", "d2", 1)], {}, T0 + 1
    )
    assert [n.notice_id for n in kept] == ["n1", "n2"]
    # d1 is sent already: a second notice for it (a stalled twin) is not stored.
    again = store.save_notices_leased(
        "r1", r.id, [_notice(r.id, "n1b", "d1", 2), _notice(r.id, "n3", "d3", 1)], {}, T0 + 2
    )
    assert [n.notice_id for n in again] == ["n3"]
    assert {n.notice_id for n in store.unpublished_notices()} == {"n1", "n2", "n3"}
    assert store.notices_by_replica(r.id) == {"r1": 3}
    # Past the lease: nothing, even for a pending target.
    with pytest.raises(LeaseLostError):
        store.save_notices_leased("r1", r.id, [_notice(r.id, "n4", "d3", 3)], {}, T0 + 11)


def test_a_paused_rollout_takes_no_notices_even_from_its_holder(store: Store) -> None:
    r = _rollout(store, ["d1"])
    store.claim_rollouts("r1", [r.id], T0, T0 + 10)
    store.update_rollout(r.id, T0, expect=("running", None), state="paused")
    with pytest.raises(LeaseLostError, match="paused"):
        store.save_notices_leased("r1", r.id, [_notice(r.id, "n1", "d1", 1)], {}, T0 + 1)
    assert store.unpublished_notices() == []


def test_rollout_updates_compare_and_set(store: Store) -> None:
    r = _rollout(store, ["d1"])
    u = store.update_rollout(r.id, T0 + 1, expect=("running", 0), phase=1)
    assert u.phase == 1
    with pytest.raises(ConflictError, match="changed meanwhile"):
        store.update_rollout(r.id, T0 + 2, expect=("running", 0), phase=1)  # stale read
    with pytest.raises(ConflictError):
        store.update_rollout(r.id, T0 + 2, expect=("paused", None), state="running")
    assert store.get_rollout(r.id).phase == 1


def test_atomic_commits_together_or_not_at_all(store: Store) -> None:
    r = _rollout(store, ["d1", "d2"])

    def half(s: Store) -> None:
        s.cancel_device_targets(r.id, ["d1"], T0 + 1, "taken")
        s.update_rollout(r.id, T0 + 1, expect=("paused", None), state="running")  # lost

    with pytest.raises(ConflictError):
        store.atomic(half)
    assert store.state_counts(r.id) == {"pending": 2}  # the cancel went with it
    store.atomic(lambda s: s.cancel_device_targets(r.id, ["d1"], T0 + 2, "taken"))
    assert store.state_counts(r.id) == {"pending": 1, "canceled": 1}


def test_a_device_with_an_unpublished_notice_gets_no_other_until_it_is_published(
    store: Store,
) -> None:
    """Another replica stored a cancel for d1 and has not published it yet: a notice of
    this rollout stored now would reach the broker first and be replaced by it."""
    r = _rollout(store, ["d1", "d2"])
    store.save_notices([NoticeRecord("c1", "d1", 99, "cancel", "device/d1", 5, "t/d1", T0,
                                     T0 + 600, b"env")], {})  # fmt: skip
    store.claim_rollouts("r1", [r.id], T0, T0 + 10)
    batch = [_notice(r.id, "n1", "d1", 6), _notice(r.id, "n2", "d2", 6)]
    assert [n.notice_id for n in store.save_notices_leased("r1", r.id, batch, {}, T0)] == ["n2"]
    store.mark_published(["c1"])
    again = store.save_notices_leased("r1", r.id, [_notice(r.id, "n1b", "d1", 7)], {}, T0 + 1)
    assert [n.notice_id for n in again] == ["n1b"]


def test_replicas_register_beat_and_refuse_a_live_twin(store: Store) -> None:
    assert store.register_replica("a", "h1", 10, T0, live_after=T0 - 15, url_key_id="k1") is None
    store.beat_replica("a", T0 + 5)
    other = store.register_replica("a", "h2", 20, T0 + 6, live_after=T0 + 6 - 15, url_key_id="k2")
    assert other is not None
    assert (other.host, other.pid, other.seen_at, other.url_key_id) == ("h1", 10, T0 + 5, "k1")
    # Silent for longer than the lease: the id is free again, with the new key's name.
    assert store.register_replica("a", "h2", 20, T0 + 30, live_after=T0 + 30 - 15,
                                  url_key_id="k2") is None  # fmt: skip
    rows = [(r.replica_id, r.host, r.pid, r.url_key_id) for r in store.list_replicas()]
    assert rows == [("a", "h2", 20, "k2")]
    store.drop_replica("a", 10)  # an old pid drops nothing
    assert len(store.list_replicas()) == 1
    store.drop_replica("a", 20)
    assert store.list_replicas() == []


def test_a_replica_with_another_url_key_is_refused_while_one_with_the_first_lives(
    store: Store, database: DatabaseConfig
) -> None:
    assert store.register_replica("a", "h1", 10, T0, live_after=T0 - 15, url_key_id="k1") is None
    other = store.register_replica("b", "h2", 20, T0 + 1, live_after=T0 + 1 - 15, url_key_id="k2")
    assert other is not None
    assert (other.replica_id, other.url_key_id) == ("a", "k1")
    assert [r.replica_id for r in store.list_replicas()] == ["a"]  # nothing written
    # The same key is welcome.
    assert (
        store.register_replica("c", "h2", 30, T0 + 2, live_after=T0 - 13, url_key_id="k1") is None
    )
    # A row written before migration 14 names no key: it is no match, either way.
    raw_sql(database, "UPDATE replicas SET url_key_id = '' WHERE replica_id = 'c'")
    store.drop_replica("a", 10)
    assert (
        store.register_replica("b", "h2", 20, T0 + 3, live_after=T0 - 12, url_key_id="k2") is None
    )
    store.drop_replica("b", 20)
    # Once every replica with the first key is silent past the lease, another key may start
    # (the key replaced with every replica stopped).
    assert (
        store.register_replica("a", "h1", 10, T0 + 4, live_after=T0 - 11, url_key_id="k1") is None
    )
    assert (
        store.register_replica("e", "h2", 50, T0 + 30, live_after=T0 + 15, url_key_id="k2") is None
    )


def test_a_dead_twin_is_replaced_only_by_its_pid(store: Store) -> None:
    assert store.register_replica("a", "h1", 10, T0, live_after=T0 - 15, url_key_id="k1") is None
    twin = store.register_replica("a", "h1", 11, T0 + 1, live_after=T0 - 14, url_key_id="k1",
                                  replacing=9)  # fmt: skip
    assert twin is not None
    assert twin.pid == 10  # not the pid the caller found dead
    assert store.register_replica("a", "h1", 11, T0 + 1, live_after=T0 - 14, url_key_id="k1",
                                  replacing=10) is None  # fmt: skip
    assert [(r.pid, r.started_at) for r in store.list_replicas()] == [(11, T0 + 1)]


def test_two_replicas_with_different_url_keys_starting_together_are_not_both_admitted(
    postgres_database: DatabaseConfig,
) -> None:
    """Two stores (two replicas' pools) register at once, each with its own key: the check
    and the write are one transaction under the replicas lock, so the second sees the first
    (each checked before either wrote, both got in)."""
    for attempt in range(10):
        stores = [open_store(postgres_database) for _ in range(2)]
        try:
            names = [f"x{attempt}", f"y{attempt}"]
            results = _register_at_once(stores, names, T0 + attempt * 100)
            admitted = [n for n in names if results[n] is None]
            assert len(admitted) == 1, results
            rows = {r.replica_id for r in stores[0].list_replicas()}
            assert rows & set(names) == set(admitted)
            stores[0].drop_replica(admitted[0], names.index(admitted[0]))
        finally:
            for st in stores:
                st.close()


def _register_at_once(stores: list[Store], names: list[str], at: float) -> dict[str, object]:
    """Each store registers its replica (pid = its index, key named after it), released
    together by a barrier; what each ``register_replica`` returned."""
    start = threading.Barrier(len(stores))
    results: dict[str, object] = {}

    def register(i: int) -> None:
        start.wait()
        results[names[i]] = stores[i].register_replica(
            names[i], "h", i, at, live_after=at - 15, url_key_id=f"k-{names[i]}"
        )

    threads = [threading.Thread(target=register, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_two_replicas_racing_for_one_rollout_notify_each_target_once(
    postgres_database: DatabaseConfig,
) -> None:
    """Two stores (two replicas' pools) on one PostgreSQL database: both try, again and
    again, to claim the rollout and store notices for every target. Leases overlap on
    purpose (each thread's clock runs past the other's lease)."""
    devices = [f"d{i:02d}" for i in range(40)]
    first = open_store(postgres_database)
    second = open_store(postgres_database)
    try:
        r = _rollout(first, devices)
        stored: dict[str, list[str]] = {"r1": [], "r2": []}
        start = threading.Barrier(2)

        def replica(store: Store, name: str) -> None:
            start.wait()
            for step in range(20):
                now = T0 + step * 20  # every step is past the other's lease
                if not store.claim_rollouts(name, [r.id], now, now + 10):
                    continue
                batch = [_notice(r.id, f"{name}-{step}-{d}", d, step) for d in devices]
                try:
                    kept = store.save_notices_leased(name, r.id, batch, {}, now)
                except LeaseLostError:
                    continue
                stored[name] += [n.device_id for n in kept]

        threads = [
            threading.Thread(target=replica, args=(s, n))
            for s, n in ((first, "r1"), (second, "r2"))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        everyone = stored["r1"] + stored["r2"]
        assert sorted(everyone) == devices  # each once, by one of the two
        assert first.state_counts(r.id) == {"sent": len(devices)}
        by = first.notices_by_replica(r.id)
        assert by == {n: len(v) for n, v in stored.items() if v}
    finally:
        first.close()
        second.close()
