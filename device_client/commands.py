"""Running handler steps and health checks: argv lists, a timeout, a bounded output tail."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from device_client.output_tail import Captured, drain
from fleetpush_protocol.output import StepOutput

__all__ = ["CommandResult", "reap", "run_command", "substitute"]

logger = logging.getLogger(__name__)

MAX_TAIL = 400  # characters of output kept for the report message


@dataclass(frozen=True, slots=True)
class CommandResult:
    returncode: int | None  # None when it timed out or could not start
    timed_out: bool
    tail: str  # why it could not start, or the end of its output, for the report message
    captured: Captured | None = None  # what it printed, when it ran

    def describe(self) -> str:
        if self.timed_out:
            what = "timed out"
        elif self.returncode is None:
            what = "could not start"
        else:
            what = f"exit {self.returncode}"
        return f"{what}: {self.tail}" if self.tail else what

    def output(self, step: str) -> tuple[StepOutput, ...]:
        """The evidence of this run as ``step``, for a failure report (empty if none)."""
        out = self.captured.step_output(step) if self.captured is not None else None
        return (out,) if out is not None else ()


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
            stderr=asyncio.subprocess.PIPE,
            env=full_env,
            start_new_session=True,
        )
    except OSError as e:
        return CommandResult(None, False, f"{argv[0]}: {e.strerror}")
    captured = Captured.new()
    # Both pipes are read as the child writes, into bounded tails (device_client.output_tail).
    try:
        # asyncio.timeout, not wait_for: a wait_for of a gather that is cancelled leaves the
        # gather's CancelledError unretrieved (Python 3.11), logged at shutdown as an error.
        async with asyncio.timeout(timeout_s):
            await asyncio.gather(
                drain(proc.stdout, captured.stdout), drain(proc.stderr, captured.stderr),
                proc.wait(),
            )  # fmt: skip
    except TimeoutError:
        _kill_group(proc)
        await reap(proc, captured)
        return CommandResult(None, True, f"no result within {timeout_s:g} s", captured)
    except asyncio.CancelledError:
        _kill_group(proc)
        await reap(proc, captured)
        raise
    logger.debug("%s exited %s", argv[0], proc.returncode)
    return CommandResult(proc.returncode, False, captured.summary(MAX_TAIL), captured)


async def reap(
    proc: asyncio.subprocess.Process, captured: Captured | None = None, *, within_s: float = 2.0
) -> None:
    """Wait for a killed child and read its pipes to EOF (into ``captured``'s bounded tails,
    so what it printed last is kept and a grandchild still writing costs no memory).

    ``wait()`` alone is not enough: the pipes' transports close only at EOF, and a reader
    paused on a full buffer never gets there, so the loop would end with them open (a
    ResourceWarning, and an fd leaked per cancelled step on a long-running agent).
    """
    sink = captured if captured is not None else Captured.new()
    if proc.stdin is not None:  # a hook's input, when it never read it all
        with contextlib.suppress(Exception):
            proc.stdin.close()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(within_s):
            await asyncio.gather(
                drain(proc.stdout, sink.stdout), drain(proc.stderr, sink.stderr), proc.wait()
            )


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
