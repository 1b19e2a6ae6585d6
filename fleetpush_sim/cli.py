"""``fleetpush demo`` and ``fleetpush simulate``: a simulated fleet of real device agents."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from fleetpush_common.config import parse_size
from fleetpush_sim.brokers.base import BrokerNotFoundError
from fleetpush_sim.demo import DemoOptions, run_demo
from fleetpush_sim.simulate import SimOptions, open_broker, run_simulation
from orchestrator.broker import MosquittoNotFoundError
from orchestrator.cli.keys import config_option, load
from orchestrator.provisioning import read_root_keys
from orchestrator.store.postgres.local import PostgresNotFoundError

__all__ = ["demo", "simulate"]


def parse_rate(text: str) -> int:
    """Bytes per second from ``"65536"``, ``"64KiB"``, ``"1MB/s"`` (the configuration's sizes)."""
    try:
        return parse_size(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: expected bytes per second like 65536, 64KiB, 1MB"
        ) from None


def _share(_ctx: click.Context, _param: click.Parameter, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise click.BadParameter("a share is between 0 and 1 (0.1 = 10% of the devices)")
    return value


def _no_broker(e: MosquittoNotFoundError | BrokerNotFoundError, as_json: bool) -> None:
    message = f"fleetpush: {e}\n(or run: bash scripts/install)"
    if as_json:
        click.echo(json.dumps({"error": str(e)}))
    click.echo(message, err=True)
    sys.exit(2)


# --- demo --------------------------------------------------------------------------------


def _phase_table(summary: dict[str, Any]) -> Table:
    t = Table(title="phases (seconds after the phase opened)")
    for col in ("phase", "share", "devices", "opened at", "all verified", "all finished",
                "succeeded", "failed"):  # fmt: skip
        t.add_column(col, justify="right")

    def s(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}s"

    for p in summary["phases"]:
        t.add_row(
            str(p["phase"]), f"{p['percent']:g}%", str(p["devices"]), s(p["opened_s"]),
            s(p["notify_s"]), s(p["complete_s"]), str(p["succeeded"]), str(p["failed"]),
        )  # fmt: skip
    return t


def demo_view(status: dict[str, Any], note: str) -> Group:
    """The demo's live view: one row per phase whose bar keeps its width at 80 columns.

    The counts wrap under the bar rather than squeezing it out: a grid with a minimum bar
    width, where the generic progress view gives its text columns the room first.
    """
    head = Text(
        f"rollout {status['id']}: {status['release']['name']} {status['release']['version']}"
        f" - {status['state']} - {status['devices']} device(s)"
        + (f"\n{status['reason']}" if status.get("reason") else ""),
        style="bold",
    )
    grid = Table.grid(padding=(0, 1), expand=True)
    grid.add_column(no_wrap=True)
    grid.add_column(min_width=12, ratio=1)
    grid.add_column(no_wrap=True, justify="right")
    grid.add_column(ratio=2, overflow="fold")
    for p in status["phases"]:
        label = p.get("status") or ("open" if p.get("open") else "closed")
        total = p["devices"]
        grid.add_row(
            f"phase {p['index']} {p['percent']:g}% {label}",
            ProgressBar(total=max(total, 1), completed=p["succeeded"] if total else 0),
            f"{p['succeeded']}/{total}",
            f"failed {p['failed']} · in flight {p['in_flight']} · pending {p['pending']}"
            f" · offline {p['waiting_offline']}",
        )
    states = Text("  ".join(f"{k}: {v}" for k, v in sorted(status["states"].items())))
    return Group(head, grid, states or Text("no devices"), Text(note))


def _print_summary(console: Console, summary: dict[str, Any]) -> None:
    console.print(_phase_table(summary))
    n = summary["devices"]
    notify = summary["time_to_notify_s"]
    done = summary["time_to_complete_s"]
    console.print(
        f"[bold]{n} devices[/]: rollout {summary['rollout_state']}; "
        + "  ".join(f"{k}: {v}" for k, v in summary["final_states"].items())
    )
    console.print(
        f"every device verified its notice {notify:.2f}s after the rollout started "
        "(gates and soak between phases included)" if notify is not None
        else f"only {summary['devices_notified']} of {n} devices verified a notice"
    )  # fmt: skip
    if done is not None:
        console.print(f"rollout complete after {done:.2f}s; "
                      f"{summary['reports_ingested']} reports ingested")  # fmt: skip
    if summary.get("replicas"):
        killed = summary["killed_replica"]
        console.print(
            f"{summary['replicas']} replicas on PostgreSQL; notices sent: "
            + ", ".join(f"{k} {v}" for k, v in summary["notices_by_replica"].items())
            + (f"; {killed} was SIGKILLed mid-rollout" if killed else "")
        )
    if summary.get("broker_nodes"):
        _print_cluster(console, summary)
    console.print("everything stopped; temporary files removed.")


def _print_cluster(console: Console, summary: dict[str, Any]) -> None:
    killed = summary["killed_broker_node"]
    back = summary["time_to_reconnect_s"]
    where = ", ".join(f"{node} {n}" for node, n in summary["devices_by_node"].items())
    console.print(
        f"{summary['broker_nodes']}-node nats-server cluster: devices started on node "
        f"{summary['devices_started_on']}, the orchestrator on node {summary['orchestrator_on']}"
        + (f"; node {killed} was SIGKILLed mid-rollout" if killed else "")
        + (f", every device connected to another node {back:.2f}s later" if back else "")
    )
    console.print(f"devices succeeded: {summary['devices_succeeded']}/{summary['devices']}; "
                  f"devices per node now: {where}")  # fmt: skip


@click.command("demo")
@click.option("--devices", "n", default=50, show_default=True, type=click.IntRange(1, 5000),
              help="Simulated devices (real device agents, one process).")  # fmt: skip
@click.option("--soak", default=1.0, show_default=True, help="Seconds each phase's gate must hold.")
@click.option("--fail-share", default=0.0, callback=_share,
              help="Share of devices whose health check fails.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print only a JSON summary.")
@click.option("--replicas", default=0, type=click.IntRange(0, 8),
              help="Run N `fleetpush serve` replicas on PostgreSQL instead of one in-process "
              "orchestrator on SQLite.")  # fmt: skip
@click.option(
    "--kill-replica",
    is_flag=True,
    help="SIGKILL the replica driving the rollout mid-rollout (needs --replicas 2+).",
)
@click.option("--database", default="",
              help="An empty PostgreSQL database for --replicas (default: the demo starts "
              "its own server with initdb and pg_ctl).")  # fmt: skip
@click.option("--broker-cluster", "broker_cluster", default=0,
              type=click.IntRange(min=0, max=5), metavar="N",
              help="Use N nats-server nodes (3 to 5) clustered instead of Mosquitto: "
              "devices on node a, the orchestrator on node b, node a SIGKILLed "
              "mid-rollout.")  # fmt: skip
def demo(  # noqa: PLR0917 - click passes options as parameters
    n: int, soak: float, fail_share: float, as_json: bool, replicas: int, kill_replica: bool,
    database: str, broker_cluster: int,
) -> None:  # fmt: skip
    """Watch a real rollout: Mosquitto, the orchestrator and N devices in one process.

    Uploads a small release and rolls it out in three gated phases (10%, 50%, 100%),
    then stops everything and removes its temporary folder. With --replicas the
    orchestrator is several real `fleetpush serve` processes on one PostgreSQL database
    (docs/scaling.md), and --kill-replica shows the others finishing the rollout. With
    --broker-cluster the broker is a nats-server cluster that loses the devices' node
    mid-rollout (docs/broker.md, "Cluster").
    """
    if kill_replica and replicas < 2:
        raise click.UsageError("--kill-replica needs --replicas 2 or more")
    if broker_cluster and broker_cluster < 3:  # a quorum of 2 must outlive the node killed
        raise click.UsageError("--broker-cluster needs 3 nodes or more (a quorum of 2 must stay)")
    if broker_cluster and replicas:
        raise click.UsageError("--broker-cluster runs one in-process orchestrator: no --replicas")
    if database and not database.startswith(("postgresql://", "postgres://")):
        raise click.UsageError("--database: expected a postgresql:// URL")
    options = DemoOptions(devices=n, soak_s=soak, fail_share=fail_share, replicas=replicas,
                          kill_replica=kill_replica, database=database,
                          broker_cluster=broker_cluster)  # fmt: skip
    console = Console()
    try:
        if as_json:
            summary = run_demo(options)
            click.echo(json.dumps(summary))
        else:
            broker = f"{broker_cluster} nats-server nodes" if broker_cluster else "Mosquitto"
            console.print(f"starting {broker}, the orchestrator and {n} devices ...")
            with Live(Text("waiting for the devices to come online ..."), console=console,
                      refresh_per_second=8, transient=False) as live:  # fmt: skip

                def show(status: dict[str, Any], verified: int) -> None:
                    note = f"devices that verified a notice: {verified}/{n}"
                    live.update(demo_view(status, note))

                summary = run_demo(options, on_status=show)
            _print_summary(console, summary)
    except (MosquittoNotFoundError, BrokerNotFoundError) as e:
        _no_broker(e, as_json)
    except PostgresNotFoundError as e:
        if as_json:
            click.echo(json.dumps({"error": str(e)}))
        raise click.ClickException(f"{e}; or give --database postgresql://...") from None
    except (KeyboardInterrupt, asyncio.CancelledError):
        click.echo("interrupted; everything stopped.", err=True)
        sys.exit(130)
    if summary["rollout_state"] != "completed":
        sys.exit(1)


# --- simulate ----------------------------------------------------------------------------


@click.command("simulate")
@config_option
@click.option("--devices", "n", required=True, type=click.IntRange(1, 100_000))
@click.option("--broker-data", type=click.Path(file_okay=False, path_type=Path),
              help="The broker's working directory (default: DATA_DIR/broker).")  # fmt: skip
@click.option("--prefix", default="sim", show_default=True, help="Device ids: PREFIX-00001 ...")
@click.option("--group", "groups", multiple=True, help="Device group; repeat. Default: sim.")
@click.option("--fail-share", default=0.0, callback=_share, help="Share failing health checks.")
@click.option("--offline-share", default=0.0, callback=_share,
              help="Share that go offline for a while.")  # fmt: skip
@click.option("--offline-after", default=10.0, show_default=True,
              help="They drop at a random time within this many seconds ...")  # fmt: skip
@click.option("--offline-for", default=30.0, show_default=True, help="... for this many seconds.")
@click.option("--slow-share", default=0.0, callback=_share, help="Share with slow links.")
@click.option("--bandwidth", default="64KiB", show_default=True,
              help="Download rate of slow links (bytes/s; 64KiB, 1MB).")  # fmt: skip
@click.option("--duration", default=0.0, help="Seconds to run; 0 = until Ctrl-C.")
@click.option("--no-health-check", is_flag=True, help="Healthy devices skip /bin/true.")
@click.option("--seed", type=int, help="Seed for choosing the misbehaving devices.")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Keep device state here (default: a temporary folder).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print only a JSON summary at the end.")
def simulate(*, config_path: Path, n: int, broker_data: Path | None, prefix: str,
             groups: tuple[str, ...], fail_share: float, offline_share: float,
             offline_after: float, offline_for: float, slow_share: float, bandwidth: str,
             duration: float, no_health_check: bool, seed: int | None, state_dir: Path | None,
             as_json: bool) -> None:  # fmt: skip
    """Run N simulated devices against a running orchestrator and broker (load tests).

    The devices get fresh broker passwords in the broker's identity registry and trust the
    root keys in the orchestrator's keys folder. Start rollouts as usual; Ctrl-C stops
    the devices and prints what they did.
    """
    cfg = load(config_path)
    try:
        root_keys, _threshold = read_root_keys(cfg.keys_dir)
    except ValueError as e:
        raise click.ClickException(f"{e}; run 'fleetpush keys init' first") from None
    workdir = broker_data or cfg.data_dir / "broker"
    if not (workdir / "identities.json").exists() and not (workdir / "broker.json").exists():
        raise click.ClickException(f"{workdir}: no broker state here; give --broker-data")
    broker = open_broker(workdir, cfg.mqtt.topic_prefix)
    options = SimOptions(
        devices=n, id_prefix=prefix, groups=groups or ("sim",), fail_share=fail_share,
        offline_share=offline_share, offline_after_s=offline_after, offline_for_s=offline_for,
        slow_share=slow_share, bandwidth=parse_rate(bandwidth), duration_s=duration,
        health_check=not no_health_check, seed=seed, state_dir=state_dir,
    )  # fmt: skip
    console = Console(stderr=True)

    def tick(snap: dict[str, Any]) -> None:
        rollouts = "; ".join(
            f"rollout {rid}: " + " ".join(f"{k} {v}" for k, v in states.items())
            for rid, states in snap["rollouts"].items()
        )
        console.print(f"[{snap['elapsed_s']:>6.0f}s] {snap['devices_running']} devices running"
                      + (f"; {rollouts}" if rollouts else ""))  # fmt: skip

    if not as_json:
        console.print(f"{n} devices against {broker.url} (Ctrl-C stops)")
    summary = run_simulation(options, broker, root_keys, None if as_json else tick)
    click.echo(json.dumps(summary, indent=None if as_json else 2))
