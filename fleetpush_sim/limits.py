"""Process limits a fleet in one process needs."""

from __future__ import annotations

import gc
import logging
import resource

__all__ = ["freeze_heap", "raise_open_files"]

logger = logging.getLogger(__name__)


def raise_open_files() -> int:
    """Raise the soft open-file limit to the hard limit; return the soft limit now in force.

    Each simulated device holds one MQTT socket (and one HTTP socket while downloading), so
    the usual soft limit of 1024 caps a fleet at a few hundred devices.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as e:
            logger.debug("could not raise RLIMIT_NOFILE to %d: %s", hard, e)
    return soft


def freeze_heap() -> None:
    """Move every object alive now out of the garbage collector's reach.

    Call once a fleet is up: tens of thousands of long-lived clients, agents and buffers
    would otherwise be traversed again by every full collection, a pause of tens of
    milliseconds that lands in the middle of whatever is being measured or served.
    """
    gc.collect()
    gc.freeze()
