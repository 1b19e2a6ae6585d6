"""The hold socket: ``fleetpush-device hold`` talks to the running agent over a UNIX socket
(``[holds] socket``), and the file permissions decide who may hold (docs/device.md,
"Application holds"; docs/security.md).

The socket's folder is made mode 0750 (0700 without ``socket_group``) and the socket 0660,
owned by ``socket_group`` when set, whatever the umask: only the agent's user and members
of that group can connect. Binding happens inside the already-restricted folder, so the
moment between bind and chmod exposes nothing. Who connected (``SO_PEERCRED``) is named in
the hold's report.

One request per connection, one JSON object on one line of at most ``MAX_REQUEST`` bytes,
answered by one JSON line ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``:

- ``{"op": "hold", "for_s": 7200, "reason": "recording"}``: hold (replaces a hold);
  answers ``until`` (Unix seconds, the bounds applied);
- ``{"op": "release"}``: end the hold; answers ``released`` (false if there was none);
- ``{"op": "status"}``: answers ``hold`` (``{set_at, for_s, reason, by}`` or null).

Anything else (not JSON, unknown fields or ops, a bad duration or reason, too long, no
full line within ``READ_TIMEOUT_S``) gets an error and changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import pwd
import socket
import stat
import struct
from pathlib import Path
from typing import Any, Literal

import msgspec

from device_client.config import HoldsConfig
from device_client.gate import check_reason
from device_client.holds import HoldRefusedError, Holds
from fleetpush_common.atomic import make_private_dir

__all__ = ["MAX_CLIENTS", "MAX_REQUEST", "HoldSocket", "handle_request"]

logger = logging.getLogger(__name__)

MAX_REQUEST = 1024  # bytes in one request line
MAX_CLIENTS = 8  # connections served at once; more are refused
READ_TIMEOUT_S = 5.0  # seconds for the request line (socket I/O, not update policy)
MAX_HOLD_S = 365 * 86400.0


class _Request(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    op: Literal["hold", "release", "status"]
    for_s: float | None = None
    reason: str = ""


def handle_request(holds: Holds, line: bytes, by: str) -> dict[str, Any]:
    """The answer to one request line from ``by``; a bad request changes nothing."""
    try:
        req = msgspec.json.decode(line, type=_Request)
    except msgspec.DecodeError as e:
        return {"ok": False, "error": f"bad request: {e}"}
    if req.op == "release":
        return {"ok": True, "released": holds.release(by)}
    if req.op == "status":
        hold = holds.status()
        return {"ok": True, "hold": None if hold is None else msgspec.to_builtins(hold)}
    if req.for_s is None or not 1.0 <= req.for_s <= MAX_HOLD_S:
        return {"ok": False, "error": "bad request: for_s: seconds, 1 to 365 days"}
    try:
        until = holds.request(req.for_s, check_reason(req.reason), by)
    except (HoldRefusedError, ValueError) as e:
        return {"ok": False, "error": str(e)}
    return {"ok": True, "until": int(until)}


def _peer(writer: asyncio.StreamWriter) -> str:
    sock = writer.get_extra_info("socket")
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _, uid, _ = struct.unpack("3i", creds)
    except (OSError, AttributeError):
        return "unknown peer"
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


class HoldSocket:
    """Serves hold requests on ``config.socket`` while the agent runs."""

    def __init__(self, config: HoldsConfig, holds: Holds) -> None:
        assert config.socket is not None  # noqa: S101 - built only when configured
        self.path: Path = config.socket
        self.group = config.socket_group
        self.holds = holds
        self._server: asyncio.Server | None = None
        self._clients = asyncio.Semaphore(MAX_CLIENTS)

    async def start(self) -> None:
        """Bind the socket with its modes. Raises ``OSError`` (or ``KeyError`` for an
        unknown group) if it cannot."""
        gid = grp.getgrnam(self.group).gr_gid if self.group else -1
        folder = self.path.parent
        make_private_dir(folder.parent)
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, 0o700)
        # Enforced on each start: this folder's mode is the socket's permission model.
        os.chown(folder, -1, gid)
        os.chmod(folder, 0o750 if self.group else 0o700)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                self.path.unlink()  # left by an agent that did not stop cleanly
        self._server = await asyncio.start_unix_server(self._serve, self.path, limit=MAX_REQUEST)
        os.chown(self.path, -1, gid)
        os.chmod(self.path, 0o660)

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), READ_TIMEOUT_S)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self._clients.locked():
                answer: dict[str, Any] = {"ok": False, "error": "busy: too many connections"}
            else:
                async with self._clients:
                    answer = await self._answer(reader, _peer(writer))
            writer.write(msgspec.json.encode(answer) + b"\n")
            await writer.drain()
        except (OSError, TimeoutError):
            pass  # the client went away: nothing to tell it
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, by: str) -> dict[str, Any]:
        try:
            line = await asyncio.wait_for(reader.readuntil(b"\n"), READ_TIMEOUT_S)
        except asyncio.LimitOverrunError:
            return {"ok": False, "error": f"bad request: longer than {MAX_REQUEST} bytes"}
        except asyncio.IncompleteReadError:
            return {"ok": False, "error": "bad request: not one line ending in a newline"}
        except TimeoutError:
            return {"ok": False, "error": f"bad request: no full line within {READ_TIMEOUT_S:g}s"}
        try:
            return handle_request(self.holds, line, by)
        except OSError as e:  # the hold could not be written: it is not set
            logger.error("hold request from %s: %s", by, e)  # noqa: TRY400 - no traceback
            return {"ok": False, "error": f"the agent could not store the hold: {e.strerror}"}
