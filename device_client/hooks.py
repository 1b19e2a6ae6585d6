"""The local notification hook: ``[security] notify_command``, run once per update notice
with what the device verified, so a product can tell its user what is coming, why, and
whether it will disrupt the device's function.

The command gets one JSON object on stdin::

    {"notice_id": "n-...", "rollout_id": "7", "release": {"name": "app", "version": "2.1"},
     "update_class": "security", "advisory": {"cves": [...], "severity": "high",
     "summary": "...", "disruptive": true, "max_postpone_s": 86400},
     "disruptive": true, "automatic": true, "install_by": 1767225600}

and the same in short in its environment (``FLEETPUSH_UPDATE_CLASS``,
``FLEETPUSH_SEVERITY``, ``FLEETPUSH_CVES`` comma-separated, ``FLEETPUSH_DISRUPTIVE`` 1/0,
``FLEETPUSH_INSTALL_BY`` Unix seconds or empty, ``FLEETPUSH_RELEASE`` name@version).
``disruptive`` is the advisory's word, or true when the device reboots to apply updates.
``advisory`` is null and ``update_class`` "feature" for other updates.

A failing or slow hook is logged and never holds the update: the user's notice matters,
the fix matters more. The notice ids already announced are kept (the last 32, written
atomically) so a restart does not announce an update twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from typing import Any

from device_client.commands import reap
from device_client.config import DeviceConfig
from device_client.jobs.security import install_deadline
from device_client.output_tail import RollingTail, drain
from fleetpush_common.atomic import atomic_write
from fleetpush_protocol.messages import Advisory, UpdateNotice

__all__ = ["NotifyHook", "hook_input"]

logger = logging.getLogger(__name__)

_KEEP = 32  # announced notice ids remembered


def hook_input(config: DeviceConfig, notice: UpdateNotice) -> dict[str, Any]:
    """What the hook is told about ``notice``."""
    advisory = notice.advisory if isinstance(notice.advisory, Advisory) else None
    security = notice.security and advisory is not None
    disruptive = bool(config.install.reboot) or (advisory is not None and advisory.disruptive)
    deadline = install_deadline(config, notice)
    return {
        "notice_id": notice.notice_id,
        "rollout_id": notice.rollout_id,
        "release": {"name": notice.release.name, "version": notice.release.version},
        "update_class": "security" if security else "feature",
        "advisory": advisory.to_body() if advisory is not None and security else None,
        "disruptive": disruptive,
        "automatic": config.security.automatic or not security,
        "install_by": int(deadline) if deadline is not None else None,
    }


class NotifyHook:
    """Runs ``[security] notify_command`` once per notice (no command: does nothing)."""

    def __init__(self, config: DeviceConfig) -> None:
        self.config = config
        self.command = config.security.notify_command
        self._file = config.device.state_dir / "announced.json"
        self._announced: list[str] | None = None

    def _load(self) -> list[str]:
        if self._announced is None:
            try:
                data = json.loads(self._file.read_text())
                self._announced = [str(x) for x in data] if isinstance(data, list) else []
            except (OSError, ValueError):
                self._announced = []
        return self._announced

    async def announce(self, notice: UpdateNotice) -> None:
        """Run the hook for ``notice`` unless it already ran for it."""
        if not self.command or notice.notice_id in self._load():
            return
        info = hook_input(self.config, notice)
        await self._run(info)
        announced = [*self._load(), notice.notice_id][-_KEEP:]
        self._announced = announced
        atomic_write(self._file, json.dumps(announced).encode())

    async def _run(self, info: dict[str, Any]) -> None:
        advisory = info["advisory"] or {}
        env = {
            **os.environ,
            "FLEETPUSH_UPDATE_CLASS": info["update_class"],
            "FLEETPUSH_SEVERITY": advisory.get("severity", ""),
            "FLEETPUSH_CVES": ",".join(advisory.get("cves", [])),
            "FLEETPUSH_DISRUPTIVE": "1" if info["disruptive"] else "0",
            "FLEETPUSH_INSTALL_BY": "" if info["install_by"] is None else str(info["install_by"]),
            "FLEETPUSH_RELEASE": f"{info['release']['name']}@{info['release']['version']}",
        }
        timeout = self.config.security.notify_timeout_s
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE, env=env,
            )  # fmt: skip
        except (OSError, ValueError) as e:  # ValueError: a NUL in a signed value
            logger.warning("notify_command %s could not start: %s", self.command[0], e)
            return
        err = RollingTail()  # its stderr, bounded as a step's (device_client.output_tail)
        try:
            async with asyncio.timeout(timeout):  # not wait_for: see commands.run_command
                await asyncio.gather(_feed(proc, json.dumps(info).encode()),
                                     drain(proc.stderr, err), proc.wait())  # fmt: skip
        except TimeoutError:
            logger.warning("notify_command took longer than %gs; killed", timeout)
            return
        finally:
            if proc.returncode is None:  # timed out, or the job was canceled meanwhile
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            await reap(proc)
        if proc.returncode:
            logger.warning("notify_command exited %d: %s", proc.returncode,
                           err.text().strip()[-500:])  # fmt: skip


async def _feed(proc: asyncio.subprocess.Process, data: bytes) -> None:
    """Write the hook's input; a hook that exits without reading it is no error."""
    assert proc.stdin is not None  # noqa: S101 - started with stdin=PIPE
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        proc.stdin.write(data)
        await proc.stdin.drain()
        proc.stdin.close()
