"""Which objects and keys a change's ops touch, decoded from its columns.

The board needs this to refresh only the entries a remote change touched and to
say what happened ("Bo claimed 10 of your need"), instead of re-reading a whole
section. Only four op columns matter here (Automerge binary format, change
chunk): the object an op targets (``objActor``, ``objCtr``), its map key
(``keyString``) and its ``action``. All four are run-length encoded::

    run = sLEB n, then: n > 0  -> one value, repeated n times
                        n < 0  -> -n literal values
                        n == 0 -> uLEB count of nulls

A null object is the root map. A column whose spec has bit 3 set is DEFLATE
compressed. The change must already have passed :func:`p2paid.changes.parse_change`.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeVar, final

from .changes import MAX_CHANGE_BYTES, _inflate, _Reader, count_rle_values
from .errors import ChangeMismatchError

__all__ = ["ACTION_MAKE_MAP", "Op", "decode_ops"]

_OBJ_ACTOR: Final = 0x01
_OBJ_CTR: Final = 0x02
_KEY_STR: Final = 0x15
_ACTION: Final = 0x42
_DEFLATE_BIT: Final = 0x08
#: Automerge action code of "make a map".
ACTION_MAKE_MAP: Final = 0

_T = TypeVar("_T")


@final
@dataclass(frozen=True, slots=True)
class Op:
    """One op: its own counter, target object (None = root) and map key."""

    counter: int
    obj: tuple[int, int] | None  #: (actor index, counter) of the target object
    key: str | None
    action: int


def _rle(data: bytes, read: Callable[[_Reader], _T], count: int) -> list[_T | None]:
    r = _Reader(data)
    out: list[_T | None] = []
    while r.pos < len(data) and len(out) < count:
        n = r.sleb()
        if n > 0:
            value = read(r)
            out.extend([value] * min(n, count - len(out)))
        elif n < 0:
            out.extend(read(r) for _ in range(min(-n, count - len(out))))
        else:
            out.extend([None] * min(r.uleb(), count - len(out)))
    out.extend([None] * (count - len(out)))
    return out


def _string(r: _Reader) -> str:
    raw = r.take(r.uleb())
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ChangeMismatchError("change has a key that is not UTF-8") from exc


def _body(chunk: bytes) -> bytes:
    r = _Reader(chunk)
    r.take(8)
    chunk_type = r.take(1)[0]
    body = r.take(r.uleb())
    return _inflate(body) if chunk_type == 2 else body


def decode_ops(chunk: bytes) -> list[Op]:
    """Decode the target object, key and action of every op of a change chunk.

    Raises:
        ChangeMismatchError: the columns are malformed.
    """
    r = _Reader(_body(chunk))
    for _ in range(r.uleb()):  # deps
        r.take(32)
    r.take(r.uleb())  # actor
    r.uleb()  # seq
    start_op = r.uleb()
    r.sleb()  # time
    r.take(r.uleb())  # message
    for _ in range(r.uleb()):  # other actors
        r.take(r.uleb())
    specs = [(r.uleb(), r.uleb()) for _ in range(min(r.uleb(), 64))]
    columns: dict[int, bytes] = {}
    for spec, length in specs:
        data = r.take(length)
        if spec & _DEFLATE_BIT:
            inflater = zlib.decompressobj(-15)
            try:
                data = inflater.decompress(data, MAX_CHANGE_BYTES)
            except zlib.error as exc:
                raise ChangeMismatchError("compressed column does not inflate") from exc
        columns[spec & ~_DEFLATE_BIT] = data
    count = count_rle_values(columns.get(_ACTION, b""))
    actors = _rle(columns.get(_OBJ_ACTOR, b""), _Reader.uleb, count)
    ctrs = _rle(columns.get(_OBJ_CTR, b""), _Reader.uleb, count)
    keys = _rle(columns.get(_KEY_STR, b""), _string, count)
    actions = _rle(columns.get(_ACTION, b""), _Reader.uleb, count)
    ops = []
    for i in range(count):
        actor, ctr = actors[i], ctrs[i]
        obj = None if actor is None or ctr is None else (actor, ctr)
        action = actions[i]
        ops.append(Op(start_op + i, obj, keys[i], -1 if action is None else action))
    return ops
