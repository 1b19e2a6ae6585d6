"""The store at fleet scale (issue 13): 10k, 100k and 1M registered devices.

For N registered devices, on PostgreSQL (a private server, fsync off) and SQLite, times:

- import: the registry sync of N identities (``sync_registry``, a bulk upsert), against a
  ceiling measured just before on the same rows: a bare COPY (PostgreSQL) or one prepared
  INSERT (SQLite) of them into an empty table of the devices table's shape;
- create: a rollout for all N as ``POST /v1/rollouts`` does it (``preview_targets``, then
  ``create_rollout_for``: selector, order and phases in SQL, one ``INSERT … SELECT``),
  against the ceiling of a bare ``INSERT … SELECT`` of the same N rows into an empty copy
  of the targets table (same keys and indexes) in device-id order (no
  hashing, no phases), measured right after;
- canary: a second rollout for the 10% in group ``canary`` while the first holds all N
  (the conflict count reads the first rollout's targets);
- pass: the database side of one engine pass while N targets are pending (active rollouts,
  timeouts, phase counts, the next 5,000 pending targets, sequence numbers, store those
  notices, mark them published); ``counts``: its phase-count aggregate alone;
- page: a page of 100 devices by key (``after`` = a random device id), p50 and p99; search:
  the same in group ``canary`` (10%); rare: in ``pilot`` (0.1%); offset: the old OFFSET
  paging, for comparison;
- RSS: of this process (which also holds the benchmark's own lists of N devices), and on
  PostgreSQL of a fresh process doing what the orchestrator does with the fleet
  (``benchmarks._scale_rss``: create a rollout for all, one pass, 100 pages).

``notices``: ``benchmarks._scale_notices`` (the real engine over PostgreSQL publishing to a
real Mosquitto, against the bare link's publish rate).

``replicas``: ``benchmarks.replicas`` (ingestion with 1, 2 and 3 replicas), in the same run.

Run: ``.venv/bin/python -m benchmarks.scale [--quick] [--n 10000,100000,1000000]
[--notices 100000] [--backends postgresql,sqlite] [--no-replicas]``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import random
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg

from orchestrator.config import DatabaseConfig
from orchestrator.engine_notices import MAX_NOTICES_PER_PASS
from orchestrator.rollouts import TargetSpec, phase_key, selector
from orchestrator.rules import ACTIVE_ROLLOUT_STATES, RolloutSpec
from orchestrator.store import DeviceFilter, NoticeRecord, ReleaseRecord, Store, open_store
from orchestrator.store.postgres.local import LocalPostgres

T0 = 1_700_000_000.0
_DEVICE_COLS = ("device_id", "registry_groups", "registry_model", "in_registry", "first_seen")


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def _rss_mb() -> dict[str, float]:
    """This process's resident memory now and its peak so far (VmRSS, VmHWM), MB."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {k: round(int(status[v].split()[0]) / 1024, 1)
            for k, v in (("now", "VmRSS"), ("peak", "VmHWM"))}  # fmt: skip


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return round(values[min(len(values) - 1, int(len(values) * q))], 1)


class _Raw:
    """The ceilings: the same rows written straight through the driver, into tables of
    the store's shape that nothing else uses."""

    def __init__(self, database: DatabaseConfig) -> None:
        self.pg = database.backend == "postgresql"
        self.database = database

    @contextlib.contextmanager
    def _conn(self) -> Iterator[Any]:
        if self.pg:
            with psycopg.connect(self.database.url) as conn:
                yield conn
        else:
            lite = sqlite3.connect(self.database.sqlite_path)
            lite.execute("PRAGMA foreign_keys=ON")  # as the store has them
            try:
                with lite:
                    yield lite
            finally:
                lite.close()

    def _clone(self, conn: Any, table: str) -> None:
        """An empty copy of ``table`` with its keys and indexes, named ``bare_<table>``."""
        if self.pg:
            conn.execute(f"CREATE TABLE bare_{table} (LIKE {table} INCLUDING ALL)")
            return
        for (sql,) in conn.execute(
            "SELECT sql FROM sqlite_master WHERE tbl_name = ? AND sql IS NOT NULL", (table,)
        ).fetchall():
            # A table renamed by a migration is stored with its name quoted.
            named = re.sub(rf'\b(TABLE|ON) "?{table}"?', rf"\1 bare_{table}", sql)
            conn.execute(named.replace("INDEX ", "INDEX bare_", 1))

    def import_rows(self, rows: list[tuple[Any, ...]]) -> float:
        with self._conn() as conn:
            self._clone(conn, "devices")
            t = time.perf_counter()
            names = ", ".join(_DEVICE_COLS)
            if self.pg:
                copy_sql = f"COPY bare_devices ({names}) FROM STDIN"
                with conn.cursor() as cur, cur.copy(copy_sql) as cp:
                    for row in rows:
                        cp.write_row(row)
            else:
                insert = f"INSERT INTO bare_devices ({names}) VALUES (?, ?, ?, ?, ?)"  # noqa: S608
                conn.executemany(insert, rows)
            conn.commit()
            return time.perf_counter() - t

    def insert_targets(self, rollout_id: int) -> float:
        """The rollout's rows again, into an empty copy of the targets table (keys,
        indexes), in device-id order, without hashing or phases."""
        with self._conn() as conn:
            self._clone(conn, "rollout_targets")
            t = time.perf_counter()
            conn.execute(
                "INSERT INTO bare_rollout_targets (rollout_id, device_id, position, phase, "
                "updated_at) SELECT rollouts.id, device_id, row_number() OVER (ORDER BY "
                "device_id) - 1, 0, 0 FROM devices JOIN rollouts ON rollouts.id = ?".replace(
                    "?", "%s" if self.pg else "?"
                ),
                (rollout_id,),
            )
            conn.commit()
            return time.perf_counter() - t


