"""Races between replicas on one PostgreSQL database, made deterministic: the other
replica's transaction is held open (``replica_helpers.hold_row``) until this one waits
behind it, or two engines are stepped in a fixed order. Real Mosquitto, real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from device_helpers import orchestrator_client
from orch_helpers import rollout_in, running, start_devices, write_orchestrator
from replica_helpers import hold_row

from fleetpush_common.clock import ManualClock
from fleetpush_protocol.topics import Topics
from orchestrator.approval import decide
from orchestrator.broker import MosquittoBroker
from orchestrator.config import DatabaseConfig, OrchestratorConfig, load_config
from orchestrator.deltas import DeltaIndex
from orchestrator.engine import Publisher, RolloutEngine
from orchestrator.mqtt.link import MqttLink
from orchestrator.notices import NoticeFactory
from orchestrator.payloads import PayloadStore, UrlSigner
from orchestrator.rules import RolloutSpec
from orchestrator.security.keystore import KeyStore, SigningSet
from orchestrator.store import (
    ConflictError,
    ReleaseRecord,
    RolloutRecord,
    Store,
    open_database,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def _row(url: str, sql: str, *args: Any) -> tuple[Any, ...]:
    """What the database holds (not what a replica says)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(sql, args).fetchone()
    assert row is not None
    return tuple(row)


async def test_a_retry_that_loses_to_another_replica_changes_nothing(
    tmp_path: Path, broker: MosquittoBroker, topics: Topics, postgres_database: DatabaseConfig
) -> None:
    """Retrying failed devices and re-basing the failure counts are one transaction: when
    another replica cancels the rollout in between (or this one crashes there), the
    devices must not be left pending under the old counts while the answer says 409."""
    url = postgres_database.url
    async with running(tmp_path, broker, topics, database_url=url) as s:
        await start_devices(s, "rt-1", healthy=False)
        rel = await s.api.upload("app", "2.0")
        r = await s.api.rollout(rel["id"], target={"devices": ["rt-1"]}, success_pct=100)
        rid = r["id"]
        await rollout_in(s, rid, "paused")
        bases = "SELECT failure_base, attempt_base FROM rollouts WHERE id = %s"
        before = _row(url, bases, rid)
        failed = {t["device_id"]: t["state"] for t in await s.api.targets(rid)}
        assert failed["rt-1"] in ("failed", "rolled_back"), failed
        sql = "UPDATE rollouts SET state = 'canceled', reason = 'by carol' WHERE id = %s"
        with hold_row(url, sql, (rid,)) as other:
            retry = asyncio.create_task(s.api.call("POST", f"/v1/rollouts/{rid}/retry", expect=409))
            await other.until_waited_on()
            other.commit()
            refused = await retry
        assert "changed meanwhile" in refused["error"]
        assert {t["device_id"]: t["state"] for t in await s.api.targets(rid)} == failed
        assert (await s.api.status(rid))["state"] == "canceled"
        assert _row(url, bases, rid) == before


# --- a security take-over on one replica, the lease holder's notices on another ---------


class _Gate:
    """A point where replica B stops (on its own thread and loop) until the test lets it
    go on: ``reached`` is set when B gets there, B waits for ``go``."""

    def __init__(self) -> None:
        self.reached, self.go = threading.Event(), threading.Event()

    def stop_here(self) -> None:
        if not self.reached.is_set():
            self.reached.set()
            assert self.go.wait(60), "the test never let replica B go on"

    async def when_reached(self, done: concurrent.futures.Future[Any]) -> None:
        """Until B is here, or finished without coming here."""
        while not self.reached.is_set() and not done.done():
            await asyncio.to_thread(self.reached.wait, 0.2)


class _GatedPublisher:
    """B's MQTT link: the same real link, but B stops before its first publish."""

    def __init__(self, link: MqttLink, gate: _Gate) -> None:
        self.link, self.gate = link, gate

    async def publish_many(
        self, items: Sequence[tuple[str, bytes, bool]], timeout: float = 30.0, *,  # noqa: ASYNC109
        expiry_s: int = 0,
    ) -> None:  # fmt: skip
        self.gate.stop_here()
        await self.link.publish_many(items, timeout, expiry_s=expiry_s)


