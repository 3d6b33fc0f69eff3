"""Parse an Automerge change chunk: its header and every op, strictly.

p2paid decides whether a remote change may be applied before Automerge ever sees
it (``protocol/SPEC.md`` section 5): the actor and seq must be the envelope's, the
actor table must list no other actor, and every op must be one the board schema
uses. This module is the one parser of change bytes; it imports no Automerge.

Layout (Automerge binary format, change chunk)::

    magic(4) checksum(4) type(1) uLEB length, body        # type 2: body is raw DEFLATE

    deps:          uLEB count, then count x 32-byte change hashes
    actor:         uLEB length, bytes
    seq:           uLEB
    start_op:      uLEB
    time:          sLEB (ms since the epoch)
    message:       uLEB length, UTF-8 bytes
    other actors:  uLEB count, then count x (uLEB length, bytes)
    columns:       uLEB count, then count x (uLEB spec, uLEB length), then the data
    extra bytes:   anything after the column data (kept by Automerge, ignored here)

The change hash is SHA-256 over ``type(1)=1 || uLEB(len(body)) || body``.

Op columns are run-length encoded (RLE)::

    run = sLEB n, then: n > 0  -> one value, repeated n times
                        n < 0  -> -n literal values
                        n == 0 -> uLEB count of nulls

Strictness that matters for safety (each found by attacking Automerge):

* Every LEB128 number must be minimal, as Automerge requires.
* The columns must be exactly the *canonical* encoding of their values (the one
  Automerge writes: see :func:`_rle`). Automerge re-encodes every change it holds when it saves a
  document; a change encoded any other way applies in memory, but the saved
  document then fails to load ("mismatching heads"), so one such change would make
  every snapshot and export of the board unreadable.
* Only the columns of map ops are accepted (no list, text or mark columns, no
  column-level compression), and at most :data:`MAX_OPS` ops.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Sequence
from typing import Final, NamedTuple, TypeVar

from p2paid.errors import ChangeMismatchError

__all__ = [
    "ACTION_DEL",
    "ACTION_MAKE_MAP",
    "ACTION_SET",
    "MAX_CHANGE_BYTES",
    "MAX_OPS",
    "VALUE_INT",
    "VALUE_NULL",
    "VALUE_STR",
    "ChangeHeader",
    "Op",
    "parse_change",
    "uleb_bytes",
]

MAGIC: Final = bytes.fromhex("856f4a83")
CHUNK_CHANGE: Final = 1
CHUNK_COMPRESSED_CHANGE: Final = 2
#: Largest change body accepted after decompression; a bigger one is refused, not expanded.
MAX_CHANGE_BYTES: Final = 256 * 1024
#: Most ops in one change.
MAX_OPS: Final = 10_000
_MAX_DEPS: Final = 1024
_MAX_ACTOR_BYTES: Final = 64
_MAX_MESSAGE_BYTES: Final = 1024

#: Automerge op actions (the schema uses the first, second and fourth).
ACTION_MAKE_MAP: Final = 0
ACTION_SET: Final = 1
ACTION_DEL: Final = 3
#: Value type codes of the value-metadata column (low 4 bits).
VALUE_NULL: Final = 0
VALUE_FALSE: Final = 1
VALUE_TRUE: Final = 2
VALUE_UINT: Final = 3
VALUE_INT: Final = 4
VALUE_FLOAT: Final = 5
VALUE_STR: Final = 6
VALUE_BYTES: Final = 7
VALUE_COUNTER: Final = 8
VALUE_TIMESTAMP: Final = 9

# Column specs: (column id << 4) | type; bit 3 would mean DEFLATE (refused here).
_OBJ_ACTOR: Final = 0x01
_OBJ_CTR: Final = 0x02
_KEY_STR: Final = 0x15
_INSERT: Final = 0x34
_ACTION: Final = 0x42
_VAL_META: Final = 0x56
_VAL_RAW: Final = 0x57
_PRED_GROUP: Final = 0x70
_PRED_ACTOR: Final = 0x71
_PRED_CTR: Final = 0x73
_MAP_OP_COLUMNS: Final = frozenset({_OBJ_ACTOR, _OBJ_CTR, _KEY_STR, _INSERT, _ACTION,
                                    _VAL_META, _VAL_RAW, _PRED_GROUP, _PRED_ACTOR, _PRED_CTR})

_T = TypeVar("_T")


def _fail(what: str) -> ChangeMismatchError:
    return ChangeMismatchError(f"malformed change: {what}")


# ------------------------------------------------------------------ LEB128


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


def sleb_bytes(n: int) -> bytes:
    """``n`` as signed LEB128."""
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if (n == 0 and not byte & 0x40) or (n == -1 and byte & 0x40):
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def _uleb(data: bytes, pos: int) -> tuple[int, int]:
    """Minimal uLEB128 at ``pos``: ``(value, next pos)``."""
    try:
        byte = data[pos]
    except IndexError:
        raise _fail("truncated number") from None
    if byte < 0x80:
        return byte, pos + 1
    result = byte & 0x7F
    shift = 7
    pos += 1
    end = len(data)
    while True:
        if pos >= end or shift > 63:
            raise _fail("bad LEB128 number")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            if byte == 0 or result >= 1 << 64:
                raise _fail("LEB128 number is not minimal")
            return result, pos
        shift += 7


def _sleb(data: bytes, pos: int) -> tuple[int, int]:
    """Minimal sLEB128 at ``pos``."""
    try:
        byte = data[pos]
    except IndexError:
        raise _fail("truncated number") from None
    if byte < 0x80:
        return (byte - 0x80 if byte & 0x40 else byte), pos + 1
    result = byte & 0x7F
    shift = 7
    pos += 1
    end = len(data)
    while True:
        if pos >= end or shift > 63:
            raise _fail("bad LEB128 number")
        prev, byte = byte, data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            # The last byte only repeats the sign of the one before: not minimal.
            if (byte == 0 and not prev & 0x40) or (byte == 0x7F and prev & 0x40):
                raise _fail("LEB128 number is not minimal")
            if byte & 0x40:
                result -= 1 << shift
            if not -(1 << 63) <= result < 1 << 63:
                raise _fail("LEB128 number out of range")
            return result, pos


# ------------------------------------------------------------------ the header


class Op(NamedTuple):
    """One map op. ``obj`` and each pred are ``(actor index, counter)``; ``obj`` is
    None for the root map; index 0 is the change's own actor."""

    counter: int
    obj: tuple[int, int] | None
    key: str
    action: int
    value_type: int
    value: int | str | bytes | None
    preds: tuple[tuple[int, int], ...]
    insert: bool = False