def create_like_api(
    store: Store, rel: ReleaseRecord, target: TargetSpec, spec: RolloutSpec
) -> tuple[int, int]:
    """What ``POST /v1/rollouts`` does with the database: count, then create."""
    sel = selector(target, rel)
    preview = store.preview_targets(sel)
    r = store.create_rollout_for(release_id=rel.id, target=target.to_json(), spec=spec,
                                 selector=sel, key=phase_key(rel.id, target), now=T0,
                                 actor="bench")  # fmt: skip
    return r.id, preview.total


def engine_pass(store: Store, rid: int, prefix: str = "n") -> int:
    store.list_rollouts(ACTIVE_ROLLOUT_STATES)
    store.time_out_targets(rid, T0 - 600, T0 + 1)
    store.phase_counts(rid)
    batch = store.pending_targets(rid, 2, MAX_NOTICES_PER_PASS)
    scopes = [f"device/{d}" for d, _ in batch]
    seqs = store.reserve_seqs(scopes, int(T0 * 1000))
    notices = [
        NoticeRecord(f"{prefix}-{d}", d, rid, "notice", f"device/{d}", seqs[f"device/{d}"],
                     f"t/{d}", T0 + 1, T0 + 86400, b"x" * 300)
        for d, _ in batch
    ]  # fmt: skip
    store.save_notices(notices, dict(batch))
    store.mark_published([x.notice_id for x in notices])
    return len(notices)


def _pages(store: Store, ids: list[str], pages: int, **f: Any) -> list[float]:
    rng = random.Random(1)
    out = []
    for _ in range(pages):
        after = rng.choice(ids[: max(1, len(ids) - 100)])
        page = DeviceFilter(limit=100, after=after, **f)
        dt, _ = _timed(functools.partial(store.list_devices, page))
        out.append(dt * 1000)
    return out


def _identities(ids: list[str]) -> list[tuple[str, tuple[str, ...], str]]:
    """Every device in group ``fleet``, one in ten in ``canary`` too, one in a thousand
    in ``pilot`` as well."""

    def groups(i: int) -> tuple[str, ...]:
        if i % 1000 == 0:
            return ("canary", "fleet", "pilot")
        return ("canary", "fleet") if i % 10 == 0 else ("fleet",)

    return [(d, groups(i), "rpi4") for i, d in enumerate(ids)]