def _engine(
    cfg: OrchestratorConfig, holder: str, publisher: Publisher,
    signing: Callable[[float], SigningSet], clock: ManualClock,
) -> RolloutEngine:  # fmt: skip
    """A replica's engine as ``fleetpush serve`` builds it: its own database pool."""
    urls = UrlSigner.from_file(cfg.data_dir / "url-signing.key")
    notices = NoticeFactory(cfg.mqtt.topics, cfg.http, urls, cfg.rollouts.notice_ttl_s)
    return RolloutEngine(open_database(cfg.database), notices=notices, publisher=publisher,
                         signing=signing, clock=clock, holder=holder, lease_s=600)  # fmt: skip


async def _retained(
    broker: MosquittoBroker, topics: Sequence[str], barrier: str
) -> dict[str, bytes]:
    """The retained message of each of ``topics``: subscribed to after them, ``barrier``'s
    (known to hold one) arrives after theirs, which ends the wait without a timeout."""
    found: dict[str, bytes] = {}
    async with orchestrator_client(broker) as client:
        for t in topics:
            await client.subscribe(t, qos=1)
        await client.subscribe(barrier, qos=1)
        async with asyncio.timeout(30):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                if message.topic.value == barrier:
                    return found
                found[message.topic.value] = message.payload
    raise AssertionError("unreachable: the message stream ended")


@pytest.mark.parametrize("start", ["approve", "create"])
async def test_a_security_take_over_on_one_replica_races_no_notice_of_another(
    tmp_path: Path, broker: MosquittoBroker, topics: Topics, postgres_database: DatabaseConfig,
    start: str,
) -> None:  # fmt: skip
    """Replica A holds the leases and notifies; replica B starts a security rollout
    (approves it, or creates it) whose devices a feature rollout has notified. Each engine
    has its own pool on one PostgreSQL database and the engine lock is per process, so
    nothing but the database orders them. A steps its rollouts at the two worst moments:
    when B reads its signing keys (before the take-over's cancels exist, or, before the
    fix, after the rollout was already running), and when B is about to publish the
    cancels. Each device must end with exactly one cancel and one security notice, the
    cancel's sequence first, and the security notice as the broker's retained message
    (a cancel published after it would replace it: the device would never install it)."""
    config, _ = write_orchestrator(tmp_path, broker, topics, database_url=postgres_database.url)
    cfg = load_config(config)
    keys = KeyStore(cfg.keys_dir)
    clock = ManualClock(time.time())
    link = MqttLink(cfg.mqtt, [])
    await asyncio.to_thread(link.start)
    at_sign, at_publish = _Gate(), _Gate()

    def b_signing(now: float) -> SigningSet:
        at_sign.stop_here()
        return keys.signing_set(now)

    a = _engine(cfg, "replica-a", link, keys.signing_set, clock)
    b = _engine(cfg, "replica-b", _GatedPublisher(link, at_publish), b_signing, clock)
    devices = [f"to-{i}" for i in range(8)]
    targets = [(d, i, 0) for i, d in enumerate(devices)]
    try:
        now = clock.now()

        def fleet(s: Store) -> tuple[RolloutRecord, RolloutRecord]:
            s.ensure_devices(devices, now)
            feature = s.add_release(ReleaseRecord(0, "app", "2.0", "ab" * 32, 10, (),
                                                  "directory", {}, {}, now))  # fmt: skip
            fix = s.add_release(ReleaseRecord(0, "app", "2.1", "cd" * 32, 10, (), "directory",
                                              {}, {}, now, update_class="security"))  # fmt: skip
            f = s.create_rollout(release_id=feature.id, target={"devices": devices},
                                 spec=RolloutSpec(), assignments=targets, now=now,
                                 actor="al")  # fmt: skip
            return f, fix

        f, fix = await a.db.run(fleet)
        await a.tick()  # A drives it: it notifies the feature rollout's devices
        assert await a.db.run(lambda s: s.state_counts(f.id)) == {"sent": len(devices)}

        def security(s: Store) -> RolloutRecord:
            return s.create_rollout(release_id=fix.id, target={"devices": devices},
                                    spec=RolloutSpec(), assignments=targets, now=now, actor="al",
                                    approval=start == "approve",
                                    hold=start == "create")  # fmt: skip

        sec = await a.db.run(security)

        async def b_starts() -> None:
            if start == "approve":
                await decide(b, sec.id, lambda r: None, approve=True, actor="bob", reason="")
                return
            fields = {"state": "running", "phase_started_at": clock.now()}
            with contextlib.suppress(ConflictError):  # A started it first: what the API does
                await b.start_rollout(sec, clock.now(), fields, actor="al")

        b_done = concurrent.futures.ThreadPoolExecutor(1).submit(asyncio.run, b_starts())
        for gate in (at_sign, at_publish):
            await gate.when_reached(b_done)
            clock.advance(1)
            await a.tick()
            gate.go.set()
        await asyncio.wrap_future(b_done)
        for _ in range(3):  # A goes on: what it held back is notified now
            clock.advance(1)
            await a.tick()

        with psycopg.connect(postgres_database.url) as conn:
            stored = conn.execute(
                "SELECT device_id, rollout_id, kind, seq, topic, envelope, published "
                "FROM notices ORDER BY seq"
            ).fetchall()
        assert all(n[6] for n in stored)  # every one published
        cancels = {n[0]: n for n in stored if n[2] == "cancel"}
        updates = [n for n in stored if n[2] == "notice" and n[1] == sec.id]
        assert sorted(n[0] for n in updates) == devices  # once each
        assert sorted(cancels) == devices
        assert all(cancels[n[0]][3] < n[3] for n in updates)  # the cancel first
        barrier = f"{topics.prefix}/t/barrier"
        await link.publish_many([(barrier, b"x", True)])
    finally:
        await asyncio.to_thread(link.stop)
        a.db.close()
        b.db.close()
    retained = await _retained(broker, [n[4] for n in updates], barrier)
    assert retained == {n[4]: bytes(n[5]) for n in updates}


