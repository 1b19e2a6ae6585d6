"""Running handler steps and health checks: argv lists, a timeout, a bounded output tail."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["CommandResult", "reap", "run_command", "substitute"]

logger = logging.getLogger(__name__)

MAX_TAIL = 400  # characters of output kept for the report message


@dataclass(frozen=True, slots=True)
class CommandResult:
    returncode: int | None  # None when it timed out or could not start
    timed_out: bool
    tail: str  # the end of stdout+stderr, for the report

    def describe(self) -> str:
        if self.timed_out:
            what = "timed out"
        elif self.returncode is None:
            what = "could not start"
        else:
            what = f"exit {self.returncode}"
        return f"{what}: {self.tail}" if self.tail else what


def substitute(argv: Sequence[str], values: Mapping[str, str]) -> list[str]:
    """Replace ``{name}`` placeholders in each argument (no shell is ever involved)."""
    out = []
    for arg in argv:
        text = arg
        for name, value in values.items():
            text = text.replace("{" + name + "}", value)
        out.append(text)
    return out


async def run_command(
    argv: Sequence[str], *, timeout_s: float, env: Mapping[str, str] | None = None
) -> CommandResult:
    """Run ``argv`` in its own process group; kill the whole group on timeout."""
    full_env = {**os.environ, **(env or {})}
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=full_env,
            start_new_session=True,
        )
    except OSError as e:
        return CommandResult(None, False, f"{argv[0]}: {e.strerror}")
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        _kill_group(proc)
        await reap(proc)
        return CommandResult(None, True, f"no result within {timeout_s:g} s")
    except asyncio.CancelledError:
        _kill_group(proc)
        await reap(proc)
        raise
    tail = out.decode(errors="replace").strip()[-MAX_TAIL:]
    logger.debug("%s exited %s", argv[0], proc.returncode)
    return CommandResult(proc.returncode, False, tail)


async def reap(proc: asyncio.subprocess.Process, *, within_s: float = 2.0) -> None:
    """Wait for a killed child and read its pipes to EOF.

    ``wait()`` alone is not enough: the pipes' transports close only at EOF, and a reader
    paused on a full buffer never gets there, so the loop would end with them open (a
    ResourceWarning, and an fd leaked per cancelled step on a long-running agent).
    """
    with contextlib.suppress(Exception):
        await asyncio.wait_for(proc.communicate(), within_s)


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