class ChangeHeader(NamedTuple):
    """A parsed change: the header fields p2paid checks, and its ops.

    (A named tuple: one is made per received change, and a frozen dataclass costs
    several times as much to build.)
    """

    hash: bytes
    deps: tuple[bytes, ...]
    actor: bytes
    seq: int
    start_op: int
    time: int
    other_actors: tuple[bytes, ...]
    op_count: int
    ops: tuple[Op, ...] = ()

    @property
    def max_op(self) -> int:
        """Counter of the change's last op (``start_op - 1`` if it has none)."""
        return self.start_op + self.op_count - 1


def inflate_capped(compressed: bytes, cap: int, what: str) -> bytes:
    """Raw DEFLATE, refusing (without expanding) anything that inflates beyond ``cap``.

    Raises:
        ChangeMismatchError: not DEFLATE, too large, truncated or with trailing bytes.
    """
    inflater = zlib.decompressobj(-15)
    try:
        body = inflater.decompress(compressed, cap + 1)
    except zlib.error as exc:
        raise ChangeMismatchError(f"{what} does not inflate") from exc
    if len(body) > cap or inflater.unconsumed_tail:
        raise ChangeMismatchError(f"{what} inflates beyond {cap} bytes")
    if not inflater.eof or inflater.unused_data:
        raise ChangeMismatchError(f"{what} is truncated or has trailing bytes")
    return body


