"""The Mosquitto process: find the binary, start it, find it again, signal it, stop it.

A broker may have been started by another process (``fleetpush broker run`` next to a
``fleetpush devices provision``): it is then found through its pid file, and only signalled
when that pid really is a mosquitto running this working directory's configuration (a pid
file outlives a crash, and its pid may be reused).
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "INSTALL_HINT",
    "MosquittoNotFoundError",
    "MosquittoProcess",
    "find_mosquitto",
    "free_port",
    "listening",
]

logger = logging.getLogger(__name__)

INSTALL_HINT = "install it with: sudo apt-get install mosquitto (Debian/Ubuntu)"


class MosquittoNotFoundError(RuntimeError):
    """No mosquitto binary on this machine."""


def find_mosquitto() -> str:
    """Path of the mosquitto binary, or raise ``MosquittoNotFoundError``."""
    found = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)),
        None,
    )
    if found is None:
        raise MosquittoNotFoundError(f"mosquitto is not installed; {INSTALL_HINT}")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the usual small race applies)."""
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def listening(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), 0.2):
            return True
    except OSError:
        return False


class MosquittoProcess:
    """One mosquitto started with ``-c config``, or found through ``pid_file``.

    Args:
        config: the rendered configuration (made absolute here).
        pid_file: the ``pid_file`` that configuration names.
        output: where the process's stdout and stderr go.
    """

    def __init__(self, config: Path, pid_file: Path, output: Path) -> None:
        self.config = Path(config).resolve()
        self.pid_file = Path(pid_file).resolve()
        self.output = Path(output)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def started_here(self) -> bool:
        """Whether this object started the process (it then knows the pid for sure)."""
        return self._proc is not None

    @property
    def running(self) -> bool:
        """The process this object started is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, host: str, ports: Sequence[int], timeout: float) -> None:
        """Start mosquitto and wait until every port in ``ports`` accepts connections."""
        binary = find_mosquitto()
        with self.output.open("ab") as out:
            self._proc = subprocess.Popen(
                [binary, "-c", str(self.config)], stdout=out, stderr=out, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited at start; see {self.output}")
            if all(listening(host, p) for p in ports):
                logger.debug("mosquitto listening on %s:%s", host, list(ports))
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {host}:{list(ports)} in {timeout}s")

    def find_pid(self) -> int | None:
        """The running broker's pid, or None when there is none this object may signal."""
        if self._proc is not None:
            return self._proc.pid if self.running else None
        return self._pid_from_file()

    def why_no_pid(self) -> str:
        """Why ``find_pid()`` found nothing, in words for an operator."""
        if self._proc is not None:
            return "the broker this process started has exited"
        try:
            pid = int(self.pid_file.read_text().strip())
        except FileNotFoundError:
            return f"no pid file {self.pid_file}"
        except (OSError, ValueError) as e:
            return f"unreadable pid file {self.pid_file} ({e})"
        if self._pid_from_file() == pid:
            return f"pid {pid} is this directory's mosquitto, but this user may not signal it"
        return (
            f"pid {pid} from {self.pid_file} is not a mosquitto running {self.config} "
            "(stale pid file, or a broker started some other way)"
        )

    def _pid_from_file(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        if not cmdline or not cmdline[0].endswith(b"mosquitto"):
            return None
        configs = [v for f, v in itertools.pairwise(cmdline) if f in (b"-c", b"--config-file")]
        return pid if any(self._is_our_config(pid, os.fsdecode(v)) for v in configs) else None

    def _is_our_config(self, pid: int, value: str) -> bool:
        path = Path(value)
        if not path.is_absolute():
            # Started with a relative path from another folder: what it names from the
            # broker's own working directory is what counts.
            try:
                path = Path(os.readlink(f"/proc/{pid}/cwd")) / path
            except OSError:
                return False
        return path.resolve() == self.config

    def hangup(self) -> int | None:
        """Send SIGHUP (re-read passwords, ACL, CRL); return the pid, or None if none."""
        pid = self.find_pid()
        if pid is None:
            return None
        try:
            os.kill(pid, signal.SIGHUP)
        except (ProcessLookupError, PermissionError):
            # Gone, or another user's (deploy/: a path unit reloads it instead).
            return None
        return pid

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully (SIGTERM), so persistence is written."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL: no chance to save state beyond the last autosave."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
