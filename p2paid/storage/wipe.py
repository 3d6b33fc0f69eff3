"""Panic wipe of a data dir: crypto-erase first, then stop the node, then delete.

1. The key file is overwritten in place and fsynced (:func:`keystore.erase`): from
   then on a protected store cannot be read by anyone, whatever happens next (a
   SIGKILL, a power cut, a disk pulled out).
2. A node running on the data dir (the holder of its lock file) is sent SIGTERM,
   then SIGKILL if it has not stopped after ``timeout`` seconds.
3. Every file of p2paid's in the data dir (the stores with their WAL and journal,
   the lock file) is overwritten with zeros, fsynced and deleted, and the data dir
   removed if nothing else is in it. For a data dir without a passphrase this step is
   all there is, and is only as good as overwriting a file in place is on that disk.

What overwriting cannot reach (flash translation layers, copy-on-write file systems,
backups, swap) is listed in the README's security model.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, final

from p2paid.storage import keystore
from p2paid.storage.files import file_error
from p2paid.storage.lock import LOCK_FILENAME

__all__ = ["WipeReport", "data_dir_files", "wipe"]

_OURS: Final = ("p2paid.", "web.sqlite3")
_CHUNK: Final = 1 << 20


@final
@dataclass(frozen=True, slots=True)
class WipeReport:
    key_erased: bool  #: there was a key file, and it is gone (the crypto-erase)
    stopped_pid: int | None  #: the node that was stopped, if one ran
    files: int  #: files overwritten and deleted


def data_dir_files(data_dir: Path) -> list[Path]:
    """p2paid's files in ``data_dir`` (regular files only; symlinks are not followed)."""
    try:
        entries = list(os.scandir(data_dir))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise file_error(data_dir, exc, "wipe") from exc
    return sorted(Path(e.path) for e in entries
                  if e.name.startswith(_OURS) and e.is_file(follow_symlinks=False))


def wipe(data_dir: str | os.PathLike[str], *, timeout: float = 10.0,
         on_erased: Callable[[], None] | None = None, stop_node: bool = True,
         keep_dir: bool = False) -> WipeReport:
    """Wipe ``data_dir`` (see the module docstring). ``on_erased`` is called once the
    key is gone, before anything slower; ``keep_dir`` keeps the (empty) folder.

    Raises:
        FileError: a file cannot be overwritten or deleted (the key is gone already,
            if there was one).
    """
    path = Path(data_dir)
    erased = keystore.erase(path)
    if on_erased is not None:
        on_erased()
    stopped = _stop_holder(path, timeout) if stop_node else None
    files = data_dir_files(path)
    for f in files:
        _overwrite(f)
    for f in files:
        with contextlib.suppress(FileNotFoundError):
            f.unlink()
    if not keep_dir:
        with contextlib.suppress(OSError):
            path.rmdir()  # (only if nothing else is in it)
    return WipeReport(erased, stopped, len(files))


def _overwrite(path: Path) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise file_error(path, exc, "wipe") from exc
    try:
        size = os.fstat(fd).st_size
        zeros = bytes(min(size, _CHUNK))
        done = 0
        while done < size:
            done += os.pwrite(fd, zeros[:size - done], done)
        os.fsync(fd)
    except OSError as exc:
        raise file_error(path, exc, "wipe") from exc
    finally:
        os.close(fd)


def _lock_free(path: Path) -> bool:
    """Whether no process holds the data dir's lock (see :mod:`p2paid.storage.lock`)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return True
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        return exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN)
    finally:
        os.close(fd)  # (releases the lock if we took it)
    return True


def _holder_pid(path: Path) -> int | None:
    try:
        text = path.read_text("ascii", "replace").split()
    except OSError:
        return None
    return int(text[0]) if text and text[0].isdigit() else None


def _stop_holder(data_dir: Path, timeout: float) -> int | None:
    """Stop the node or relay holding the data dir's lock; its pid (None: none ran)."""
    lock = data_dir / LOCK_FILENAME
    if _lock_free(lock):
        return None
    pid = _holder_pid(lock)
    if pid is None or pid == os.getpid():
        return None
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if _lock_free(lock):
                return pid
            time.sleep(0.02)
    return pid