def parse_change(chunk: bytes) -> ChangeHeader:
    """Parse one whole change chunk (type 1 or 2): checksum, header and ops.

    Raises:
        ChangeMismatchError: not exactly one well-formed, canonically encoded change
            chunk of map ops.
    """
    if chunk[:4] != MAGIC:
        raise ChangeMismatchError("not an Automerge chunk (bad magic)")
    if len(chunk) < 10:
        raise _fail("truncated")
    checksum = chunk[4:8]
    chunk_type = chunk[8]
    length, pos = _uleb(chunk, 9)
    if pos + length != len(chunk):
        raise _fail("truncated" if pos + length > len(chunk)
                    else "trailing bytes after the change chunk")
    raw_body = chunk[pos:]
    if chunk_type == CHUNK_COMPRESSED_CHANGE:
        body = inflate_capped(raw_body, MAX_CHANGE_BYTES, "compressed change")
    elif chunk_type == CHUNK_CHANGE:
        if length > MAX_CHANGE_BYTES:
            raise ChangeMismatchError(f"change larger than {MAX_CHANGE_BYTES} bytes")
        body = raw_body
    else:
        raise ChangeMismatchError(f"chunk type {chunk_type} is not a change")
    hasher = hashlib.sha256(b"\x01" + uleb_bytes(len(body)))
    hasher.update(body)
    digest = hasher.digest()
    if digest[:4] != checksum:
        raise ChangeMismatchError("change checksum does not match")
    end = len(body)
    n_deps, pos = _uleb(body, 0)
    if n_deps > _MAX_DEPS or pos + 32 * n_deps > end:
        raise _fail("bad dependencies")
    deps = tuple(body[pos + 32 * i : pos + 32 * i + 32] for i in range(n_deps))
    pos += 32 * n_deps
    actor_len, pos = _uleb(body, pos)
    if actor_len > _MAX_ACTOR_BYTES or pos + actor_len > end:
        raise _fail("bad actor id")
    actor = body[pos : pos + actor_len]
    seq, pos = _uleb(body, pos + actor_len)
    start_op, pos = _uleb(body, pos)
    time, pos = _sleb(body, pos)
    message_len, pos = _uleb(body, pos)
    if message_len > _MAX_MESSAGE_BYTES or pos + message_len > end:
        raise _fail("bad message")
    _utf8(body[pos : pos + message_len], "message")
    pos += message_len
    n_other, pos = _uleb(body, pos)
    if n_other > _MAX_DEPS:
        raise ChangeMismatchError("change lists too many actors")
    others = []
    for _ in range(n_other):
        size, pos = _uleb(body, pos)
        if size > _MAX_ACTOR_BYTES or pos + size > end:
            raise _fail("bad actor id")
        others.append(body[pos : pos + size])
        pos += size
    ops = _parse_ops(body, pos, start_op, 1 + len(others))
    return _new_header(ChangeHeader, (digest, deps, actor, seq, start_op, time, tuple(others),
                                      len(ops), ops))


