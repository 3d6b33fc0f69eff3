"""The key file ``p2paid.key``: the wrapped data-dir key, written in place.

The file is two :data:`~p2paid.storage.atrest.RECORD_SIZE`-byte copies of one
record (:class:`~p2paid.storage.atrest.KeyRecord`). A new record is written over
the older copy, fsynced, then over the other one, fsynced: a crash tears at most
one copy, which its checksum rejects, and the other still unlocks. Writing in place
(never a new file renamed over the old one) means no earlier wrapping lingers in a
block of the file system that a file-level search can reach, and :func:`erase` can
destroy every copy by overwriting the one file (crypto-erase: without it the sealed
store cannot be read).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Final

from p2paid.errors import StorageError
from p2paid.storage.atrest import RECORD_SIZE, KeyRecord
from p2paid.storage.files import file_error

__all__ = ["KEY_FILENAME", "erase", "key_path", "read_record", "write_record"]

KEY_FILENAME: Final = "p2paid.key"
_FILE_SIZE: Final = 2 * RECORD_SIZE


def key_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / KEY_FILENAME


def _read_raw(path: Path) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise file_error(path, exc, "read the key file") from exc
    try:
        return os.pread(fd, _FILE_SIZE + 1, 0)
    except OSError as exc:
        raise file_error(path, exc, "read the key file") from exc
    finally:
        os.close(fd)


def read_record(data_dir: str | os.PathLike[str]) -> KeyRecord | None:
    """The newest intact record of the key file; None if there is no key file.

    Raises:
        StorageError: the file is there but holds no intact record (damaged, or
            overwritten by a wipe).
        FileError: it cannot be read.
    """
    path = key_path(data_dir)
    raw = _read_raw(path)
    if raw is None:
        return None
    records = [KeyRecord.decode(raw[i:i + RECORD_SIZE]) for i in (0, RECORD_SIZE)
               ] if len(raw) == _FILE_SIZE else []
    intact = [r for r in records if r is not None]
    if not intact:
        raise StorageError(f"the key file {path} is damaged or was wiped: the data dir's "
                           "key is gone and its data cannot be read")
    return max(intact, key=lambda r: r.generation)


def write_record(data_dir: str | os.PathLike[str], record: KeyRecord) -> None:
    """Make ``record`` the key file's, durably (see the module docstring).

    Raises:
        FileError: it cannot be written (the old record is then still intact).
    """
    path = key_path(data_dir)
    new = record.encode()
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise file_error(path, exc, "write the key file") from exc
    try:
        raw = os.pread(fd, _FILE_SIZE, 0)
        if len(raw) != _FILE_SIZE:
            # a new key file (or a stub): nothing to keep
            os.ftruncate(fd, 0)
            os.pwrite(fd, new + new, 0)
            os.fsync(fd)
        else:
            first, second = _decoded(raw[:RECORD_SIZE]), _decoded(raw[RECORD_SIZE:])
            # over the torn or older copy first, the newest intact one last
            older_first = first is None or (second is not None
                                            and first.generation <= second.generation)
            order = (0, RECORD_SIZE) if older_first else (RECORD_SIZE, 0)
            for offset in order:
                os.pwrite(fd, new, offset)
                os.fsync(fd)
    except OSError as exc:
        raise file_error(path, exc, "write the key file") from exc
    finally:
        os.close(fd)
    _sync_dir(path.parent)


def _decoded(raw: bytes) -> KeyRecord | None:
    """A copy to keep, or None for one that may be overwritten (torn, unknown)."""
    try:
        return KeyRecord.decode(raw)
    except StorageError:
        return None


def erase(data_dir: str | os.PathLike[str]) -> bool:
    """Overwrite the key file with random bytes, durably, then delete it. Returns
    whether there was one. After this returns, the sealed store cannot be read.

    Raises:
        FileError: it cannot be overwritten.
    """
    path = key_path(data_dir)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise file_error(path, exc, "erase the key file") from exc
    try:
        size = max(os.fstat(fd).st_size, _FILE_SIZE)
        os.pwrite(fd, os.urandom(size), 0)
        os.fsync(fd)
    except OSError as exc:
        raise file_error(path, exc, "erase the key file") from exc
    finally:
        os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    _sync_dir(path.parent)
    return True


def _sync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