def _released_together(programs: list[list[str]]) -> list[str]:
    """Run each ``[code, *args]`` with ``python -c`` and, once all have started, send each
    the byte its code waits for on stdin, so they race; their stdout, each having exited 0."""
    pipe = subprocess.PIPE
    procs = [
        subprocess.Popen([sys.executable, "-c", *p], stdin=pipe, stdout=pipe, stderr=pipe)
        for p in programs
    ]
    for p in procs:
        assert p.stdin is not None
        p.stdin.write(b"g")
        p.stdin.flush()
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    return [out.decode() for out, _ in outs]


_LOAD_URL_KEY = (
    "import sys; from pathlib import Path; from orchestrator.payloads import UrlSigner; "
    "sys.stdin.read(1); print(UrlSigner.from_file(Path(sys.argv[1])).key_id)"
)


@pytest.mark.parametrize("round_", range(5))
def test_replicas_starting_at_once_on_one_data_folder_share_one_url_signing_key(
    tmp_path: Path, round_: int
) -> None:
    """Each replica creates ``url-signing.key`` if it is missing. Eight processes released
    together (one byte on stdin each, after all have started): with a check-then-rename
    each kept its own key in memory, so one replica's payload URLs were refused (403) by
    the others (a device of the SIGKILL test failed so). One key wins; all read it."""
    path = tmp_path / "orch" / "url-signing.key"
    outs = _released_together([[_LOAD_URL_KEY, str(path)]] * 8)
    ids = {out.strip() for out in outs}
    assert ids == {UrlSigner.from_file(path).key_id}
    assert len(next(iter(ids))) == 16
    assert sorted(x.name for x in path.parent.iterdir()) == ["url-signing.key"]  # no temp left
    assert path.stat().st_mode & 0o777 == 0o600


_ADD_DELTAS = """
import hashlib, sys
from pathlib import Path
from orchestrator.deltas import DeltaIndex, DeltaRecord
from orchestrator.payloads import PayloadStore
folder, target, who = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
index = DeltaIndex(PayloadStore(folder))
sys.stdin.read(1)
for i in range(40):
    base = hashlib.sha256(f"{who}-{i}".encode()).hexdigest()
    index.add(target, DeltaRecord(base_sha256=base, base_version=f"{who}.{i}",
              sha256=sys.argv[4], size=1, method="zstd-patch", seconds=0.0))
"""


def test_replicas_sharing_a_payload_folder_keep_each_others_deltas(tmp_path: Path) -> None:
    """Two replicas add deltas to one target's index at once (a shared payload folder):
    each entry is kept. An in-process lock let one's rewrite drop the other's entries."""
    store = PayloadStore(tmp_path / "payloads")
    target, patch = "a" * 64, "b" * 64
    store.path(patch).parent.mkdir(parents=True)
    store.path(patch).write_bytes(b"x")  # an index lists only deltas whose bytes exist
    _released_together([[_ADD_DELTAS, str(store.folder), target, who, patch]
                        for who in ("r1", "r2")])  # fmt: skip
    kept = sorted(r.base_version for r in DeltaIndex(store).records(target))
    assert kept == sorted(f"{w}.{i}" for w in ("r1", "r2") for i in range(40))
