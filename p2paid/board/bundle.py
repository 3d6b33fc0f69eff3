"""Bundle files: envelopes carried on a USB stick or sent by e-mail.

Layout (``protocol/SPEC.md`` "Bundles"), all integers big-endian::

    magic    8 bytes   b"P2PAIDBN"
    version  1 byte    0x01, or 0x02 when records may be checkpoints (SPEC 8a)
    flags    1 byte    0x00 (reserved; a reader refuses other values)
    records  repeated: length(4) record   (an envelope, 1 <= length <= MAX_ENVELOPE_BYTES;
                                           in version 2 also a checkpoint, up to
                                           MAX_CHECKPOINT_BYTES)
    end      length(4) = 0
    count    8 bytes   number of records
    sha256   32 bytes  over every byte before it

Envelopes name their board, so one bundle can carry several boards, including
boards the carrier cannot read. A reader checks the whole file (structure,
count, checksum) before it yields a single record, so a damaged bundle changes
nothing.
"""

from __future__ import annotations

import errno
import hashlib
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Final

from p2paid.core.checkpoint import MAX_CHECKPOINT_BYTES
from p2paid.core.envelope import MAX_ENVELOPE_BYTES
from p2paid.errors import BundleError, LocalProtocolError
from p2paid.storage.files import existing_kind, file_error

__all__ = ["BUNDLE_CHECKPOINTS_VERSION", "BUNDLE_MAGIC", "BUNDLE_VERSION", "check_bundle",
           "read_bundle", "write_bundle"]

BUNDLE_MAGIC: Final = b"P2PAIDBN"
BUNDLE_VERSION: Final = 1
#: The version of a bundle whose records may be checkpoints.
BUNDLE_CHECKPOINTS_VERSION: Final = 2
_LEN = struct.Struct(">I")
_COUNT = struct.Struct(">Q")
_HEADER_BYTES: Final = 10
_MAX_RECORD: Final = {BUNDLE_VERSION: MAX_ENVELOPE_BYTES,
                      BUNDLE_CHECKPOINTS_VERSION: MAX_CHECKPOINT_BYTES}
#: :func:`write_bundle` reports progress every this many records.
PROGRESS_EVERY: Final = 1000


def write_bundle(path: str | os.PathLike[str], envelopes: Iterable[bytes],
                 progress: Callable[[int], None] | None = None, *,
                 checkpoints: bool = False) -> int:
    """Write envelopes to ``path`` atomically (temp file, fsync, rename); with
    ``checkpoints``, a version-2 bundle whose records may also be checkpoints.

    ``progress`` is called with the number of records written so far, every
    :data:`PROGRESS_EVERY` records.

    Returns:
        The number of envelopes written.

    Raises:
        LocalProtocolError: a record is empty or larger than any envelope.
        FileError: the file cannot be written (its folder is missing, not ours,
            read-only or full); nothing is left behind.
    """
    target = Path(path)
    parent = existing_kind(target.parent, "write a bundle into")
    if parent != "folder":
        missing = (FileNotFoundError(errno.ENOENT, "no such folder", str(target.parent))
                   if parent is None else
                   NotADirectoryError(errno.ENOTDIR, "not a folder", str(target.parent)))
        raise file_error(target.parent, missing, "write a bundle into") from missing
    if existing_kind(target, "write the bundle") == "folder":
        folder = IsADirectoryError(errno.EISDIR, "is a folder", str(target))
        raise file_error(target, folder, "write the bundle") from folder
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    digest = hashlib.sha256()
    count = 0
    try:
        with open(tmp, "wb") as f:

            def put(data: bytes) -> None:
                digest.update(data)
                f.write(data)

            version = BUNDLE_CHECKPOINTS_VERSION if checkpoints else BUNDLE_VERSION
            put(BUNDLE_MAGIC + bytes([version, 0]))
            for raw in envelopes:
                if not 0 < len(raw) <= _MAX_RECORD[version]:
                    raise LocalProtocolError(
                        f"a bundle record of {len(raw)} bytes is not an envelope"
                    )
                put(_LEN.pack(len(raw)))
                put(raw)
                count += 1
                if progress is not None and count % PROGRESS_EVERY == 0:
                    progress(count)
            put(_LEN.pack(0))
            put(_COUNT.pack(count))
            f.write(digest.digest())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise file_error(target, exc, "write the bundle") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return count


def _records(f: BinaryIO, digest: hashlib._Hash) -> Iterator[bytes]:
    def take(n: int) -> bytes:
        data = f.read(n)
        if len(data) != n:
            raise BundleError("the bundle is truncated")
        digest.update(data)
        return data

    header = take(_HEADER_BYTES)
    if header[:8] != BUNDLE_MAGIC:
        raise BundleError("not a p2paid bundle (bad magic)")
    if header[8] < BUNDLE_VERSION:
        raise BundleError(f"bundle version {header[8]} is not a valid p2paid bundle version")
    if header[8] not in _MAX_RECORD:
        raise BundleError(
            f"bundle version {header[8]} is newer than this p2paid reads "
            f"({BUNDLE_CHECKPOINTS_VERSION}); upgrade p2paid"
        )
    max_record = _MAX_RECORD[header[8]]
    if header[9] != 0:
        raise BundleError("the bundle uses flags this p2paid does not know")
    count = 0
    while True:
        (length,) = _LEN.unpack(take(4))
        if length == 0:
            break
        if length > max_record:
            raise BundleError(f"bundle record {count + 1} is larger than any record")
        yield take(length)
        count += 1
    (declared,) = _COUNT.unpack(take(8))
    if declared != count:
        raise BundleError("the bundle's record count does not match")
    expected = digest.digest()
    if f.read(32) != expected:
        raise BundleError("the bundle's checksum does not match: it is damaged")
    if f.read(1):
        raise BundleError("the bundle has trailing bytes")


def check_bundle(path: str | os.PathLike[str]) -> int:
    """Check a bundle file completely; the number of records in it.

    Raises:
        BundleError: the file is damaged, truncated or of an unsupported version.
        FileError: the file cannot be read (missing, not ours, a folder).
    """
    count = 0
    try:
        with open(path, "rb") as f:
            for _ in _records(f, hashlib.sha256()):
                count += 1
    except OSError as exc:
        raise file_error(path, exc, "read the bundle") from exc
    return count


def read_bundle(path: str | os.PathLike[str], *, checked: bool = False) -> Iterator[bytes]:
    """Check a bundle file completely, then yield its envelopes (``checked``: the
    caller ran :func:`check_bundle` on it already).

    Raises:
        BundleError: before anything is yielded, if the file is damaged, truncated
            or of an unsupported version.
        FileError: the file cannot be read (missing, not ours, a folder).
    """
    if not checked:
        check_bundle(path)
    return _yield_checked(path)


def _yield_checked(path: str | os.PathLike[str]) -> Iterator[bytes]:
    try:
        with open(path, "rb") as f:
            yield from _records(f, hashlib.sha256())
    except OSError as exc:
        raise file_error(path, exc, "read the bundle") from exc
