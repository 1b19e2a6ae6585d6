"""The evidence of a failure (issue 18): what the failing step printed, as a report carries it.

Pure functions shared by both ends, because both must apply them: the device cleans and
bounds what it captured before reporting, and the orchestrator does the same again to
what arrives (a device's text is never trusted to be clean or short).

Cleaning keeps printable text, ``\\n`` and ``\\t``: ANSI escape sequences (CSI, OSC and
two-byte ESC sequences) go whole, so no ``[31m`` is left behind; every other C0 and C1
control character, DEL, and the Unicode bidirectional overrides and isolates (which
reorder what an operator reads, "Trojan Source") are dropped; ``\\r\\n`` and a lone
``\\r`` become ``\\n``. Bytes are decoded as UTF-8 with U+FFFD for what is not.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated

import msgspec

__all__ = [
    "MAX_OUTPUT_CHARS",
    "MAX_OUTPUTS",
    "REPORT_BYTES",
    "StepOutput",
    "clean_text",
    "decode_output",
    "fit_outputs",
    "fit_tails",
    "tail_bytes",
]

MAX_OUTPUT_CHARS = 8192  # per stream of one step; the device's budget keeps far below
MAX_OUTPUTS = 4  # steps in one report: the one that failed, and a rollback that failed too

# The largest report a device sends (envelope included): what an orchestrator accepts by
# default (``ingest.max_report_bytes``). A device shortens the output it reports to stay
# within it whatever the rest of the report holds.
REPORT_BYTES = 8192

_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI: colours, cursor moves
    r"|\x1b\][^\x07\x1b\n]*(?:\x07|\x1b\\)?"  # OSC: titles, hyperlinks (not past a line)
    r"|\x1b[@-Z\\-_]"  # two-byte sequences
    r"|\x9b[0-?]*[ -/]*[@-~]"  # 8-bit CSI
)
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# Like a device or group name, so a system update can name a component's step (install:fw).
_STEP = r"\A[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}\Z"


class StepOutput(msgspec.Struct, frozen=True, kw_only=True):
    """The tail of one step's output: ``step`` is ``install``, ``health_check``,
    ``rollback``...; ``printed`` is how many bytes it wrote to both streams in all, of
    which ``stdout`` and ``stderr`` are the cleaned ends."""

    printed: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
    stderr: Annotated[str, msgspec.Meta(max_length=MAX_OUTPUT_CHARS)]
    stdout: Annotated[str, msgspec.Meta(max_length=MAX_OUTPUT_CHARS)]
    step: Annotated[str, msgspec.Meta(pattern=_STEP)]


def clean_text(text: str) -> str:
    """``text`` without escape sequences and control characters (see the module doc)."""
    text = _ESCAPES.sub("", text).replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROLS.sub("", text)


def decode_output(data: bytes) -> str:
    """Captured bytes as clean text. A tail cut mid-character starts with continuation
    bytes: those are skipped rather than shown as U+FFFD."""
    start = 0
    while start < min(len(data), 3) and 0x80 <= data[start] <= 0xBF:
        start += 1
    return clean_text(data[start:].decode("utf-8", errors="replace"))


def tail_bytes(text: str, limit: int) -> str:
    """The end of ``text`` that fits in ``limit`` bytes of UTF-8, whole characters only."""
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[len(data) - limit :].decode("utf-8", errors="ignore")


def fit_tails(texts: Sequence[str], budget: int) -> list[str]:
    """The ends of ``texts`` within ``budget`` bytes of UTF-8 together, shared fairly: each
    gets an equal share, and what a short one leaves goes to the longer ones."""
    sizes = [len(t.encode()) for t in texts]
    shares = [0] * len(texts)
    left = max(0, budget)
    open_ = sorted(range(len(texts)), key=lambda i: sizes[i])
    while open_:
        share = left // len(open_)
        i = open_.pop(0)
        shares[i] = min(sizes[i], share)
        left -= shares[i]
    return [tail_bytes(t, n) for t, n in zip(texts, shares, strict=True)]


def fit_outputs(outputs: Sequence[StepOutput], budget: int) -> tuple[StepOutput, ...]:
    """``outputs`` cleaned, at most ``MAX_OUTPUTS`` of them, their streams together within
    ``budget`` bytes of UTF-8 (the ends kept, shared fairly by ``fit_tails``)."""
    kept = list(outputs)[:MAX_OUTPUTS]
    texts = [clean_text(t) for o in kept for t in (o.stdout, o.stderr)]
    fitted = fit_tails(texts, budget)
    return tuple(
        StepOutput(step=o.step, printed=o.printed, stdout=fitted[2 * i], stderr=fitted[2 * i + 1])
        for i, o in enumerate(kept)
    )
