"""Install handlers: how a verified payload becomes the running release.

* ``directory``: unpack a tar into a new slot and switch a ``current`` symlink.
* ``command``: hand the payload to external programs (snap, apt, RAUC, SWUpdate...).

Every step maps its exit code the same way: 0 = done, 3 = done but a reboot is needed,
anything else = failed (``pre_install_failed``, ``install_failed``, ``post_install_failed``).
"""

from __future__ import annotations

from device_client.config import InstallConfig
from device_client.handlers.base import EXIT_REBOOT, Handler, InstallOutcome, InstallRequest
from device_client.handlers.command import CommandHandler
from device_client.handlers.directory import DirectoryHandler, check_member, switch_current

__all__ = [
    "EXIT_REBOOT",
    "CommandHandler",
    "DirectoryHandler",
    "Handler",
    "InstallOutcome",
    "InstallRequest",
    "check_member",
    "make_handler",
    "switch_current",
]


def make_handler(config: InstallConfig) -> Handler:
    """The handler the configuration names."""
    if config.handler == "directory":
        return DirectoryHandler(config)
    return CommandHandler(config)
