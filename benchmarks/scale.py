"""The store at fleet scale, on SQLite and on PostgreSQL (a private server, fsync off).

For N registered devices (N = 10k, 100k; ``--quick``: 10k only), times, on each backend:

- create: a rollout for all N, as the API does it (list the devices, resolve the target,
  assign phases, store the rollout and its N targets);
- pass: the database side of one engine pass while N targets are pending (the calls
  ``RolloutEngine`` makes: active rollouts, timeouts, phase counts, the next batch of
  pending targets, sequence numbers, store that batch's notices, mark them published).
  Signing and publishing are excluded: ``benchmarks/publish.py`` measures them;
- page: one page (100) of the device list at random offsets, p50 and p99.

Run: ``.venv/bin/python -m benchmarks.scale [--quick] [--n 10000,100000]``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from orchestrator.config import DatabaseConfig
from orchestrator.engine import MAX_NOTICES_PER_PASS
from orchestrator.policy import ACTIVE_ROLLOUT_STATES, RolloutSpec, assign_phases
from orchestrator.rollouts import TargetSpec, resolve_targets
from orchestrator.store import DeviceFilter, NoticeRecord, ReleaseRecord, Store, open_store
from orchestrator.store.postgres.local import LocalPostgres

T0 = 1_700_000_000.0


def _timed(fn: Any) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def _one(store: Store, n: int, pages: int) -> dict[str, Any]:
    ids = [f"dev-{i:07d}" for i in range(n)]
    t_register, _ = _timed(lambda: store.sync_registry([(d, ("fleet",), "rpi4") for d in ids], T0))
    rel = store.add_release(
        ReleaseRecord(0, "app", "2", "ab" * 32, 1, ("rpi4",), "directory", {}, {}, T0)
    )
    spec = RolloutSpec(phases=(1.0, 10.0, 100.0))

    def create() -> int:
        devices = store.list_devices(DeviceFilter(limit=10**9))
        chosen = resolve_targets(TargetSpec(groups=("fleet",)), devices, rel)
        assignments = assign_phases(chosen, f"{rel.id}:{T0}", spec.phases)
        r = store.create_rollout(release_id=rel.id, target={"groups": ["fleet"]}, spec=spec,
                                 assignments=assignments, now=T0, actor="bench")  # fmt: skip
        return r.id

    t_create, rid = _timed(create)

    def engine_pass() -> int:
        store.list_rollouts(ACTIVE_ROLLOUT_STATES)
        store.time_out_targets(rid, T0 - 600, T0 + 1)
        store.phase_counts(rid)
        batch = store.pending_targets(rid, 2, MAX_NOTICES_PER_PASS)
        scopes = [f"device/{d}" for d, _ in batch]
        seqs = store.reserve_seqs(scopes, int(T0 * 1000))
        notices = [
            NoticeRecord(f"n-{d}", d, rid, "notice", f"device/{d}", seqs[f"device/{d}"],
                         f"t/{d}", T0 + 1, T0 + 86400, b"x" * 300)
            for d, _ in batch
        ]  # fmt: skip
        store.save_notices(notices, dict(batch))
        store.mark_published([x.notice_id for x in notices])
        return len(notices)

    t_pass, notified = _timed(engine_pass)
    rng = random.Random(1)
    page_ms = []
    for _ in range(pages):
        offset = rng.randrange(0, max(1, n - 100))
        dt, _ = _timed(lambda o=offset: store.list_devices(DeviceFilter(limit=100, offset=o)))
        page_ms.append(dt * 1000)
    page_ms.sort()
    return {
        "devices": n,
        "register_s": round(t_register, 2),
        "create_rollout_s": round(t_create, 2),
        "engine_pass_s": round(t_pass, 3),
        "notified_in_pass": notified,
        "page_p50_ms": round(statistics.median(page_ms), 1),
        "page_p99_ms": round(page_ms[min(len(page_ms) - 1, int(len(page_ms) * 0.99))], 1),
        "pages_sampled": pages,
    }


def run(quick: bool = False, sizes: tuple[int, ...] = ()) -> dict[str, Any]:
    sizes = sizes or ((10_000,) if quick else (10_000, 100_000))
    out: dict[str, Any] = {"sqlite": [], "postgresql": []}
    with tempfile.TemporaryDirectory() as tmp, LocalPostgres() as pg:
        for n in sizes:
            pages = 100 if n <= 10_000 else 30
            sqlite = open_store(DatabaseConfig(url=f"sqlite:///{Path(tmp) / f'{n}.db'}"))
            try:
                out["sqlite"].append(_one(sqlite, n, pages))
            finally:
                sqlite.close()
            print(json.dumps(out["sqlite"][-1]), file=sys.stderr)
            postgres = open_store(DatabaseConfig(url=pg.create_database(f"scale{n}")))
            try:
                out["postgresql"].append(_one(postgres, n, pages))
            finally:
                postgres.close()
            print(json.dumps(out["postgresql"][-1]), file=sys.stderr)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--n", default="", help="comma-separated fleet sizes")
    args = parser.parse_args()
    chosen = tuple(int(x) for x in args.n.split(",") if x)
    print(json.dumps(run(quick=args.quick, sizes=chosen), indent=2))
