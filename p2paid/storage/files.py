"""The user's files and folders: OS errors turned into one clear line.

p2paid's rule: every error it raises derives from
:class:`~p2paid.errors.P2paidError`. An ``OSError`` on a path the user gave (a data
dir, a bundle, an export target) becomes a :class:`~p2paid.errors.FileError` that
names the path and says what to do; the ``OSError`` stays as its ``__cause__`` (and
its ``errno`` on the error), so nothing is lost for a caller that wants the detail.
"""

from __future__ import annotations

import errno
import os
import pwd
import stat
from pathlib import Path

from p2paid.errors import FileError

__all__ = ["describe", "existing_kind", "file_error", "private_dir", "writable_dir"]


def _owner(path: Path) -> str | None:
    """The name of ``path``'s owner if it is not the current user."""
    try:
        uid = path.stat().st_uid
    except OSError:
        return None
    if uid == os.geteuid():
        return None
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _nearest_existing(path: Path) -> Path:
    """The deepest of ``path`` and its parents that this process can see."""
    for candidate in (path, *path.parents):
        if os.path.exists(candidate):  # (False where a parent cannot be searched)
            return candidate
    return path


def describe(path: Path, exc: OSError, doing: str) -> str:
    """One line: what could not be done with ``path``, why, and what to do."""
    code = exc.errno
    if code == errno.ENOENT:
        return f"cannot {doing} {path}: it does not exist"
    if code in (errno.EACCES, errno.EPERM):
        where = _nearest_existing(path)
        owner = _owner(where)
        if owner is not None:
            return (f"cannot {doing} {path}: {where} belongs to {owner}; run p2paid as "
                    f"{owner}, or use a path of your own")
        return f"cannot {doing} {path}: permission denied (see 'ls -ld {where}')"
    if code == errno.EROFS:
        return (f"cannot {doing} {path}: it is on a read-only file system "
                "(copy it somewhere writable)")
    if code == errno.ENOSPC:
        return f"cannot {doing} {path}: the disk is full"
    if code == errno.EISDIR:
        return f"cannot {doing} {path}: it is a folder, not a file"
    if code == errno.EEXIST and not os.path.isdir(path):
        return f"cannot {doing} {path}: it is a file, not a folder"
    if code == errno.ENOTDIR:
        return f"cannot {doing} {path}: part of that path is a file, not a folder"
    return f"cannot {doing} {path}: {exc.strerror or exc}"


def file_error(path: str | os.PathLike[str], exc: OSError, doing: str) -> FileError:
    """A :class:`FileError` for ``exc``; raise it ``from exc``."""
    where = Path(path)
    return FileError(describe(where, exc, doing), where, exc.errno)


def existing_kind(path: Path, doing: str) -> str | None:
    """``"folder"``, ``"file"`` (anything else that is not a folder), or None if
    ``path`` does not exist.

    Raises:
        FileError: it cannot be told (a parent is not ours to look into, ...).
    """
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise file_error(path, exc, doing) from exc
    return "folder" if stat.S_ISDIR(mode) else "file"


def private_dir(path: Path) -> None:
    """Create ``path`` (mode 0700) or make an existing one private to its owner.

    Raises:
        FileError: it cannot be created, or is not ours to change.
    """
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            os.chmod(path, 0o700)
    except OSError as exc:
        raise file_error(path, exc, "use the data dir") from exc


def writable_dir(path: Path, doing: str) -> None:
    """Refuse a folder this process cannot write (a store must write even to read).

    Raises:
        FileError: ``path`` is read-only to us.
    """
    if not os.access(path, os.W_OK | os.X_OK):
        code = errno.EROFS if _read_only_mount(path) else errno.EACCES
        raise file_error(path, OSError(code, os.strerror(code)), doing)


def _read_only_mount(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False