def _one(database: DatabaseConfig, n: int, pages: int) -> dict[str, Any]:
    ids = [f"dev-{i:07d}" for i in range(n)]
    raw = _Raw(database)
    store = open_store(database)
    out: dict[str, Any] = {"devices": n, "backend": database.backend}
    try:
        rows = [(d, json.dumps(sorted(set(g))), m, 1, T0) for d, g, m in _identities(ids)]
        out["import_ceiling_s"] = round(raw.import_rows(rows), 2)
        del rows
        identities = _identities(ids)
        t, changed = _timed(lambda: store.sync_registry(identities, T0))
        assert changed == n, changed  # a benchmark that measured nothing is void
        out["import_s"] = round(t, 2)
        out["import_ratio"] = round(out["import_ceiling_s"] / t, 2)
        # the same registry again: read, compared, nothing written
        t, changed = _timed(lambda: store.sync_registry(identities, T0))
        assert changed == 0, changed
        out["import_again_s"] = round(t, 2)
        identities.clear()
        rel = store.add_release(
            ReleaseRecord(0, "app", "2", "ab" * 32, 1, ("rpi4",), "directory", {}, {}, T0)
        )
        spec = RolloutSpec(phases=(1.0, 10.0, 100.0))
        t, (rid, total) = _timed(lambda: create_like_api(store, rel, TargetSpec(all=True), spec))
        assert total == n
        out["create_s"] = round(t, 2)
        out["create_ceiling_s"] = round(raw.insert_targets(rid), 2)
        out["create_ratio"] = round(out["create_ceiling_s"] / t, 2)
        out["rss_after_create_mb"] = _rss_mb()
        t, notified = _timed(lambda: engine_pass(store, rid))
        out["pass_s"] = round(t, 3)
        out["pass_notified"] = notified
        out["pass_counts_s"] = round(_timed(lambda: store.phase_counts(rid))[0], 3)
        keyset = _pages(store, ids, pages)
        search = _pages(store, ids, pages, group="canary")
        rare = _pages(store, ids, pages, group="pilot")
        offset = []
        for o in random.Random(2).sample(range(max(1, n - 100)), min(pages, 30)):
            skip = DeviceFilter(limit=100, offset=o)
            dt, _ = _timed(functools.partial(store.list_devices, skip))
            offset.append(dt * 1000)
        out["page_ms"] = {"p50": _pct(keyset, 0.5), "p99": _pct(keyset, 0.99)}
        out["search_ms"] = {"p50": _pct(search, 0.5), "p99": _pct(search, 0.99)}
        out["rare_search_ms"] = {"p50": _pct(rare, 0.5), "p99": _pct(rare, 0.99)}
        out["offset_page_ms"] = {"p50": _pct(offset, 0.5), "p99": _pct(offset, 0.99)}
        out["pages_sampled"] = pages
        canary_target = TargetSpec(groups=("canary",))
        t, (_, canary) = _timed(lambda: create_like_api(store, rel, canary_target, spec))
        out["create_canary_s"] = round(t, 2)
        out["canary_devices"] = canary
        out["rss_mb"] = _rss_mb()
    finally:
        store.close()
    if database.backend == "postgresql":
        probe = subprocess.run(
            [sys.executable, "-m", "benchmarks._scale_rss", database.url],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if probe.returncode != 0:
            raise RuntimeError(f"RSS probe failed: {probe.stderr[-2000:]}")
        out["orchestrator_rss_mb"] = json.loads(probe.stdout)
    return out


def run(
    quick: bool = False, sizes: tuple[int, ...] = (), notices: int | None = None,
    backends: tuple[str, ...] = ("postgresql", "sqlite"), replicas: bool = True,
) -> dict[str, Any]:  # fmt: skip
    from benchmarks import _scale_notices
    from benchmarks import replicas as replicas_bench

    sizes = sizes or ((10_000,) if quick else (10_000, 100_000, 1_000_000))
    if notices is None:
        notices = 10_000 if quick else 100_000
    out: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                           "runs": []}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp, LocalPostgres() as pg:
        for n in sizes:
            for backend in backends:
                pages = 200 if n <= 100_000 else 100
                if backend == "sqlite":
                    database = DatabaseConfig(url=f"sqlite:///{Path(tmp) / f'{n}.db'}")
                else:
                    database = DatabaseConfig(url=pg.create_database(f"scale{n}"))
                out["runs"].append(_one(database, n, pages))
                print(json.dumps(out["runs"][-1]), file=sys.stderr, flush=True)
        if "postgresql" in backends and notices:
            url = pg.create_database("notices")
            out["notices"] = _scale_notices.run(DatabaseConfig(url=url), notices, Path(tmp))
            print(json.dumps(out["notices"]), file=sys.stderr, flush=True)
    if replicas:  # the issue asks for it in the same run: its own PostgreSQL and broker
        out["replicas"] = replicas_bench.run(quick)
        print(json.dumps(out["replicas"]), file=sys.stderr, flush=True)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--n", default="", help="comma-separated fleet sizes")
    parser.add_argument("--notices", type=int, default=None,
                        help="devices of the notice run (0: none)")  # fmt: skip
    parser.add_argument("--backends", default="postgresql,sqlite")
    parser.add_argument("--no-replicas", action="store_true",
                        help="leave out ingestion with 1, 2 and 3 replicas")  # fmt: skip
    args = parser.parse_args()
    chosen = tuple(int(x) for x in args.n.split(",") if x)
    print(json.dumps(run(quick=args.quick, sizes=chosen, notices=args.notices,
                         backends=tuple(args.backends.split(",")),
                         replicas=not args.no_replicas), indent=2))  # fmt: skip
