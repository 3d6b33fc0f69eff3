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
        data = self.data
        pos = self.pos
        if pos < len(data) and data[pos] < 0x80:  # fast path: one-byte number
            self.pos = pos + 1
            return data[pos]
        result = shift = 0
        while True:
            if self.pos >= len(data) or shift > 63:
                raise ChangeMismatchError("change header: bad LEB128 number")
            byte = data[self.pos]
            self.pos += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
            shift += 7

    def sleb(self) -> int:
        result = shift = 0
        data = self.data
        while True:
            if self.pos >= len(data) or shift > 63:
                raise ChangeMismatchError("change header: bad LEB128 number")
            byte = data[self.pos]
            self.pos += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                if byte & 0x40:
                    result -= 1 << shift
                return result

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


def _uleb_bytes(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def parse_change(chunk: bytes) -> ChangeHeader:
    """Parse one whole change chunk (type 1 or 2) and check its checksum.

    Raises:
        ChangeMismatchError: not exactly one well-formed change chunk.
    """
    outer = _Reader(chunk)
    if outer.take(4) != MAGIC:
        raise ChangeMismatchError("not an Automerge chunk (bad magic)")
    checksum = outer.take(4)
    chunk_type = outer.take(1)[0]
    length = outer.uleb()
    raw_body = outer.take(length)
    if outer.pos != len(chunk):
        raise ChangeMismatchError("trailing bytes after the change chunk")
    if chunk_type == CHUNK_COMPRESSED_CHANGE:
        body = _inflate(raw_body)
    elif chunk_type == CHUNK_CHANGE:
        if length > MAX_CHANGE_BYTES:
            raise ChangeMismatchError(f"change larger than {MAX_CHANGE_BYTES} bytes")
        body = raw_body
    else:
        raise ChangeMismatchError(f"chunk type {chunk_type} is not a change")
    digest = hashlib.sha256(bytes([CHUNK_CHANGE]) + _uleb_bytes(len(body)) + body).digest()
    if digest[:4] != checksum:
        raise ChangeMismatchError("change checksum does not match")
    r = _Reader(body)
    n_deps = r.uleb()
    if n_deps > _MAX_DEPS:
        raise ChangeMismatchError("change has too many dependencies")
    deps = tuple(r.take(32) for _ in range(n_deps))
    actor_len = r.uleb()
    if actor_len > _MAX_ACTOR_BYTES:
        raise ChangeMismatchError("change actor id too long")
    actor = r.take(actor_len)
    seq = r.uleb()
    start_op = r.uleb()
    time = r.sleb()
    r.take(r.uleb())  # message
    n_other = r.uleb()
    if n_other > _MAX_DEPS:
        raise ChangeMismatchError("change lists too many actors")
    others = []
    for _ in range(n_other):
        size = r.uleb()
        if size > _MAX_ACTOR_BYTES:
            raise ChangeMismatchError("change actor id too long")
        others.append(r.take(size))
    return ChangeHeader(digest, deps, actor, seq, start_op, time, tuple(others), _op_count(r))


_ACTION_COLUMN = 0x42
_DEFLATE_BIT = 0x08
_MAX_OPS = 100_000
_MAX_COLUMNS = 64


def _op_count(r: _Reader) -> int:
    """Ops in the change: every op has an action, so count the action column's values."""
    n_columns = r.uleb()
    if n_columns > _MAX_COLUMNS:
        raise ChangeMismatchError("change has too many columns")
    specs = [(r.uleb(), r.uleb()) for _ in range(n_columns)]
    for spec, length in specs:
        data = r.take(length)
        if spec & ~_DEFLATE_BIT == _ACTION_COLUMN:
            if spec & _DEFLATE_BIT:
                inflater = zlib.decompressobj(-15)
                try:
                    data = inflater.decompress(data, MAX_CHANGE_BYTES)
                except zlib.error as exc:
                    raise ChangeMismatchError("action column does not inflate") from exc
            return count_rle_values(data)
    return 0


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
