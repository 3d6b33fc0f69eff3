"""Parse the header of an Automerge change chunk, without decoding its ops.

p2paid decides whether a remote change may be applied from its header alone
(DESIGN.md, "Ownership"): the actor and seq must equal the envelope's, and the
actor table must list no other actor. The layout, from the Automerge binary
format: ``magic(4) checksum(4) type(1) uLEB length, body``; a type-2 chunk's body
is raw DEFLATE of the type-1 body. The type-1 body starts with::

    deps:          uLEB count, then count x 32-byte change hashes
    actor:         uLEB length, bytes
    seq:           uLEB
    start_op:      uLEB
    time:          sLEB (ms since the epoch)
    message:       uLEB length, UTF-8 bytes
    other actors:  uLEB count, then count x (uLEB length, bytes)
    columns:       uLEB count, then count x (uLEB spec, uLEB length), then the data

The op count is the number of values in the action column (spec 0x42).

The change hash is SHA-256 over ``type(1)=1 || uLEB(len(body)) || body``.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from typing import final

from .errors import ChangeMismatchError

__all__ = ["MAX_CHANGE_BYTES", "ChangeHeader", "parse_change"]

MAGIC = bytes.fromhex("856f4a83")
CHUNK_CHANGE = 1
CHUNK_COMPRESSED_CHANGE = 2
#: Largest change body accepted after decompression; a bigger one is refused, not expanded.
MAX_CHANGE_BYTES = 256 * 1024
_MAX_DEPS = 1024
_MAX_ACTOR_BYTES = 64


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def uleb(self) -> int:
        value, self.pos = _leb(self.data, self.pos)
        return value

    def sleb(self) -> int:
        value, self.pos = _sleb(self.data, self.pos)
        return value

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if n < 0 or end > len(self.data):
            raise ChangeMismatchError("change header: truncated")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk


@final
@dataclass(frozen=True, slots=True)
class ChangeHeader:
    """The fields of a change that p2paid checks before applying it."""

    hash: bytes
    deps: tuple[bytes, ...]
    actor: bytes
    seq: int
    start_op: int
    time: int
    other_actors: tuple[bytes, ...]
    op_count: int

    @property
    def max_op(self) -> int:
        """Counter of the change's last op (``start_op - 1`` if it has none)."""
        return self.start_op + self.op_count - 1


def _inflate(compressed: bytes) -> bytes:
    inflater = zlib.decompressobj(-15)
    try:
        body = inflater.decompress(compressed, MAX_CHANGE_BYTES + 1)
    except zlib.error as exc:
        raise ChangeMismatchError("compressed change does not inflate") from exc
    if len(body) > MAX_CHANGE_BYTES or inflater.unconsumed_tail:
        raise ChangeMismatchError(f"change inflates beyond {MAX_CHANGE_BYTES} bytes")
    if not inflater.eof or inflater.unused_data:
        raise ChangeMismatchError("compressed change is truncated or has trailing bytes")
    return body


