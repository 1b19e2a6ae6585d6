"""The end of what a step prints, kept in bounded memory while it runs (issue 18).

Each of a child's two pipes is read as fast as it writes (so a child that floods its
output never blocks on a full pipe) into a ``RollingTail`` that keeps only the last
``CAPTURE_BYTES``: a step printing 50 MB costs the agent that much reading, not that much
memory. The report's share of it (``[evidence] output_tail``) is cut when the report is
built, in ``device_client.reports``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from fleetpush_protocol.envelope import decode_message
from fleetpush_protocol.errors import ContentError
from fleetpush_protocol.output import REPORT_BYTES, StepOutput, decode_output

__all__ = ["CAPTURE_BYTES", "Captured", "RollingTail", "drain", "fit_report"]

logger = logging.getLogger(__name__)

# Per stream: the largest ``[evidence] output_tail`` (the report's share is cut from it).
CAPTURE_BYTES = 6 * 1024
_READ = 65536  # bytes per read


class RollingTail:
    """The last ``limit`` bytes written to it, and how many were written in all."""

    def __init__(self, limit: int = CAPTURE_BYTES) -> None:
        self.limit = limit
        self.total = 0
        self._buf = bytearray()

    def write(self, data: bytes) -> None:
        self.total += len(data)
        if len(data) >= self.limit:
            self._buf[:] = data[-self.limit :]
        else:
            self._buf += data
            if len(self._buf) > self.limit:
                del self._buf[: len(self._buf) - self.limit]

    def text(self) -> str:
        return decode_output(bytes(self._buf))


async def drain(stream: asyncio.StreamReader | None, tail: RollingTail) -> None:
    """Read ``stream`` to its end into ``tail``."""
    if stream is None:
        return
    while chunk := await stream.read(_READ):
        tail.write(chunk)


@dataclass(frozen=True, slots=True)
class Captured:
    """What one command printed: the ends of its stdout and stderr."""

    stdout: RollingTail
    stderr: RollingTail

    @classmethod
    def new(cls) -> Captured:
        return cls(RollingTail(), RollingTail())

    def summary(self, chars: int) -> str:
        """The last ``chars`` characters of stderr (of stdout when stderr is empty), for
        the one-line error message."""
        text = self.stderr.text().strip() or self.stdout.text().strip()
        return text[-chars:]

    def step_output(self, step: str) -> StepOutput | None:
        """The evidence of ``step``, or None when it printed nothing."""
        printed = self.stdout.total + self.stderr.total
        if not printed:
            return None
        return StepOutput(
            step=step, printed=printed, stdout=self.stdout.text(), stderr=self.stderr.text()
        )


def fit_report(encode: Callable[[int], bytes], budget: int) -> bytes:
    """``encode(budget)``, with the output's budget halved until the report fits in
    ``REPORT_BYTES`` (a long error message leaves less room), down to none.

    A struct is not checked against its bounds when built, only when decoded: a report
    whose output the orchestrator would refuse (a step name out of its pattern) would be
    resent for ever and the failure never known, so such a one goes without its output.
    """
    data = encode(budget)
    while len(data) > REPORT_BYTES and budget > 0:
        budget = budget // 2 if budget > 64 else 0
        data = encode(budget)
    if budget > 0:
        try:
            decode_message(data)
        except ContentError as e:
            logger.warning("failure output left out of a report: %s", e)
            data = encode(0)
    return data
