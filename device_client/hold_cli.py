"""``fleetpush-device hold --for 2h --reason "…"``, ``release-hold`` and ``hold-status``:
an application asks the running agent to put off (or stop putting off) an update, over
the hold socket (device_client/hold_socket.py).

It imports only the standard library (and fleetpush_common.units), so an application can
run it as ``python3 -m device_client.hold_cli hold ...`` without the agent's dependencies.

Exit codes: 0 done, 1 refused by the agent (the reason is printed), 2 usage, 3 the socket
cannot be reached (no agent running, or not allowed: not in ``[holds] socket_group``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from datetime import UTC, datetime
from typing import Any

from fleetpush_common.units import parse_duration

__all__ = ["COMMANDS", "DEFAULT_SOCKET", "main"]

COMMANDS = ("hold", "release-hold", "hold-status")
DEFAULT_SOCKET = "/run/fleetpush/hold.sock"
EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3
TIMEOUT_S = 10.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fleetpush-device", description="Hold updates for a while.")
    sub = p.add_subparsers(dest="command", required=True)
    hold = sub.add_parser("hold", help="hold the pending (or next) update")
    hold.add_argument("--for", dest="duration", required=True, help='how long: "90s", "2h"')
    hold.add_argument("--reason", default="", help="shown in the report (printable, <= 256)")
    sub.add_parser("release-hold", help="end the hold: the update may proceed")
    sub.add_parser("hold-status", help="print the hold, if any")
    for s in sub.choices.values():
        s.add_argument("--socket", default=os.environ.get("FLEETPUSH_HOLD_SOCKET", DEFAULT_SOCKET),
                       help=f"the agent's hold socket (default {DEFAULT_SOCKET}, or "
                       "$FLEETPUSH_HOLD_SOCKET)")  # fmt: skip
    return p


def _ask(path: str, request: dict[str, Any]) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(TIMEOUT_S)
        s.connect(path)
        s.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n") and len(data) < 65536:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    answer = json.loads(data)
    if not isinstance(answer, dict):
        raise TypeError("not a JSON object")
    return answer


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def main(argv: list[str]) -> int:
    """Run one hold command; returns the exit code."""
    args = _parser().parse_args(argv)
    request: dict[str, Any]
    if args.command == "hold":
        try:
            request = {"op": "hold", "for_s": parse_duration(args.duration, "--for"),
                       "reason": args.reason}  # fmt: skip
        except ValueError as e:
            print(f"fleetpush-device: {e}", file=sys.stderr)
            return EXIT_USAGE
    else:
        request = {"op": "release" if args.command == "release-hold" else "status"}
    try:
        answer = _ask(args.socket, request)
    except PermissionError:
        print(f"fleetpush-device: not allowed to use {args.socket}: holding updates takes "
              "membership of the agent's hold group ([holds] socket_group)",
              file=sys.stderr)  # fmt: skip
        return EXIT_UNREACHABLE
    except (FileNotFoundError, ConnectionRefusedError):
        print(f"fleetpush-device: no agent listening on {args.socket} (is it running, with "
              "[holds] socket set?)", file=sys.stderr)  # fmt: skip
        return EXIT_UNREACHABLE
    except (OSError, ValueError, TypeError) as e:
        print(f"fleetpush-device: {args.socket}: {e}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if not answer.get("ok"):
        print(f"fleetpush-device: {answer.get('error', 'refused')}", file=sys.stderr)
        return EXIT_REFUSED
    if args.command == "hold":
        print(f"held until {_when(float(answer['until']))}")
    elif args.command == "release-hold":
        print("released" if answer.get("released") else "no hold to release")
    elif (hold := answer.get("hold")) is None:
        print("no hold")
    else:
        print(f"held by {hold['by']} since {_when(hold['set_at'])} for {hold['for_s']:g}s: "
              f"{hold['reason']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
