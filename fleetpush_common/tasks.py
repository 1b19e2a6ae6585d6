"""Ending background tasks for certain.

One ``task.cancel()`` followed by ``await task`` can wait forever on Python 3.11: when the
operation an ``asyncio.wait_for`` guards finishes in the same loop iteration as the cancel,
``wait_for`` returns its result and the cancel is lost (CPython gh-86296, fixed in 3.12 by a
rewrite of ``wait_for``). Libraries use ``wait_for`` for every acknowledged publish (aiomqtt
does), so a task stopped while a PUBACK arrives runs on to its next ``await`` and, if that
waits for work that never comes, never ends. ``cancel_and_wait`` cancels again until the
task has ended; every shutdown path in fleetpush goes through it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

__all__ = ["cancel_and_wait"]

logger = logging.getLogger(__name__)

RECANCEL_S = 1.0  # seconds: how long a cancelled task may run on before it is cancelled again


async def cancel_and_wait(
    *tasks: asyncio.Future[Any] | None, recancel_s: float = RECANCEL_S
) -> None:
    """Cancel every task in ``tasks`` (``None`` entries are skipped) and return once all ended.

    A task that ignored its cancel is cancelled again every ``recancel_s``. What the tasks
    raised is retrieved (so asyncio never warns of an exception nobody read) and logged at
    debug level: a caller that needs a task's outcome awaits that task itself, not this.
    """
    given = [t for t in tasks if t is not None]
    pending = {t for t in given if not t.done()}
    rounds = 0
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=recancel_s)
        rounds += 1
        if pending:
            logger.debug("%d task(s) ignored a cancel; cancelling again", len(pending))
    for task in given:
        if not task.cancelled() and (e := task.exception()) is not None:
            logger.debug("task ended with %s: %s", type(e).__name__, e)
    if rounds > 1:
        logger.debug("tasks ended after %d cancels", rounds)
