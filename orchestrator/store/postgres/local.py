"""A throwaway PostgreSQL server in a folder of its own, for tests, benchmarks and the demo.

It runs Debian's ``initdb`` and ``pg_ctl`` (package ``postgresql``) on a free port with its
unix socket in that folder, trust authentication and no fsync: fast, and nothing to do
with any PostgreSQL the machine already runs. PostgreSQL refuses to run as root; as root it
runs as the ``postgres`` user the Debian package creates.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import sql

from orchestrator.broker import free_port

__all__ = ["LocalPostgres", "PostgresNotFoundError", "find_pg_bin"]


class PostgresNotFoundError(RuntimeError):
    """No ``initdb``/``pg_ctl`` on this machine (install Debian's ``postgresql``)."""


def find_pg_bin() -> Path:
    """The folder of the newest installed PostgreSQL server programs.

    Raises:
        PostgresNotFoundError: none is installed.
    """
    found = sorted(
        (Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1]
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).parent
    raise PostgresNotFoundError(
        "PostgreSQL's initdb and pg_ctl are missing: install Debian's postgresql package "
        "(apt-get install postgresql)"
    )


class LocalPostgres:
    """``start()`` a private server, ``create_database()`` per user, ``stop()`` it.

    Args:
        folder: where the cluster, its socket and log go; a temporary folder if None
            (removed by ``stop``).
    """

    def __init__(self, folder: Path | None = None) -> None:
        self.bin = find_pg_bin()
        self._own_folder = folder is None
        self.folder = folder or Path(tempfile.mkdtemp(prefix="fleetpush-pg-"))
        self.data = self.folder / "data"
        self.socket_dir = self.folder / "sock"
        self.log = self.folder / "postgres.log"
        self.port = 0
        self._user: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresNotFoundError(
                    "running as root and there is no postgres user to run PostgreSQL as"
                ) from None
            self._user = "postgres"

    @property
    def url(self) -> str:
        """The maintenance database's URL (``postgres``)."""
        return self.database_url("postgres")

    def database_url(self, name: str) -> str:
        return f"postgresql://fleetpush@127.0.0.1:{self.port}/{name}"

    def _run(self, *args: str) -> None:
        done = subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            check=False,
            user=self._user,
            cwd=self.folder,
        )
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{args[0]} failed: {done.stderr.strip()}\n{log}")

    def start(self) -> None:
        """Create the cluster (first time) and start the server on a free port."""
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            for p in (self.folder, self.socket_dir):
                os.chown(p, entry.pw_uid, entry.pw_gid)
        if not self.data.exists():
            self._run(
                "initdb", "-D", str(self.data), "-U", "fleetpush", "--auth=trust",
                "--no-locale", "-E", "UTF8", "--no-sync",
            )  # fmt: skip
        self.port = free_port()
        self._start_server()

    def _start_server(self) -> None:
        options = (
            f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w",
                  "-t", "60", "start")  # fmt: skip

    def stop(self, *, remove: bool = True) -> None:
        """Stop the server (immediately: nothing in it is meant to last)."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        if remove and self._own_folder:
            shutil.rmtree(self.folder, ignore_errors=True)

    def restart(self) -> None:
        """Stop and start again on the same port (clients see their connections drop)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        self._start_server()

    def postmaster_pid(self) -> int:
        """The server's main process (its backends are its children), from its pid file."""
        return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])

    def create_database(self, name: str) -> str:
        """A new, empty database; returns its URL."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.database_url(name)

    def drop_database(self, name: str) -> None:
        with (
            contextlib.suppress(psycopg.OperationalError),
            psycopg.connect(self.url, autocommit=True) as conn,
        ):
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def __enter__(self) -> LocalPostgres:
        self.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