def _utf8(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _fail(f"{what} is not UTF-8") from None


# ------------------------------------------------------------------ columns: decoding


def _columns(body: bytes, pos: int) -> dict[int, bytes]:
    n_columns, pos = _uleb(body, pos)
    if n_columns > len(_MAP_OP_COLUMNS):
        raise _fail("too many columns")
    specs: list[tuple[int, int]] = []
    last = -1
    end = len(body)
    for _ in range(n_columns):
        if pos + 1 < end and body[pos] < 0x80 and body[pos + 1] < 0x80:
            spec, length = body[pos], body[pos + 1]  # nearly always one byte each
            pos += 2
        else:
            spec, pos = _uleb(body, pos)
            length, pos = _uleb(body, pos)
        if spec <= last:
            raise _fail("columns out of order")
        if spec not in _MAP_OP_COLUMNS:
            raise ChangeMismatchError(
                f"change uses an Automerge feature p2paid does not accept (column {spec:#x}: "
                "lists, text, marks or compressed columns)")
        if not length:
            raise ChangeMismatchError(_NOT_CANONICAL)  # Automerge leaves empty columns out
        last = spec
        specs.append((spec, length))
    columns: dict[int, bytes] = {}
    for spec, length in specs:
        if pos + length > end:
            raise _fail("truncated column")
        columns[spec] = body[pos : pos + length]
        pos += length
    return columns


_new_op = _new_header = tuple.__new__

_NOT_CANONICAL: Final = ("change is not encoded as Automerge encodes it "
                         "(its saved form would not load)")


def _rle(data: bytes, read: Callable[[bytes, int], tuple[_T, int]]) -> list[_T | None]:
    """Decode an RLE column, refusing any encoding but Automerge's own.

    Automerge writes repeats of two or more as a run, other values as literal runs
    (never two equal neighbours, never two literal runs in a row) and nulls as null
    runs, and leaves out a column that holds only nulls.
    """
    out: list[_T | None] = []
    pos = 0
    end = len(data)
    prev = 0  # kind of the previous run: 1 repeat, -1 literal, 2 null
    last: object = None  # last value of the previous run
    while pos < end:
        n, pos = _sleb(data, pos)
        if n > 0:
            value, pos = read(data, pos)
            if n < 2 or (prev in (1, -1) and last == value):
                raise ChangeMismatchError(_NOT_CANONICAL)
            out.extend([value] * n)
            prev, last = 1, value
        elif n < 0:
            if prev == -1:
                raise ChangeMismatchError(_NOT_CANONICAL)
            value, pos = read(data, pos)
            if prev == 1 and last == value:
                raise ChangeMismatchError(_NOT_CANONICAL)
            out.append(value)
            for _ in range(-n - 1):
                following, pos = read(data, pos)
                if following == value:
                    raise ChangeMismatchError(_NOT_CANONICAL)
                out.append(following)
                value = following
            prev, last = -1, value
        else:
            count, pos = _uleb(data, pos)
            if count == 0 or prev == 2:
                raise ChangeMismatchError(_NOT_CANONICAL)
            out.extend([None] * count)
            prev, last = 2, None
        if len(out) > MAX_OPS:
            raise ChangeMismatchError(f"change has more than {MAX_OPS} ops")
    if prev == 2 and len(out) == out.count(None):
        raise ChangeMismatchError(_NOT_CANONICAL)  # all nulls: Automerge leaves it out
    return out


#: Short uLEB columns decoded before: an author's changes repeat most of them byte for
#: byte (actions, pred groups, value metadata), so decoding each once saves time.
_ULEB_CACHE: dict[bytes, tuple[int | None, ...]] = {}
_ULEB_CACHE_MAX: Final = 4096
_ULEB_CACHE_KEY_BYTES: Final = 32


def _rle_uleb(data: bytes) -> Sequence[int | None]:
    """:func:`_rle` of uLEB values (cached for short columns)."""
    if len(data) <= _ULEB_CACHE_KEY_BYTES:
        cached = _ULEB_CACHE.get(data)
        if cached is None:
            cached = tuple(_decode_rle_uleb(data))
            if len(_ULEB_CACHE) >= _ULEB_CACHE_MAX:
                _ULEB_CACHE.clear()
            _ULEB_CACHE[data] = cached
        return cached
    return _decode_rle_uleb(data)


def _decode_rle_uleb(data: bytes) -> list[int | None]:
    """:func:`_rle` of uLEB values, inlined: most runs and values are one byte."""
    out: list[int | None] = []
    pos = 0
    end = len(data)
    prev = 0
    last: int | None = None
    while pos < end:
        n = data[pos]
        if n < 0x80:
            pos += 1
            n = n - 0x80 if n & 0x40 else n
        else:
            n, pos = _sleb(data, pos)
        if n == 0:
            count, pos = _uleb(data, pos)
            if count == 0 or prev == 2:
                raise ChangeMismatchError(_NOT_CANONICAL)
            out.extend([None] * count)
            prev, last = 2, None
        else:
            if pos >= end:
                raise _fail("truncated column")
            value = data[pos]
            if value < 0x80:
                pos += 1
            else:
                value, pos = _uleb(data, pos)
            if n > 0:
                if n < 2 or (prev != 2 and prev and last == value):
                    raise ChangeMismatchError(_NOT_CANONICAL)
                out.extend([value] * n)
                prev, last = 1, value
            else:
                if prev == -1 or (prev == 1 and last == value):
                    raise ChangeMismatchError(_NOT_CANONICAL)
                out.append(value)
                for _ in range(-n - 1):
                    if pos >= end:
                        raise _fail("truncated column")
                    following = data[pos]
                    if following < 0x80:
                        pos += 1
                    else:
                        following, pos = _uleb(data, pos)
                    if following == value:
                        raise ChangeMismatchError(_NOT_CANONICAL)
                    out.append(following)
                    value = following
                prev, last = -1, value
        if len(out) > MAX_OPS:
            raise ChangeMismatchError(f"change has more than {MAX_OPS} ops")
    if prev == 2 and len(out) == out.count(None):
        raise ChangeMismatchError(_NOT_CANONICAL)  # all nulls: Automerge leaves it out
    return out


def _rle_str(data: bytes) -> list[str | None]:
    """:func:`_rle` of strings (uLEB length, UTF-8), inlined for the common case."""
    out: list[str | None] = []
    pos = 0
    end = len(data)
    prev = 0
    last: str | None = None
    while pos < end:
        n = data[pos]
        if n < 0x80:
            pos += 1
            n = n - 0x80 if n & 0x40 else n
        else:
            n, pos = _sleb(data, pos)
        if n == 0:
            count, pos = _uleb(data, pos)
            if count == 0 or prev == 2:
                raise ChangeMismatchError(_NOT_CANONICAL)
            out.extend([None] * count)
            prev, last = 2, None
            continue
        value, pos = _read_str(data, pos)
        if n > 0:
            if n < 2 or (prev in (1, -1) and last == value):
                raise ChangeMismatchError(_NOT_CANONICAL)
            out.extend([value] * n)
            prev, last = 1, value
        else:
            if prev == -1 or (prev == 1 and last == value):
                raise ChangeMismatchError(_NOT_CANONICAL)
            out.append(value)
            for _ in range(-n - 1):
                following, pos = _read_str(data, pos)
                if following == value:
                    raise ChangeMismatchError(_NOT_CANONICAL)
                out.append(following)
                value = following
            prev, last = -1, value
        if len(out) > MAX_OPS:
            raise ChangeMismatchError(f"change has more than {MAX_OPS} ops")
    if prev == 2 and len(out) == out.count(None):
        raise ChangeMismatchError(_NOT_CANONICAL)  # all nulls: Automerge leaves it out
    return out


def _read_str(data: bytes, pos: int) -> tuple[str, int]:
    size = data[pos] if pos < len(data) else 0x80
    if size < 0x80:
        pos += 1
    else:
        size, pos = _uleb(data, pos)
    end = pos + size
    if end > len(data):
        raise _fail("truncated string")
    try:
        return data[pos:end].decode("utf-8"), end
    except UnicodeDecodeError:
        raise _fail("map key is not UTF-8") from None


def _delta(data: bytes) -> list[int | None]:
    out: list[int | None] = []
    last = 0
    for d in _rle(data, _sleb):
        if d is None:
            out.append(None)
        else:
            last += d
            out.append(last)
    return out


def _booleans(data: bytes) -> list[bool]:
    """Alternating run lengths, false first; only the first may be zero."""
    out: list[bool] = []
    pos = 0
    value = False
    while pos < len(data):
        count, pos = _uleb(data, pos)
        if count == 0 and (out or value):
            raise ChangeMismatchError(_NOT_CANONICAL)
        out.extend([value] * count)
        value = not value
        if len(out) > MAX_OPS:
            raise ChangeMismatchError(f"change has more than {MAX_OPS} ops")
    return out


def _value(kind: int, raw: bytes) -> int | str | bytes | None:
    """Decode one value; it must be the bytes Automerge would write for it."""
    if kind in (VALUE_NULL, VALUE_FALSE, VALUE_TRUE):
        if raw:
            raise _fail("a null or boolean value has bytes")
        return None if kind == VALUE_NULL else kind == VALUE_TRUE
    if kind in (VALUE_UINT, VALUE_INT, VALUE_COUNTER, VALUE_TIMESTAMP):
        if kind == VALUE_UINT:
            number, used = _uleb(raw, 0) if raw else (0, -1)
        else:
            number, used = _sleb(raw, 0) if raw else (0, -1)
        if used != len(raw):
            raise _fail("a number value has the wrong length")
        return number
    if kind == VALUE_FLOAT:
        if len(raw) != 8:
            raise _fail("a float value is not 8 bytes")
        return raw
    if kind == VALUE_STR:
        return _utf8(raw, "string value")
    return raw  # bytes, or a type code this decoder does not know


def _parse_ops(body: bytes, pos: int, start_op: int, n_actors: int) -> tuple[Op, ...]:
    columns = _columns(body, pos)
    actions = _rle_uleb(columns.get(_ACTION, b""))
    count = len(actions)
    if count > MAX_OPS:
        raise ChangeMismatchError(f"change has more than {MAX_OPS} ops")

    def full(values: Sequence[_T | None], what: str) -> Sequence[_T | None]:
        if not values:
            return [None] * count
        if len(values) != count:
            raise _fail(f"the {what} column has {len(values)} values for {count} ops")
        return values

    if (count and not {_INSERT, _VAL_META, _PRED_GROUP} <= columns.keys()) or (
            not count and columns):
        raise ChangeMismatchError(_NOT_CANONICAL)  # Automerge writes these iff it has ops
    obj_actor = full(_rle_uleb(columns.get(_OBJ_ACTOR, b"")), "object actor")
    obj_ctr = full(_rle_uleb(columns.get(_OBJ_CTR, b"")), "object counter")
    keys = full(_rle_str(columns.get(_KEY_STR, b"")), "key")
    inserts = _booleans(columns.get(_INSERT, b""))
    metas = full(_rle_uleb(columns.get(_VAL_META, b"")), "value metadata")
    groups = full(_rle_uleb(columns.get(_PRED_GROUP, b"")), "pred group")
    pred_actor = _rle_uleb(columns.get(_PRED_ACTOR, b""))
    pred_ctr = _delta(columns.get(_PRED_CTR, b""))
    raw = columns.get(_VAL_RAW, b"")
    if len(inserts) != count:
        raise _fail("the insert column does not match the op count")
    if None in groups:
        raise _fail("a pred group is null")
    n_preds = sum(groups)  # type: ignore[arg-type]  # (no None, checked above)
    if not len(pred_actor) == len(pred_ctr) == n_preds:
        raise _fail("the pred columns do not match their groups")
    ops: list[Op] = []
    raw_pos = 0
    pred_pos = 0
    no_preds: tuple[tuple[int, int], ...] = ()
    for i in range(count):
        action, actor_index, ctr, key = actions[i], obj_actor[i], obj_ctr[i], keys[i]
        if action is None:
            raise _fail("an op has no action")
        if actor_index is None:
            if ctr is not None:
                raise _fail("an op names an object that cannot exist")
            obj = None
        elif ctr is None or actor_index >= n_actors:
            raise _fail("an op names an object that cannot exist")
        else:
            obj = (actor_index, ctr)
        if key is None:
            raise _fail("an op has no map key")
        meta = metas[i] or 0
        kind = meta & 0x0F
        size = meta >> 4
        end = raw_pos + size
        if end > len(raw):
            raise _fail("the value column is shorter than its metadata says")
        if kind == VALUE_STR:
            value: int | str | bytes | None = _utf8(raw[raw_pos:end], "string value")
        elif kind == VALUE_INT and size:
            value, used = _sleb(raw, raw_pos)
            if used != end:
                raise _fail("a number value has the wrong length")
        elif kind == VALUE_NULL and not size:
            value = None
        else:
            value = _value(kind, raw[raw_pos:end])
        raw_pos = end
        n_group = groups[i]
        if n_group:
            preds = []
            for _ in range(n_group):
                p_actor, p_ctr = pred_actor[pred_pos], pred_ctr[pred_pos]
                pred_pos += 1
                if p_actor is None or p_ctr is None or p_actor >= n_actors:
                    raise _fail("a pred names an op that cannot exist")
                preds.append((p_actor, p_ctr))
            pred_tuple = tuple(preds)
        else:
            pred_tuple = no_preds
        # (tuple.__new__ skips NamedTuple's Python-level constructor: this runs per op)
        ops.append(_new_op(Op, (start_op + i, obj, key, action, kind, value, pred_tuple,
                                inserts[i])))
    if raw_pos != len(raw):
        raise _fail("the value column is longer than its metadata says")
    return tuple(ops)
