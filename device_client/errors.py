"""Device-side failures, on top of the protocol's two families.

FleetpushError                       (fleetpush_protocol.errors)
├── ContentError                     never retried, always reported
│   └── PayloadError                 hash_mismatch / size_mismatch of a download
├── TransportError                   retried with jittered backoff
│   └── DownloadError                one HTTP attempt failed (status, timeout, cut)
│       └── SlowRetrievalError       no byte within read_timeout_s, or below min_bytes_per_s
└── UpdateError                      the device could not apply the update: carries
                                     the ``FailureCode`` reported (disk_full, ...)
"""

from __future__ import annotations

from collections.abc import Sequence

from fleetpush_protocol.errors import FleetpushError, TransportError
from fleetpush_protocol.messages import FailureCode, StepOutput

__all__ = ["DownloadError", "SlowRetrievalError", "UpdateError"]


class DownloadError(TransportError):
    """One download attempt failed; ``retry_same_url`` is False for e.g. HTTP 404."""

    code = "download_failed"

    def __init__(self, text: str, *, retry_same_url: bool = True) -> None:
        super().__init__(text)
        self.retry_same_url = retry_same_url


class SlowRetrievalError(DownloadError):
    """The server did not send a byte within the read timeout."""


class UpdateError(FleetpushError):
    """The update failed on the device; reported as ``failure`` with this message.

    Args:
        failure: the reported failure code.
        text: a short, human-readable reason (never payload bytes or keys).
        changed: True when the device may have changed (a rollback is needed).
        output: what the failing step printed (issue 18), reported with the failure.
    """

    def __init__(
        self,
        failure: FailureCode,
        text: str,
        *,
        changed: bool = False,
        output: Sequence[StepOutput] = (),
    ) -> None:
        super().__init__(text)
        self.failure = failure
        self.changed = changed
        self.output = tuple(output)
