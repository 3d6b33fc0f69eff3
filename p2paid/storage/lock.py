"""One running node or relay per data dir: an exclusive lock file.

Two nodes on one data dir would share one node key, so each would see the other as
itself and peers would drop one of them at random. The CLI and the library may
still open the store beside a running node (its writes are safe under SQLite's
lock); only the long-running services take this lock.

The lock is ``flock`` on ``p2paid.lock`` in the data dir, holding the owner's pid
and role for the message a second one gets. The kernel releases it when the
process ends, however it ends (``kill -9`` and power cuts leave no stale lock).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from types import TracebackType
from typing import Final, final

from p2paid.errors import DataDirBusyError
from p2paid.storage.files import file_error

__all__ = ["LOCK_FILENAME", "DataDirBusyError", "DataDirLock"]

LOCK_FILENAME: Final = "p2paid.lock"


@final
class DataDirLock:
    """Hold the data dir for one service (``with DataDirLock(dir, "node"): ...``).

    Raises (on entry):
        DataDirBusyError: another process holds it.
        FileError: the lock file cannot be created.
    """

    def __init__(self, data_dir: str | os.PathLike[str], role: str) -> None:
        self.path = Path(data_dir) / LOCK_FILENAME
        self.role = role
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise file_error(self.path, exc, "lock the data dir with") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read(fd)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise file_error(self.path, exc, "lock the data dir with") from exc
            pid, role = holder
            who = f"a p2paid {role or 'process'}" + (f" (pid {pid})" if pid else "")
            raise DataDirBusyError(
                f"{who} is already running on {self.path.parent}; stop it first, or give "
                "this one another --data-dir", pid) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {self.role}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = None

    def __enter__(self) -> DataDirLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def _read(fd: int) -> tuple[int | None, str]:
    """``(pid, role)`` the holder wrote (it may be writing it right now: best effort)."""
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").split()
    except OSError:
        return None, ""
    pid = int(text[0]) if text and text[0].isdigit() else None
    role = text[1] if len(text) > 1 and text[1] in ("node", "relay") else ""
    return pid, role
