"""What a device reports about an update: its states, in order, and why one failed.

Apart from the message structs (``messages``), so that code that only reasons about
states (the device's job machine, the orchestrator's rollout rules) names them alone.
``messages`` re-exports them.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["ERROR_STATES", "FailureCode", "ReportState"]


class ReportState(StrEnum):
    """The states a device reports for one notice, in the order they normally happen."""

    NOTIFIED = "notified"
    DEFERRED = "deferred"
    DOWNLOADING = "downloading"
    DOWNLOADED = "downloaded"
    INSTALLING = "installing"
    INSTALLED = "installed"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    REJECTED = "rejected"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset(
    {
        ReportState.SUCCEEDED,
        ReportState.FAILED,
        ReportState.ROLLED_BACK,
        ReportState.REJECTED,
        ReportState.CANCELED,
    }
)


ERROR_STATES = frozenset({ReportState.FAILED, ReportState.ROLLED_BACK, ReportState.REJECTED})
"""The report states that carry an ``error``; every other state carries nil."""


class FailureCode(StrEnum):
    """Why an update failed or was rolled back: the one documented taxonomy.

    ``rejected`` reports carry a verification error code instead (``errors``).
    """

    DOWNLOAD_FAILED = "download_failed"  # every URL failed with transport errors
    HASH_MISMATCH = "hash_mismatch"  # payload bytes differ from the signed SHA-256
    SIZE_MISMATCH = "size_mismatch"  # payload longer or shorter than the signed size
    DISK_FULL = "disk_full"  # no space to store or unpack the payload
    PAYLOAD_INVALID = "payload_invalid"  # not a valid archive, or paths escape the slot
    PRE_INSTALL_FAILED = "pre_install_failed"
    INSTALL_FAILED = "install_failed"
    POST_INSTALL_FAILED = "post_install_failed"
    HEALTH_CHECK_FAILED = "health_check_failed"
    HEALTH_CHECK_TIMEOUT = "health_check_timeout"
    REBOOT_UNCONFIRMED = "reboot_unconfirmed"  # the device came back on the old release
    INTERRUPTED = "interrupted"  # power cut / kill during install; rolled back at start
    ROLLBACK_FAILED = "rollback_failed"  # the previous release could not be restored
    TIMED_OUT = "timed_out"  # set by the orchestrator: the device went silent
    INTERNAL_ERROR = "internal_error"
