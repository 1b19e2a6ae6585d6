"""``fleetpush quickstart init DIR`` and ``run DIR``: one machine, two commands.

``init`` writes a complete installation (``orchestrator.quickstart``); ``run`` starts its
broker and orchestrator in the foreground and stops both on Ctrl-C or SIGTERM; ``wait``
returns once a ``run`` in the background answers, for scripts (docs/quickstart.md).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType

import click

from orchestrator.app import serve
from orchestrator.broker import MosquittoNotFoundError
from orchestrator.cli.broker import recorded_broker
from orchestrator.cli.keys import load
from orchestrator.config import ConfigError
from orchestrator.quickstart import CONFIG_NAME, init_quickstart
from orchestrator.security.keystore import KeyStoreError

__all__ = ["quickstart"]

_root = click.Path(file_okay=False, path_type=Path, resolve_path=True)


@click.group()
def quickstart() -> None:
    """A complete installation on this machine, in one folder (docs/quickstart.md)."""


@quickstart.command("init")
@click.argument("root", type=_root)
@click.option("--devices", default=1, show_default=True, help="Device bundles to write.")
@click.option("--http-port", type=int, default=0, help="API port (default: a free one).")
@click.option("--mqtt-port", type=int, default=0, help="Broker password port (default: free).")
@click.option("--tls-port", type=int, default=0, help="Broker certificate port (default: free).")
def init_command(root: Path, devices: int, http_port: int, mqtt_port: int, tls_port: int) -> None:
    """Write broker configuration, keys, an admin token, orchestrator.toml and device bundles.

    Ports are chosen once (free ones unless given) and kept across restarts. The admin
    token is printed once and saved, 0600, in ROOT/admin.token and ROOT/env.sh.
    """
    try:
        qs = init_quickstart(
            root, devices=devices, http_port=http_port, mqtt_port=mqtt_port, tls_port=tls_port
        )
    except (MosquittoNotFoundError, FileExistsError, ValueError, KeyStoreError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"installation written to {qs.root}")
    click.echo(f"  orchestrator.toml  API {qs.api_url}, broker {qs.broker_url} and {qs.tls_url}")
    click.echo(f"  admin token        {qs.token}  (saved in {qs.root / 'admin.token'})")
    for bundle in qs.bundles:
        click.echo(f"  device bundle      {bundle}")
    click.echo("next:")
    click.echo(f"  fleetpush quickstart run {qs.root}")
    click.echo(f"  . {qs.env_file}    # FLEETPUSH_SERVER, FLEETPUSH_TOKEN, ... for the CLI")
    click.echo(f"  fleetpush-device --config {qs.bundles[0]}")


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # until serve() takes the signals over: stop cleanly, no orphans


@quickstart.command("run")
@click.argument("root", type=_root)
def run_command(root: Path) -> None:
    """Run ROOT's broker and orchestrator in the foreground; Ctrl-C or SIGTERM stops both."""
    config_path = root / CONFIG_NAME
    if not config_path.exists():
        raise click.ClickException(f"{config_path}: missing; run `fleetpush quickstart init`")
    cfg = load(config_path)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    b = recorded_broker(
        cfg.data_dir / "broker", host=None, port=0, tls=True, tls_port=0, prefix=None
    )
    try:
        try:
            b.start()
        except (MosquittoNotFoundError, RuntimeError) as e:
            raise click.ClickException(str(e)) from None
        click.echo(f"broker log: {b.log_path}")
        asyncio.run(serve(cfg, say=click.echo))
    except KeyboardInterrupt:
        pass
    except (ConfigError, KeyStoreError, ConnectionError, OSError) as e:
        raise click.ClickException(str(e)) from None
    except sqlite3.DatabaseError as e:
        raise click.ClickException(f"database {cfg.db_path}: {e}") from None
    finally:
        b.stop()
    click.echo("stopped")


@quickstart.command("wait")
@click.argument("root", type=_root)
@click.option("--timeout", type=click.FloatRange(1, 600), default=60, show_default=True)
def wait_command(root: Path, timeout: float) -> None:
    """Wait until ROOT's orchestrator answers and is connected to its broker."""
    cfg = load(root / CONFIG_NAME)
    url = f"http://{cfg.http.host}:{cfg.http.port}/healthz"
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if json.loads(resp.read()).get("status") == "ok":
                    click.echo(f"ready: {url}")
                    return
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code}"
        except (OSError, ValueError) as e:
            last = str(e)
        time.sleep(0.2)
    raise click.ClickException(
        f"{url} not ready within {timeout:g}s ({last}); see the output of "
        "`fleetpush quickstart run`"
    )
