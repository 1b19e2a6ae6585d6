"""The ``fleetpush`` command: the operator CLI and the service."""

from __future__ import annotations

import asyncio
import logging
from importlib.metadata import entry_points
from pathlib import Path

import click

from orchestrator.app import serve
from orchestrator.cli.broker import broker, provision_command, revoke_command, set_groups_command
from orchestrator.cli.delta import delta
from orchestrator.cli.evidence import logs_command
from orchestrator.cli.keys import config_option, keys, load, tokens
from orchestrator.cli.ops import audit, devices
from orchestrator.cli.protocol import protocol
from orchestrator.cli.quickstart import quickstart
from orchestrator.cli.releases import release, support
from orchestrator.cli.rollouts import rollout
from orchestrator.config import ConfigError
from orchestrator.security.keystore import KeyStoreError
from orchestrator.store import StoreError

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fleetpush", prog_name="fleetpush")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """fleetpush: push signed updates to fleets of devices over MQTT.

    Shell completion: eval "$(_FLEETPUSH_COMPLETE=bash_source fleetpush)" in ~/.bashrc
    (zsh_source for ~/.zshrc, fish_source for fish).
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command("serve")
@config_option
def serve_command(config_path: Path) -> None:
    """Run the orchestrator: MQTT link, ingestion, rollout engine and HTTP API.

    The broker is the one in orchestrator.toml's [mqtt], or else the one `fleetpush broker
    run --data DATA_DIR` recorded in DATA_DIR/broker/broker.json; with neither, it refuses
    to start. Prints which broker it uses and where the API listens.
    """
    cfg = load(config_path)
    try:
        asyncio.run(serve(cfg, say=click.echo))
    except ConnectionError as e:
        hint = ""
        if cfg.mqtt.source.endswith("broker.json"):
            hint = f"; is `fleetpush broker run --data {cfg.data_dir}` running?"
        raise click.ClickException(f"{e}{hint}") from None
    except (ConfigError, KeyStoreError, OSError) as e:
        raise click.ClickException(str(e)) from None
    except StoreError as e:  # unreachable, damaged or newer than this fleetpush
        raise click.ClickException(str(e)) from None


main.add_command(quickstart)
main.add_command(protocol)
main.add_command(broker)
main.add_command(keys)
main.add_command(tokens)
main.add_command(release)
main.add_command(support)
main.add_command(delta)
main.add_command(devices)
main.add_command(rollout)
main.add_command(audit)
devices.add_command(provision_command)
devices.add_command(revoke_command)
devices.add_command(set_groups_command)
devices.add_command(logs_command)


def _add_plugins() -> None:
    """Commands other installed packages offer (``fleetpush_sim``: ``demo``, ``simulate``).

    The service never imports the simulator, which imports the device client: the simulator
    registers its commands under the ``fleetpush.cli`` entry-point group instead.
    """
    for ep in entry_points(group="fleetpush.cli"):
        command = ep.load()
        if isinstance(command, click.Command):
            main.add_command(command, ep.name)


_add_plugins()
