"""Active-active replicas: real ``fleetpush serve`` processes on one real PostgreSQL and one
real Mosquitto, real device agents; one replica SIGKILLed mid-rollout. And the refusals:
a second ``serve`` on one SQLite database, a second process with one replica identity."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypeVar

import aiohttp
import pytest
from click.testing import CliRunner
from device_helpers import write_config
from orch_helpers import (
    SERVE_START_S,
    TOKENS,
    Api,
    Fleet,
    assert_spoke,
    root_hex,
    running,
    wait_until,
)
from replica_helpers import Balancer, Replicas, health, write_replicas

from fleetpush_common.atomic import write_secret
from fleetpush_protocol.topics import Topics
from fleetpush_sim.api import ApiCallError
from orchestrator.broker import MosquittoBroker
from orchestrator.cli.main import main
from orchestrator.config import DatabaseConfig
from orchestrator.provisioning import broker_for_data_dir
from orchestrator.store.postgres.local import LocalPostgres

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

FLEETPUSH = Path(sys.executable).with_name("fleetpush")
_T = TypeVar("_T")


class QuickAckFleet(Fleet):
    """Agents that resend unconfirmed reports after 2 s (default 30 s): a report the broker
    handed to the killed replica comes again, to a live one, within the test."""

    def provision(
        self, device_id: str, *, groups: tuple[str, ...] = (), healthy: bool = True
    ) -> None:
        password = self.broker.add_device(device_id, groups)
        self.configs[device_id] = write_config(
            self.root / f"{device_id}.toml", broker=self.broker, topics=self.topics,
            device_id=device_id, password=password, root_hex=self.root_key, groups=groups,
            sections={"broker": {"ack_timeout_s": 2, "protocol": self.protocol}},
        )  # fmt: skip


@contextlib.asynccontextmanager
async def replicas_up(
    tmp_path: Path, broker: MosquittoBroker, topics: Topics, database_url: str, *, n: int,
    ids: list[str], protocol: str = "5",
) -> AsyncIterator[tuple[Replicas, QuickAckFleet, aiohttp.ClientSession, Balancer]]:  # fmt: skip
    """``n`` replicas behind a balancer, every one healthy, and ``ids`` provisioned (not
    started), all speaking MQTT ``protocol``; all stopped on the way out."""
    balancer = Balancer()
    reps = write_replicas(
        tmp_path, broker, topics, n=n, database_url=database_url, lease="3s",
        public_url=balancer.url, protocol=protocol,
    )  # fmt: skip
    balancer.backends = [r.base for r in reps.items]
    await balancer.start()
    (tmp_path / "devices").mkdir()
    fleet = QuickAckFleet(tmp_path / "devices", broker, topics, root_hex(tmp_path), protocol)
    for d in ids:
        fleet.provision(d)
    broker.reload()
    reps.set.start()
    try:
        async with aiohttp.ClientSession() as session:
            for r in reps.items:
                await wait_until(
                    lambda r=r: health(r, session), within=SERVE_START_S, what=f"{r.name} healthy"
                )
            yield reps, fleet, session, balancer
    finally:
        await fleet.stop_all()
        reps.set.stop()
        await balancer.stop()


@pytest.mark.parametrize("mqtt_protocol", ["5", "3.1.1"])
async def test_three_replicas_finish_a_rollout_when_its_driver_is_sigkilled(
    tmp_path: Path, broker: MosquittoBroker, topics: Topics, postgres_database: DatabaseConfig,
    mqtt_protocol: str,
) -> None:  # fmt: skip
    """In MQTT 3.1.1 too: shared subscriptions (Mosquitto has them in 3.1.1), each replica
    on a clean session (3.1.1 cannot bound a session's life; docs/broker.md)."""
    ids = [f"rp-{i:02d}" for i in range(9)]
    up = replicas_up(tmp_path, broker, topics, postgres_database.url, n=3, ids=ids,
                     protocol=mqtt_protocol)  # fmt: skip
    async with up as (reps, fleet, session, _):
        # The API answers from each replica, each as itself.
        for r in reps.items:
            body = await health(r, session)
            assert body is not None
            assert body["replica"] == r.name
        apis = [Api(session, r.base, TOKENS["operator"]) for r in reps.items]
        for d in ids:
            fleet.start(d)

        async def registered() -> bool:
            devs = await apis[2].call("GET", "/v1/devices", params={"online": "true"})
            return len(devs["devices"]) == len(ids)

        await wait_until(registered, what="devices registered")
        # Uploaded through one replica, fetched through the balancer from any.
        rel = await apis[0].upload("app", "9.0")
        r = await apis[1].rollout(rel["id"], target={"devices": ids}, phases=[34, 100],
                                  soak_s=1)  # fmt: skip
        rid = r["id"]
        holder = await wait_until(lambda: _async(reps.lease_holder(rid)), what="a lease")

        async def phase_one_notified() -> bool:
            st = await apis[2].status(rid)
            return bool(st["phases"][0]["pending"] == 0)

        await wait_until(phase_one_notified, what="phase 1 notified")
        killed = reps.set.by_name(holder)
        killed.kill()  # SIGKILL, mid-phase: its reports and its lease are in flight
        live = [a for a, x in zip(apis, reps.items, strict=True) if x is not killed]

        async def taken_over() -> str | None:
            h = reps.lease_holder(rid)
            return h if h not in (None, killed.name) else None

        await wait_until(taken_over, within=30, what="another replica drives the rollout")

        async def finished() -> dict | None:
            st = await live[0].status(rid)
            return st if st["state"] in ("completed", "paused", "aborted") else None

        done = await wait_until(finished, within=120, what="rollout finished")
        # Why it stopped, and how each phase stood, if not completed.
        why = (done["state"], done["reason"], done["states"], done.get("phases"))
        assert done["state"] == "completed", why
        assert done["states"] == {"succeeded": len(ids)}
        _one_notice_each(reps, rid, ids)
        # ... and both drivers sent some: the killed one phase 1, its successor the rest.
        sent = dict(
            reps.query(
                "SELECT sent_by, count(*) FROM notices WHERE rollout_id = %s AND "
                "kind = 'notice' GROUP BY sent_by",
                (rid,),
            )
        )
        assert sum(sent.values()) == len(ids), sent
        assert 0 < sent[killed.name] < len(ids), sent

        await _no_report_lost(reps, ids)
        # The live replicas answer with the same view.
        for a in live:
            assert (await a.status(rid))["states"] == {"succeeded": len(ids)}
        assert_spoke(broker, mqtt_protocol, [r.name for r in reps.items] + ids)


def _one_notice_each(reps: Replicas, rid: int, ids: list[str]) -> None:
    """Every device was notified once, by whichever replica: one update notice each."""
    notices = reps.query(
        "SELECT device_id, count(*) FROM notices WHERE rollout_id = %s AND kind = 'notice' "
        "GROUP BY device_id",
        (rid,),
    )
    assert sorted(notices) == [(d, 1) for d in ids]


async def _no_report_lost(reps: Replicas, ids: list[str]) -> None:
    """Every report stored once and none lost: each device's counters come to be 1..n with
    no gap (the key (device, counter) admits no second copy), the last one succeeded. A
    report the broker had handed a killed replica comes again from its device (it was not
    confirmed) to a live one, maybe after the rollout's outcome."""

    def gaps() -> dict[str, list[int]]:
        out = {}
        for d in ids:
            rows = reps.query(
                "SELECT counter, state FROM reports WHERE device_id = %s ORDER BY counter", (d,)
            )
            counters = [c for c, _ in rows]
            if counters != list(range(1, len(rows) + 1)) or rows[-1][1] != "succeeded":
                out[d] = counters
        return out

    await wait_until(lambda: _async(not gaps()), within=30, what=f"no gaps: {gaps()}")


async def _async(value: _T) -> _T:
    return value


async def _serve_once(config: Path) -> tuple[int, str]:
    """Run ``fleetpush serve`` to its end; its exit code and stderr."""
    proc = await asyncio.create_subprocess_exec(
        str(FLEETPUSH), "serve", "--config", str(config),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    return int(proc.returncode or 0), err.decode()


async def test_a_second_serve_on_one_sqlite_database_is_refused(
    tmp_path: Path, broker: MosquittoBroker, topics: Topics
) -> None:
    async with running(tmp_path, broker, topics) as s:
        config = tmp_path / "orchestrator.toml"
        code, stderr = await _serve_once(config)
        assert code == 1
        assert "already serves this SQLite database" in stderr
        assert "PostgreSQL" in stderr
        # The first one was not disturbed: still connected to the broker and answering.
        assert s.orch.link is not None
        assert s.orch.link.connected.is_set()
        assert (await s.api.call("GET", "/v1/devices"))["devices"] == []


async def test_a_second_process_with_one_replica_identity_is_refused(
    tmp_path: Path, broker: MosquittoBroker, topics: Topics, postgres_database: DatabaseConfig
) -> None:
    async with running(tmp_path, broker, topics, database_url=postgres_database.url) as s:
        config = tmp_path / "orchestrator.toml"
        code, stderr = await _serve_once(config)
        assert code == 1
        assert f"replica {broker.ORCHESTRATOR_USER!r}" in stderr
        assert "its own" in stderr
        assert s.orch.link is not None
        assert s.orch.link.connected.is_set()


async def test_a_replica_with_another_url_signing_key_is_refused(
    tmp_path: Path, broker: MosquittoBroker, topics: Topics, postgres_database: DatabaseConfig
) -> None:
    """A replica whose ``url-signing.key`` is not the running ones' (copied from elsewhere,
    or made on a host that has none) would see every payload URL the others sign refused
    (403), and the reverse: its start is refused, naming the replica it disagrees with."""
    reps = write_replicas(tmp_path, broker, topics, n=2, database_url=postgres_database.url,
                          public_url="http://127.0.0.1:9")  # fmt: skip
    first, second = reps.items
    first.start()
    try:
        async with aiohttp.ClientSession() as session:
            await wait_until(lambda: health(first, session), within=SERVE_START_S,
                             what="the first replica healthy")  # fmt: skip
            key = tmp_path / "orch" / "url-signing.key"
            kept = key.read_bytes()
            write_secret(key, secrets.token_bytes(32).hex().encode())
            code, stderr = await _serve_once(second.config)
            assert code == 1
            assert stderr.startswith(f"Error: replica {first.name!r} (pid "), stderr
            assert "same url-signing.key" in stderr
            assert await health(first, session) is not None  # undisturbed
            # With the same key it starts, beside the first.
            write_secret(key, kept)
            second.start()
            body = await wait_until(lambda: health(second, session), within=SERVE_START_S,
                                    what="the second replica healthy")  # fmt: skip
            assert body["replica"] == second.name
    finally:
        reps.set.stop()


async def test_two_replicas_finish_a_rollout_across_a_postgresql_restart(
    tmp_path: Path, broker: MosquittoBroker, topics: Topics, postgres: LocalPostgres,
    postgres_database: DatabaseConfig,
) -> None:  # fmt: skip
    """PostgreSQL restarted (every connection dropped) once phase 1 is notified: both
    replicas' pools reconnect, ingestion retries its batches, the engine its pass; the
    rollout completes with one notice per device and no report lost."""
    ids = [f"pg-{i:02d}" for i in range(6)]
    async with replicas_up(tmp_path, broker, topics, postgres_database.url, n=2, ids=ids) as (
        reps,
        fleet,
        session,
        balancer,
    ):
        api = Api(session, balancer.url, TOKENS["operator"])
        for d in ids:
            fleet.start(d)

        async def registered() -> bool:
            devs = await api.call("GET", "/v1/devices", params={"online": "true"})
            return len(devs["devices"]) == len(ids)

        await wait_until(registered, what="devices registered")
        rel = await api.upload("app", "9.1")
        r = await api.rollout(rel["id"], target={"devices": ids}, phases=[50, 100],
                              soak_s=1)  # fmt: skip
        rid = r["id"]

        async def phase_one_notified() -> bool:
            st = await api.status(rid)
            return bool(st["phases"][0]["pending"] == 0)

        await wait_until(phase_one_notified, what="phase 1 notified")
        await asyncio.to_thread(postgres.restart)

        async def finished() -> dict | None:
            try:
                st = await api.status(rid)
            except ApiCallError:  # a 5xx while the database is down
                return None
            return st if st["state"] in ("completed", "paused", "aborted") else None

        done = await wait_until(finished, within=120, what="rollout finished")
        # Why it stopped, and how each phase stood, if not completed.
        why = (done["state"], done["reason"], done["states"], done.get("phases"))
        assert done["state"] == "completed", why
        assert done["states"] == {"succeeded": len(ids)}
        _one_notice_each(reps, rid, ids)
        await _no_report_lost(reps, ids)
        for x in reps.items:
            assert x.running, f"{x.name} died; see {x.log}"


def test_add_orchestrator_makes_one_identity_per_replica(tmp_path: Path) -> None:
    """``fleetpush broker add-orchestrator``: an orchestrator identity, its password 0600;
    a device's name is refused (it would gain the orchestrator's rights)."""
    broker_for_data_dir(tmp_path).add_device("dev-1")
    runner = CliRunner()
    pw = tmp_path / "r2.mqtt"
    args = ["broker", "add-orchestrator", "fleetpush-r2", "--data", str(tmp_path)]
    result = runner.invoke(main, [*args, "--password-file", str(pw)])
    assert result.exit_code == 0, result.output
    assert pw.stat().st_mode & 0o777 == 0o600
    ident = broker_for_data_dir(tmp_path).registry.get("fleetpush-r2")
    assert ident is not None
    assert ident.role == "orchestrator"
    refused = runner.invoke(
        main, ["broker", "add-orchestrator", "dev-1", "--data", str(tmp_path),
               "--password-file", str(tmp_path / "x")],
    )  # fmt: skip
    assert refused.exit_code == 1
    assert "device identity" in refused.output
    assert not (tmp_path / "x").exists()