def uleb_bytes(n: int) -> bytes:
    """``n`` as unsigned LEB128."""
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _leb(data: bytes, pos: int) -> tuple[int, int]:
    """uLEB128 at ``pos``: ``(value, next pos)``."""
    result = shift = 0
    end = len(data)
    while True:
        if pos >= end or shift > 63:
            raise ChangeMismatchError("change header: bad LEB128 number")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def parse_change(chunk: bytes) -> ChangeHeader:
    """Parse one whole change chunk (type 1 or 2) and check its checksum.

    This runs once per received change, so it reads with plain index arithmetic.

    Raises:
        ChangeMismatchError: not exactly one well-formed change chunk.
    """
    if chunk[:4] != MAGIC:
        raise ChangeMismatchError("not an Automerge chunk (bad magic)")
    if len(chunk) < 10:
        raise ChangeMismatchError("change header: truncated")
    checksum = chunk[4:8]
    chunk_type = chunk[8]
    length, pos = _leb(chunk, 9)
    if pos + length != len(chunk):
        raise ChangeMismatchError("change header: truncated" if pos + length > len(chunk)
                                  else "trailing bytes after the change chunk")
    raw_body = chunk[pos:]
    if chunk_type == CHUNK_COMPRESSED_CHANGE:
        body = _inflate(raw_body)
    elif chunk_type == CHUNK_CHANGE:
        if length > MAX_CHANGE_BYTES:
            raise ChangeMismatchError(f"change larger than {MAX_CHANGE_BYTES} bytes")
        body = raw_body
    else:
        raise ChangeMismatchError(f"chunk type {chunk_type} is not a change")
    digest = hashlib.sha256(b"\x01" + uleb_bytes(len(body)) + body).digest()
    if digest[:4] != checksum:
        raise ChangeMismatchError("change checksum does not match")
    end = len(body)
    n_deps, pos = _leb(body, 0)
    if n_deps > _MAX_DEPS or pos + 32 * n_deps > end:
        raise ChangeMismatchError("change header: bad dependencies")
    deps = tuple(body[pos + 32 * i : pos + 32 * i + 32] for i in range(n_deps))
    pos += 32 * n_deps
    actor_len, pos = _leb(body, pos)
    if actor_len > _MAX_ACTOR_BYTES or pos + actor_len > end:
        raise ChangeMismatchError("change header: bad actor id")
    actor = body[pos : pos + actor_len]
    seq, pos = _leb(body, pos + actor_len)
    start_op, pos = _leb(body, pos)
    time, pos = _sleb(body, pos)
    message_len, pos = _leb(body, pos)
    pos += message_len
    n_other, pos = _leb(body, pos)
    if n_other > _MAX_DEPS:
        raise ChangeMismatchError("change lists too many actors")
    others = []
    for _ in range(n_other):
        size, pos = _leb(body, pos)
        if size > _MAX_ACTOR_BYTES or pos + size > end:
            raise ChangeMismatchError("change header: bad actor id")
        others.append(body[pos : pos + size])
        pos += size
    return ChangeHeader(digest, deps, actor, seq, start_op, time, tuple(others),
                        _op_count(body, pos))


def _sleb(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    end = len(data)
    while True:
        if pos >= end or shift > 63:
            raise ChangeMismatchError("change header: bad LEB128 number")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            if byte & 0x40:
                result -= 1 << shift
            return result, pos


_ACTION_COLUMN = 0x42
_DEFLATE_BIT = 0x08
_MAX_OPS = 100_000
_MAX_COLUMNS = 64


def _op_count(body: bytes, pos: int) -> int:
    """Ops in the change: every op has an action, so count the action column's values."""
    n_columns, pos = _leb(body, pos)
    if n_columns > _MAX_COLUMNS:
        raise ChangeMismatchError("change has too many columns")
    offset = 0
    found: tuple[int, int, int] | None = None
    try:
        for _ in range(n_columns):
            # Specs and lengths are almost always one byte: skip the call for those.
            spec = body[pos]
            if spec < 0x80:
                pos += 1
            else:
                spec, pos = _leb(body, pos)
            length = body[pos]
            if length < 0x80:
                pos += 1
            else:
                length, pos = _leb(body, pos)
            if found is None and spec & ~_DEFLATE_BIT == _ACTION_COLUMN:
                found = (spec, offset, length)
            offset += length
    except IndexError:
        raise ChangeMismatchError("change header: truncated") from None
    if pos + offset > len(body):
        raise ChangeMismatchError("change header: truncated")
    if found is None:
        return 0
    spec, start, length = found
    data = body[pos + start : pos + start + length]
    if spec & _DEFLATE_BIT:
        inflater = zlib.decompressobj(-15)
        try:
            data = inflater.decompress(data, MAX_CHANGE_BYTES)
        except zlib.error as exc:
            raise ChangeMismatchError("action column does not inflate") from exc
    return count_rle_values(data)


def count_rle_values(column: bytes) -> int:
    """Number of values (nulls included) in a run-length encoded uLEB column."""
    r = _Reader(column)
    count = 0
    while r.pos < len(column):
        n = r.sleb()
        if n > 0:
            r.uleb()
            count += n
        elif n < 0:
            for _ in range(-n):
                r.uleb()
            count -= n
        else:
            count += r.uleb()
        if count > _MAX_OPS:
            raise ChangeMismatchError("change has too many ops")
    return count
