"""Hand-built Automerge change chunks, for playing the hostile member in tests.

A hostile member holds the invite and its own author key, so it can sign any bytes
as the next envelope of its feed. Automerge's own API only makes well-formed
changes; this module writes the binary change format directly (the chunk layout
and the op columns of the Automerge binary format) so that tests can send exactly
the change an attacker would: any deps, start_op, actor table, action, value type,
object, key or pred.

Columns are written as Automerge writes them (``canonical=True``: repeats as runs,
the rest as literal runs, nulls as null runs), or with literal runs only, which is
valid RLE that Automerge applies but cannot save again (a hostile encoding).
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "ROOT_OBJ",
    "CraftedOp",
    "change_chunk",
    "change_hash",
    "compress_chunk",
    "int_value",
    "null_value",
    "str_value",
    "uleb",
]

MAGIC = bytes.fromhex("856f4a83")
#: Value type codes of the value-metadata column.
NULL, FALSE, TRUE, UINT, INT, FLOAT, STR, BYTES, COUNTER, TIMESTAMP = range(10)
#: Automerge op action codes.
MAKE_MAP, SET, MAKE_LIST, DEL, MAKE_TEXT, INC, MAKE_TABLE, MARK = range(8)
ROOT_OBJ: tuple[int, int] | None = None


def uleb(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def sleb(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if (n == 0 and not byte & 0x40) or (n == -1 and byte & 0x40):
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def null_value() -> tuple[int, bytes]:
    return NULL, b""


def int_value(n: int) -> tuple[int, bytes]:
    return INT, sleb(n)


def str_value(text: str) -> tuple[int, bytes]:
    return STR, text.encode()


@dataclass
class CraftedOp:
    """One op. ``obj`` is ``(actor index, counter)`` or None for the root map; ``key``
    a map key (or ``(actor index, counter)`` of a list element, or None for HEAD)."""

    action: int
    obj: tuple[int, int] | None = None
    key: str | tuple[int, int] | None = ""
    value: tuple[int, bytes] = field(default_factory=null_value)
    preds: Sequence[tuple[int, int]] = ()
    insert: bool = False


def _rle(values: Sequence[bytes | None], canonical: bool = True) -> bytes:
    """RLE of already encoded values (None = null)."""
    if canonical and all(v is None for v in values):
        return b""
    out = bytearray()
    literals: list[bytes] = []

    def flush() -> None:
        if literals:
            out.extend(sleb(-len(literals)) + b"".join(literals))
            literals.clear()

    i = 0
    while i < len(values):
        j = i + 1
        while j < len(values) and values[j] == values[i]:
            j += 1
        value = values[i]
        if value is None:
            flush()
            out += sleb(0) + uleb(j - i)
        elif canonical and j - i > 1:
            flush()
            out += sleb(j - i) + value
        else:
            literals.extend([value] * (j - i))
        i = j
    flush()
    return bytes(out)


def _delta(values: Sequence[int | None], canonical: bool = True) -> bytes:
    last = 0
    encoded: list[bytes | None] = []
    for v in values:
        if v is None:
            encoded.append(None)
        else:
            encoded.append(sleb(v - last))
            last = v
    return _rle(encoded, canonical)


def _booleans(values: Sequence[bool]) -> bytes:
    out = bytearray()
    current, count = False, 0
    for v in values:
        if v == current:
            count += 1
        else:
            out += uleb(count)
            current, count = v, 1
    out += uleb(count)
    return bytes(out)


def op_columns(ops: Sequence[CraftedOp], canonical: bool = True) -> list[tuple[int, bytes]]:
    """The op columns of a change, as ``(spec, data)`` sorted by spec."""
    obj_actor = [None if op.obj is None else uleb(op.obj[0]) for op in ops]
    obj_ctr = [None if op.obj is None else uleb(op.obj[1]) for op in ops]
    key_actor: list[bytes | None] = []
    key_ctr: list[int | None] = []
    key_str: list[bytes | None] = []
    for op in ops:
        if isinstance(op.key, str):
            raw = op.key.encode()
            key_actor.append(None)
            key_ctr.append(None)
            key_str.append(uleb(len(raw)) + raw)
        elif op.key is None:
            key_actor.append(None)
            key_ctr.append(0)
            key_str.append(None)
        else:
            key_actor.append(uleb(op.key[0]))
            key_ctr.append(op.key[1])
            key_str.append(None)
    meta = [uleb(len(raw) << 4 | kind) for kind, raw in (op.value for op in ops)]
    raw_values = b"".join(raw for _, raw in (op.value for op in ops))
    pred_groups = [uleb(len(op.preds)) for op in ops]
    pred_actor = [uleb(a) for op in ops for a, _ in op.preds]
    pred_ctr: list[int | None] = [c for op in ops for _, c in op.preds]
    c = canonical
    columns = [
        (0x01, _rle(obj_actor, c)),
        (0x02, _rle(obj_ctr, c)),
        (0x11, _rle(key_actor, c)),
        (0x13, _delta(key_ctr, c)),
        (0x15, _rle(key_str, c)),
        (0x34, _booleans([op.insert for op in ops])),
        (0x42, _rle([uleb(op.action) for op in ops], c)),
        (0x56, _rle(meta, c)),
        (0x57, raw_values),
        (0x70, _rle(pred_groups, c)),
        (0x71, _rle(pred_actor, c)),
        (0x73, _delta(pred_ctr, c)),
    ]
    # Automerge leaves out columns whose values are all null; so do we.
    empty_key = all(v is None for v in key_actor) and all(v is None for v in key_ctr)
    return [(spec, data) for spec, data in columns
            if data and not (spec in (0x11, 0x13) and empty_key)
            and not (spec in (0x71, 0x73) and not pred_actor)]


def change_chunk(
    *,
    actor: bytes,
    seq: int,
    start_op: int,
    ops: Sequence[CraftedOp] = (),
    deps: Sequence[bytes] = (),
    time: int = 0,
    message: bytes = b"",
    other_actors: Sequence[bytes] = (),
    columns: Sequence[tuple[int, bytes]] | None = None,
    extra: bytes = b"",
    canonical: bool = True,
) -> bytes:
    """A type-1 change chunk with a correct checksum (``columns`` overrides ``ops``)."""
    cols = list(op_columns(ops, canonical) if columns is None else columns)
    body = bytearray()
    body += uleb(len(deps)) + b"".join(deps)
    body += uleb(len(actor)) + actor + uleb(seq) + uleb(start_op) + sleb(time)
    body += uleb(len(message)) + message
    body += uleb(len(other_actors))
    for other in other_actors:
        body += uleb(len(other)) + other
    body += uleb(len(cols))
    for spec, data in cols:
        body += uleb(spec) + uleb(len(data))
    for _, data in cols:
        body += data
    body += extra
    digest = hashlib.sha256(b"\x01" + uleb(len(body)) + bytes(body)).digest()
    return MAGIC + digest[:4] + b"\x01" + uleb(len(body)) + bytes(body)


def compress_chunk(chunk: bytes) -> bytes:
    """The type-2 (compressed) form of a type-1 change chunk (same checksum)."""
    assert chunk[8] == 1
    pos = 9
    length = 0
    shift = 0
    while True:
        byte = chunk[pos]
        pos += 1
        length |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            break
    body = chunk[pos:]
    deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
    packed = deflater.compress(body) + deflater.flush()
    return chunk[:8] + b"\x02" + uleb(len(packed)) + packed


def change_hash(chunk: bytes) -> bytes:
    """SHA-256 change hash of a type-1 chunk."""
    assert chunk[8] == 1
    return hashlib.sha256(b"\x01" + chunk[9:]).digest()


class CraftedFeed:
    """A hostile member's feed of hand-built changes that obey the own-feed rule.

    Each change depends on exactly the member's previous change and starts at its
    max op + 1, and every envelope is signed with the member's own author key, so a
    change is refused (or not) for its ops alone. ``section`` is the counter of the
    member's section map (op 1 of its first change), ``needs`` that of its needs map.
    """

    SECTION = 1
    NEEDS = 3

    def __init__(self, board_id: bytes, content_key: bytes, author_key: object) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

        from p2paid.core.identity import AuthorKey

        assert isinstance(author_key, AuthorKey)
        self.board_id = board_id
        self.cipher = ChaCha20Poly1305(content_key)
        self.key = author_key
        self.actor = bytes(author_key.public)
        self.seq = 0
        self.max_op = 0
        self.last_hash = b""
        self.prev = bytes(32)

    def next_start(self) -> int:
        return self.max_op + 1

    def chunk(self, ops: Sequence[CraftedOp], *, start_op: int | None = None,
              deps: Sequence[bytes] | None = None, seq: int | None = None,
              canonical: bool = True) -> bytes:
        """The next change of this feed (or one with the given fields overridden)."""
        return change_chunk(
            actor=self.actor, seq=self.seq + 1 if seq is None else seq,
            start_op=self.next_start() if start_op is None else start_op, ops=ops,
            deps=([self.last_hash] if self.seq else []) if deps is None else deps,
            canonical=canonical)

    def first(self) -> list[CraftedOp]:
        """The ops of an honest first change: the section, its version, a needs map."""
        return [CraftedOp(MAKE_MAP, None, self.actor.hex()),
                CraftedOp(SET, (0, self.SECTION), "v", int_value(1)),
                CraftedOp(MAKE_MAP, (0, self.SECTION), "needs")]

    def need_ops(self, item_id: str, title: str, *, now: int,
                 extra: Sequence[tuple[str, tuple[int, bytes]]] = ()) -> list[CraftedOp]:
        """Ops that post a valid need (plus ``extra`` fields) as the next change."""
        item = (0, self.next_start())
        ops = [CraftedOp(MAKE_MAP, (0, self.NEEDS), item_id),
               CraftedOp(SET, item, "title", str_value(title)),
               CraftedOp(SET, item, "category", str_value("water")),
               CraftedOp(SET, item, "created", int_value(now))]
        ops.extend(CraftedOp(SET, item, key, value) for key, value in extra)
        return ops

    def advance(self, raw: bytes) -> None:
        """Move the feed past an envelope sealed earlier with ``advance=False``."""
        from p2paid.automerge.chunk import parse_change
        from p2paid.core.envelope import Envelope, open_envelope

        env = Envelope.decode(raw)
        header = parse_change(open_envelope(env, self.cipher))
        assert env.seq == self.seq + 1 and env.prev == self.prev
        self.seq, self.max_op = header.seq, header.max_op
        self.last_hash, self.prev = header.hash, env.hash

    def seal(self, chunk: bytes, *, advance: bool = True) -> bytes:
        """Seal ``chunk`` as the next envelope; ``advance`` moves the feed past it."""
        from p2paid.automerge.chunk import parse_change
        from p2paid.core.envelope import seal_envelope

        env = seal_envelope(board_id=self.board_id, cipher=self.cipher, author_key=self.key,
                            seq=self.seq + 1, prev=self.prev, change=chunk)
        if advance:
            header = parse_change(chunk)
            self.seq, self.max_op = header.seq, header.max_op
            self.last_hash, self.prev = header.hash, env.hash
        return env.raw
