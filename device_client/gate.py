"""The gate hook: ``[holds] gate_command``, asked before an update installs whether an
application on the device can take it now (docs/device.md, "Application holds").

The command gets one JSON object on stdin: what the notification hook gets
(``device_client.hooks.hook_input``: notice id, release name and version, update class,
advisory...) and ``"holds": {"max_each_s": ..., "max_total_s": ..., "held_s": ...}``, the
bounds that apply to this update and how long it has been held so far. It answers on the
first line of its stdout, exiting 0:

- ``proceed`` (or nothing): install now;
- ``hold DURATION [REASON]``: hold it for ``DURATION`` (the one duration syntax, ``90s``,
  ``2h``; at least 1 s), with an optional reason of printable text. The bounds cut it.

Anything else (another exit code, no answer within ``gate_timeout``, a crash, an answer
that does not parse, a command that does not start) proceeds: a broken gate must not keep
a fleet from updating. The report of the install says why in its ``detail``. At most
``MAX_ANSWER`` bytes of stdout are read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from dataclasses import dataclass
from typing import Any

from device_client.config import HoldsConfig
from fleetpush_common.units import parse_duration

__all__ = ["MAX_ANSWER", "MAX_REASON", "GateAnswer", "ask_gate", "check_reason", "parse_answer"]

logger = logging.getLogger(__name__)

MAX_ANSWER = 4096  # bytes of the gate's stdout read
MAX_REASON = 256  # characters of a hold's reason


@dataclass(frozen=True, slots=True)
class GateAnswer:
    hold_s: float  # 0: proceed
    reason: str = ""
    note: str = ""  # why a broken gate was overruled (for the report's detail)


def check_reason(reason: str) -> str:
    """``reason`` if it is printable text of at most ``MAX_REASON`` characters.

    Raises:
        ValueError: it is not; it says what a reason must be.
    """
    if len(reason) > MAX_REASON or not reason.isprintable():
        raise ValueError(f"reason: printable text of at most {MAX_REASON} characters")
    return reason


def parse_answer(out: bytes) -> GateAnswer:
    """The gate's answer from its stdout (exit 0). Raises ``ValueError`` if it is none."""
    text = out.decode("utf-8", errors="strict").strip()
    line = text.splitlines()[0].strip() if text else ""
    if line in ("", "proceed"):
        return GateAnswer(0.0)
    verb, _, rest = line.partition(" ")
    if verb != "hold":
        raise ValueError(f"answer {line[:40]!r} is neither 'proceed' nor 'hold DURATION'")
    duration, _, reason = rest.strip().partition(" ")
    seconds = parse_duration(duration, "hold duration")
    if not seconds >= 1.0:
        raise ValueError("hold duration: at least 1s")
    return GateAnswer(seconds, check_reason(reason.strip()))


async def ask_gate(config: HoldsConfig, info: dict[str, Any]) -> GateAnswer:
    """Run the gate command with ``info`` on stdin; what it answers (proceed if broken)."""
    argv, timeout = config.gate_command, config.gate_timeout_s
    name = os.path.basename(argv[0])
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    except (OSError, ValueError) as e:
        return _broken(f"gate hook {name} could not start ({e})")

    async def talk() -> tuple[int, bytes]:
        assert proc.stdin is not None  # noqa: S101 - PIPE
        assert proc.stdout is not None  # noqa: S101 - PIPE
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            proc.stdin.write(json.dumps(info).encode())
            await proc.stdin.drain()
            proc.stdin.close()
        out = await proc.stdout.read(MAX_ANSWER)
        return await proc.wait(), out

    try:
        code, out = await asyncio.wait_for(talk(), timeout)
    except TimeoutError:
        return _broken(f"gate hook {name} gave no answer within {timeout:g}s")
    finally:
        if proc.returncode is None:  # timed out, or the job was canceled meanwhile
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                await proc.wait()
    if code < 0:
        return _broken(f"gate hook {name} was killed by signal {-code}")
    if code != 0:
        return _broken(f"gate hook {name} exited {code}")
    try:
        return parse_answer(out)
    except ValueError as e:  # UnicodeDecodeError is one
        return _broken(f"gate hook {name}: {e}")


def _broken(why: str) -> GateAnswer:
    logger.warning("%s; proceeding", why)
    return GateAnswer(0.0, note=f"{why}: proceeding")
