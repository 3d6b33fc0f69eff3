"""A bounded look at an Automerge *document* chunk before Automerge loads it.

A checkpoint's content is Automerge's saved form of one author's changes (chunk type
0, ``protocol/SPEC.md`` 8a). Before handing crafted bytes to Automerge, a member checks,
without building anything large:

* exactly one chunk, with a valid checksum;
* its actor table is exactly ``[author]``, so no op can name another member's object
  (the ownership rule of section 5, read once for the whole run);
* its heads are exactly the expected ones (the head envelope's dependencies);
* every DEFLATE-compressed column inflates to at most a bounded size in all, so a
  small checkpoint cannot make the loader expand gigabytes.

It returns the columns, inflated, for :mod:`p2paid.automerge.feedproof` to read.

Layout (Automerge's binary format, document chunk)::

    magic(4) checksum(4) type(1)=0 uLEB(len) body
    body = actors: uLEB n, n x (uLEB len, bytes)
           heads:  uLEB n, n x 32 bytes
           change columns: uLEB n, n x (uLEB spec, uLEB len)
           op columns:     uLEB n, n x (uLEB spec, uLEB len)
           change column data, op column data, [head indexes: n x uLEB]

A column's spec has bit 3 set when its data is raw DEFLATE.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Final, NamedTuple

from p2paid.automerge.chunk import MAGIC, _uleb, inflate_capped, uleb_bytes
from p2paid.errors import ChangeMismatchError

__all__ = ["CHUNK_DOCUMENT", "DocumentChunk", "encode_document", "inspect_document"]

CHUNK_DOCUMENT: Final = 0
_DEFLATE_BIT: Final = 0x08
_MAX_ACTOR_BYTES: Final = 64
_MAX_COLUMNS: Final = 64
_MAX_HEADS: Final = 1024


class DocumentChunk(NamedTuple):
    """What :func:`inspect_document` read: the actor table, heads and sizes."""

    actors: tuple[bytes, ...]
    heads: tuple[bytes, ...]
    #: bytes of every column once inflated
    column_bytes: int
    #: ``(spec, data)`` of each change column and each op column, inflated, in order
    change_columns: tuple[tuple[int, bytes], ...] = ()
    op_columns: tuple[tuple[int, bytes], ...] = ()


def _read_columns(body: bytes, pos: int) -> tuple[list[tuple[int, int]], int]:
    count, pos = _uleb(body, pos)
    if count > _MAX_COLUMNS:
        raise ChangeMismatchError("document chunk has too many columns")
    columns = []
    for _ in range(count):
        spec, pos = _uleb(body, pos)
        length, pos = _uleb(body, pos)
        columns.append((spec, length))
    return columns, pos


def inspect_document(chunk: bytes, max_inflated: int) -> DocumentChunk:
    """Check one document chunk's framing, checksum, actors, heads and column sizes.

    Args:
        max_inflated: the most bytes all columns may take once inflated.

    Raises:
        ChangeMismatchError: anything but one well-framed document chunk within bounds.
    """
    if chunk[:4] != MAGIC or len(chunk) < 10:
        raise ChangeMismatchError("not an Automerge document (bad magic)")
    if chunk[8] != CHUNK_DOCUMENT:
        raise ChangeMismatchError(f"chunk type {chunk[8]} is not a document")
    length, pos = _uleb(chunk, 9)
    if pos + length != len(chunk):
        raise ChangeMismatchError("document chunk is truncated or has trailing bytes")
    body = chunk[pos:]
    digest = hashlib.sha256(b"\x00" + uleb_bytes(length) + body).digest()
    if digest[:4] != chunk[4:8]:
        raise ChangeMismatchError("document checksum does not match")
    n_actors, pos = _uleb(body, 0)
    if n_actors > _MAX_HEADS:
        raise ChangeMismatchError("document lists too many actors")
    actors = []
    for _ in range(n_actors):
        size, pos = _uleb(body, pos)
        if size > _MAX_ACTOR_BYTES or pos + size > len(body):
            raise ChangeMismatchError("document has a bad actor id")
        actors.append(body[pos:pos + size])
        pos += size
    n_heads, pos = _uleb(body, pos)
    if n_heads > _MAX_HEADS or pos + 32 * n_heads > len(body):
        raise ChangeMismatchError("document has bad heads")
    heads = tuple(body[pos + 32 * i:pos + 32 * i + 32] for i in range(n_heads))
    pos += 32 * n_heads
    change_columns, pos = _read_columns(body, pos)
    op_columns, pos = _read_columns(body, pos)
    total = 0
    columns: list[tuple[int, bytes]] = []
    for spec, size in change_columns + op_columns:
        if pos + size > len(body):
            raise ChangeMismatchError("document chunk is truncated (a column)")
        data = body[pos:pos + size]
        pos += size
        if spec & _DEFLATE_BIT:
            data = inflate_capped(data, max_inflated - total, "a column of the document chunk")
        total += len(data)
        if total > max_inflated:
            raise ChangeMismatchError("the document chunk's columns exceed the cap")
        columns.append((spec, data))
    split = len(change_columns)
    return DocumentChunk(tuple(actors), heads, total, tuple(columns[:split]),
                         tuple(columns[split:]))


def encode_document(actors: Sequence[bytes], heads: Sequence[bytes],
                    change_columns: Sequence[tuple[int, bytes]],
                    op_columns: Sequence[tuple[int, bytes]]) -> bytes:
    """A document chunk of uncompressed columns (the DEFLATE bit of each spec cleared),
    with a valid checksum: the inverse of :func:`inspect_document`, for tests and vectors
    that need a document Automerge would not write."""
    body = bytearray(uleb_bytes(len(actors)))
    for actor in actors:
        body += uleb_bytes(len(actor)) + actor
    body += uleb_bytes(len(heads)) + b"".join(heads)
    for columns in (change_columns, op_columns):
        body += uleb_bytes(len(columns))
        for spec, data in columns:
            body += uleb_bytes(spec & ~_DEFLATE_BIT) + uleb_bytes(len(data))
    for columns in (change_columns, op_columns):
        body += b"".join(data for _, data in columns)
    body += uleb_bytes(0) * len(heads)  # (head indexes)
    checksum = hashlib.sha256(b"\x00" + uleb_bytes(len(body)) + bytes(body)).digest()[:4]
    return MAGIC + checksum + bytes([CHUNK_DOCUMENT]) + uleb_bytes(len(body)) + bytes(body)
