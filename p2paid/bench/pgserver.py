"""A throwaway PostgreSQL server for the tests and benchmarks: ``initdb`` and ``pg_ctl`` in a
temporary directory, as an unprivileged user when the tests run as root (CI does), listening on
127.0.0.1 at a free port and on a Unix socket in that directory.

:func:`find_pg_bin` looks in ``/usr/lib/postgresql/*/bin`` (Debian) and on ``PATH``;
:class:`PgCluster` starts, restarts and stops the server and makes one fresh database per
test or benchmark (:meth:`PgCluster.new_database`).
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

__all__ = ["PgCluster", "PgUnavailable", "find_pg_bin"]

#: Tried in order as the unprivileged owner of the cluster when running as root.
_USERS = ("postgres", "nobody")


class PgUnavailable(Exception):
    """PostgreSQL binaries are missing or the server cannot start (the reason)."""


def find_pg_bin() -> Path | None:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``, newest version first."""
    def version(path: str) -> tuple[int, ...]:
        part = Path(path).parent.name
        return tuple(int(x) for x in part.split(".") if x.isdigit())

    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if (Path(candidate) / "pg_ctl").exists() and (Path(candidate) / "initdb").exists():
            return Path(candidate)
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(os.path.realpath(found)).parent
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _owner() -> str | None:
    """Who runs the server: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in _USERS:
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise PgUnavailable("running as root and no unprivileged user (postgres, nobody)")


class PgCluster:
    """One PostgreSQL server for a test session or a benchmark run.

    Raises:
        PgUnavailable: from :meth:`start` when it cannot run here.
    """

    def __init__(self) -> None:
        bin_dir = find_pg_bin()
        if bin_dir is None:
            raise PgUnavailable("no PostgreSQL server binaries (initdb, pg_ctl); "
                                "install Debian's postgresql package")
        self.bin = bin_dir
        self.owner = _owner()
        self.root = Path(tempfile.mkdtemp(prefix="p2paid-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.port = _free_port()
        self.user = "p2paid"
        self._names = itertools.count(1)

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin / argv[0]), *argv[1:]]
        if self.owner is not None:
            cmd = ["runuser", "-u", self.owner, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=120,
                              cwd=self.root)

    def start(self) -> None:
        """initdb (trust authentication, superuser ``p2paid``), then start the server."""
        self.socket_dir.mkdir()
        if self.owner is not None:
            os.chmod(self.root, 0o755)
            entry = pwd.getpwnam(self.owner)
            for path in (self.root, self.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        try:
            self._run("initdb", "-D", str(self.data), "-U", self.user, "--auth=trust",
                      "-E", "UTF8", "--locale=C")
        except (subprocess.CalledProcessError, OSError) as exc:
            raise PgUnavailable(f"initdb failed: {getattr(exc, 'stderr', exc)}") from exc
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.socket_dir}'\n"
                "max_connections = 300\nsynchronous_commit = on\nfsync = on\n"
                "shared_buffers = 64MB\n")
        self._pg_ctl_start()

    def _pg_ctl_start(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"),
                      "-w", "-t", "60", "start")
        except (subprocess.CalledProcessError, OSError) as exc:
            log = (self.root / "server.log")
            raise PgUnavailable(f"the server did not start: "
                                f"{log.read_text() if log.exists() else exc}") from exc

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A new, empty database; returns its URL."""
        import psycopg

        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def restart(self, mode: str = "fast") -> None:
        """Stop (``fast``: disconnect everyone; ``immediate``: as a crash) and start."""
        self.stop(mode)
        self._pg_ctl_start()

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
