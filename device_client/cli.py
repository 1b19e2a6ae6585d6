"""``fleetpush-device --config device.toml``: run one device agent until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from device_client import __version__, hold_cli
from device_client.agent import DeviceAgent
from device_client.config import ConfigError, load_config
from device_client.wiring import build_agent

__all__ = ["main"]

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fleetpush-device",
        description="fleetpush device agent: verified, pushed updates.",
        epilog="Applications hold updates with `fleetpush-device hold --for 2h --reason TEXT`, "
        "`release-hold` and `hold-status` (each with --help; docs/device.md).",
    )
    p.add_argument("--config", "-c", required=True, type=Path, help="path to device.toml")
    p.add_argument("-v", "--verbose", action="count", default=0, help="-v info, -vv debug")
    p.add_argument("--check", action="store_true", help="validate the configuration and exit")
    p.add_argument("--version", action="version", version=f"fleetpush-device {__version__}")
    return p


async def _serve(agent: DeviceAgent) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.stop)
    await agent.run()


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (2 for a bad configuration)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in hold_cli.COMMANDS:  # an application's hold, not an agent
        return hold_cli.main(argv)
    args = _parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"fleetpush-device: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check:
        print(f"{args.config}: ok")
        return 0
    try:
        asyncio.run(_serve(build_agent(config)))
    except KeyboardInterrupt:
        pass
    except OSError as e:
        print(f"fleetpush-device: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
