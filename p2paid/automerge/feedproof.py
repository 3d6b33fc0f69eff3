"""Prove from a checkpoint's columns, without Automerge, that its feed passes the rules.

A checkpoint's content is Automerge's saved document of one author's changes
``1..S`` (``protocol/SPEC.md`` 8a). Checking those changes one by one, as envelopes'
changes are checked (:mod:`p2paid.automerge.rules`), costs about 60 us a change in
Python: Automerge must hand each change back, re-encoded, and every op is parsed
apart. This module reads the document's columns once instead, as whole lists, and
checks conditions on them that hold exactly when every change passes those rules
(8a.3.1 states them):

* the changes are the author's ``1..S`` in order, each depending on the one before,
  their op counters running ``1..M`` without a gap or a repeat (the op counts follow
  from the ``maxOp`` column), at most :data:`~p2paid.automerge.chunk.MAX_OPS` a change;
* the one op on the root map is op 1, making a map at the author's hex id;
* every other op makes a map or puts an int or a string in a map the author made
  before it, under a key of 1 to 64 characters;
* the ops at one key of one map form a single chain in counter order: each one's
  successor is the next op there, or a delete (an op counter the columns do not hold:
  Automerge stores deletes only as successors) followed, if anything follows, by an op
  without predecessor; maps are never overwritten or deleted.

What it does not prove it leaves to the change-by-change check (:func:`prove_feed`
returns None): messages on changes, changes that might exceed
:data:`~p2paid.automerge.chunk.MAX_CHANGE_BYTES`, more than one successor, and any op
the rules refuse. So it never accepts what those rules refuse, and the caller reaches
the same verdict, with the same error, either way; honest feeds take the fast road.

It does refuse outright what no honest author writes and what would cost a reader
more than the content is worth: a column Automerge does not write for map ops, two
columns with one spec, columns whose row counts disagree, and more ops or changes
than the caller allows (run-length encoding can describe a billion ops in a few
bytes; Automerge would build them all before any rule ran).
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate, compress, islice
from operator import and_, eq, le, lt, not_
from typing import Final, cast, final

from p2paid.automerge.chunk import (
    ACTION_MAKE_MAP,
    ACTION_SET,
    MAX_CHANGE_BYTES,
    MAX_OPS,
    VALUE_INT,
    VALUE_STR,
    _sleb,
    _uleb,
)
from p2paid.automerge.rules import MAX_KEY_CHARS, MAX_OP_COUNTER, AuthorState
from p2paid.errors import ChangeMismatchError

__all__ = ["FeedProof", "prove_feed"]

_DEFLATE_BIT: Final = 0x08

# Change columns of a document chunk (column id << 4 | type).
_CH_ACTOR: Final = 0x01
_CH_SEQ: Final = 0x03
_CH_MAX_OP: Final = 0x13
_CH_TIME: Final = 0x23
_CH_MESSAGE: Final = 0x35
_CH_DEPS_GROUP: Final = 0x40
_CH_DEPS_INDEX: Final = 0x43
_CH_EXTRA_META: Final = 0x56
_CH_EXTRA_RAW: Final = 0x57
_CHANGE_COLUMNS: Final = frozenset({_CH_ACTOR, _CH_SEQ, _CH_MAX_OP, _CH_TIME, _CH_MESSAGE,
                                    _CH_DEPS_GROUP, _CH_DEPS_INDEX, _CH_EXTRA_META,
                                    _CH_EXTRA_RAW})

# Op columns of a document chunk: those of map ops (no key actor or counter, expand or
# mark name: lists, text and marks), successors (id 8) where changes have preds.
_OP_OBJ_ACTOR: Final = 0x01
_OP_OBJ_CTR: Final = 0x02
_OP_KEY_STR: Final = 0x15
_OP_ID_ACTOR: Final = 0x21
_OP_ID_CTR: Final = 0x23
_OP_INSERT: Final = 0x34
_OP_ACTION: Final = 0x42
_OP_VAL_META: Final = 0x56
_OP_VAL_RAW: Final = 0x57
_OP_SUCC_GROUP: Final = 0x80
_OP_SUCC_ACTOR: Final = 0x81
_OP_SUCC_CTR: Final = 0x83
_OP_COLUMNS: Final = frozenset({_OP_OBJ_ACTOR, _OP_OBJ_CTR, _OP_KEY_STR, _OP_ID_ACTOR,
                                _OP_ID_CTR, _OP_INSERT, _OP_ACTION, _OP_VAL_META,
                                _OP_VAL_RAW, _OP_SUCC_GROUP, _OP_SUCC_ACTOR, _OP_SUCC_CTR})

#: What a change's body may take beyond its ops' keys and values (header, column
#: directory, run headers), and per op (every column's share but the key and value):
#: generous, so that the bound below never calls a change small that is not.
_CHANGE_OVERHEAD: Final = 4096
_OP_OVERHEAD: Final = 64
_MAX_INT_BYTES: Final = 10


@final
@dataclass(frozen=True, slots=True)
class FeedProof:
    """What :func:`prove_feed` established of a document of one author's feed."""

    #: changes held, ``1..changes``
    changes: int
    #: the last op counter (ops run ``1..max_op``)
    max_op: int
    #: counters of every map the author made (its section included)
    maps: set[int]
    _ops: _OpColumns

    def state(self, last_hash: bytes, keys: set[tuple[int, str]] | None = None
              ) -> AuthorState:
        """The rules' state of the author after its last change, whose hash is
        ``last_hash``; with ``keys`` (``(map, key)`` pairs), of those keys only (enough
        to check a change whose ops touch no others)."""
        return AuthorState(self.changes, last_hash, self.max_op, set(self.maps),
                           self._ops.slots(keys))


def _fail(what: str) -> ChangeMismatchError:
    return ChangeMismatchError(f"the checkpoint's document: {what}")


# ------------------------------------------------------------------ column decoding
#
# Run-length encoding (RLE): sLEB n; n > 0: one value, n times; n < 0: -n values;
# n == 0: uLEB count of nulls. Every decoder stops before holding more than ``cap``
# rows, so a few bytes of runs cannot make it build a huge list. The encodings need
# not be canonical: every encoding has one meaning, the one Automerge reads.


#: One LEB128 number: continuation bytes, then a last byte below 0x80.
_LEB: Final = re.compile(rb"[\x80-\xff]*[\x00-\x7f]")
#: Most bytes a column may take per row it holds (a value of 10 bytes and a run of
#: its own; honest columns take 1 to 3).
_MAX_BYTES_PER_ROW: Final = 24


_ONE_BYTE_UNSIGNED: Final = {bytes([b]): b for b in range(0x80)}
_ONE_BYTE_SIGNED: Final = {bytes([b]): b - 0x80 if b & 0x40 else b for b in range(0x80)}


class _Numbers(dict[bytes, int]):
    """LEB128 numbers by their bytes, decoded once each (strictly: minimal, 64 bits)."""

    __slots__ = ("_read",)

    def __init__(self, signed: bool) -> None:
        super().__init__(_ONE_BYTE_SIGNED if signed else _ONE_BYTE_UNSIGNED)
        self._read = _sleb if signed else _uleb

    def __missing__(self, token: bytes) -> int:
        if len(token) == 2:  # (most numbers past one byte)
            low, high = token
            value = (low & 0x7F) | high << 7
            if self._read is _uleb:
                if high:  # (else not minimal)
                    self[token] = value
                    return value
            elif (0 < high < 0x40 or (high == 0 and low & 0x40)
                  or (0x40 <= high < 0x7F) or (high == 0x7F and not low & 0x40)):
                self[token] = value - (1 << 14 if high & 0x40 else 0)
                return self[token]
        value, end = self._read(token, 0)
        if end != len(token):
            raise _fail("a number is malformed")
        self[token] = value
        return value


def _ints(data: bytes, cap: int, signed: bool) -> list[int | None]:
    """An RLE column of uLEB (or sLEB) numbers, nulls as None.

    The column is cut into its numbers at once (a regular expression); then each run
    takes its values as one slice, so Python steps once a run, not once a value.
    """
    if len(data) > _MAX_BYTES_PER_ROW * cap + _MAX_BYTES_PER_ROW:
        raise _fail("a column is larger than its rows can be")
    tokens = _LEB.findall(data)
    if sum(map(len, tokens)) != len(data):
        raise _fail("a column ends inside a number")
    runs = _Numbers(signed=True)
    values = _Numbers(signed)
    counts = _Numbers(signed=False)
    out: list[int | None] = []
    extend = out.extend
    held = i = 0
    end = len(tokens)
    try:
        while i < end:
            n = runs[tokens[i]]
            if n > 0:
                held += n
                if held > cap:
                    raise _fail("a column holds more rows than it may")
                extend([values[tokens[i + 1]]] * n)
                i += 2
            elif n < 0:
                stop = i + 1 - n
                held -= n
                if held > cap or stop > end:
                    raise _fail("a column holds more rows than it may, or is truncated")
                extend(map(values.__getitem__, tokens[i + 1:stop]))
                i = stop
            else:
                count = counts[tokens[i + 1]]
                held += count
                if held > cap:
                    raise _fail("a column holds more rows than it may")
                extend([None] * count)
                i += 2
    except IndexError:
        raise _fail("a column is truncated") from None
    return out


def _strings(data: bytes, cap: int) -> list[str | None]:
    """An RLE column of strings (uLEB length, UTF-8)."""
    raw: list[bytes | None] = []
    append = raw.append
    pos, end = 0, len(data)
    try:
        while pos < end:
            byte = data[pos]
            if byte < 0x80:
                n = byte - 0x80 if byte & 0x40 else byte
                pos += 1
            else:
                n, pos = _sleb(data, pos)
            if n == 0:
                count, pos = _uleb(data, pos)
                if len(raw) + count > cap:
                    raise _fail("a column holds more rows than it may")
                raw.extend([None] * count)
                continue
            if len(raw) + abs(n) > cap:
                raise _fail("a column holds more rows than it may")
            for _ in range(1 if n > 0 else -n):
                size = data[pos]
                if size < 0x80:
                    pos += 1
                else:
                    size, pos = _uleb(data, pos)
                stop = pos + size
                append(data[pos:stop])
                pos = stop
            if n > 1:
                raw.extend([raw[-1]] * (n - 1))
    except IndexError:
        raise _fail("a column is truncated") from None
    if pos != end:
        raise _fail("a string runs past its column")
    try:
        return [None if r is None else r.decode() for r in raw] if None in raw \
            else list(map(bytes.decode, raw))  # type: ignore[arg-type]  # (no None)
    except UnicodeDecodeError:
        raise _fail("a string is not UTF-8") from None


def _booleans(data: bytes, rows: int) -> bool:
    """Whether a boolean column (alternating run lengths, false first) of ``rows`` rows
    holds a true; the column must hold exactly ``rows``."""
    total, pos, value, any_true = 0, 0, False, False
    while pos < len(data):
        count, pos = _uleb(data, pos)
        total += count
        if total > rows:
            raise _fail("a column holds more rows than it may")
        any_true = any_true or (value and count > 0)
        value = not value
    if data and total != rows:
        raise _fail(f"its insert column holds {total} rows, not {rows}")
    return any_true


def _rows(column: Sequence[object] | None, rows: int, what: str) -> None:
    if column is not None and len(column) != rows:
        raise _fail(f"its {what} column holds {len(column)} rows, not {rows}")


def _numbers(columns: dict[int, bytes], spec: int, rows: int, what: str) -> list[int]:
    """A column of numbers with exactly ``rows`` rows and no null."""
    values = _nullable(columns, spec, rows, what)
    if None in values or (rows and not columns.get(spec)):
        raise _fail(f"its {what} column holds a null, or is missing")
    return cast("list[int]", values)


def _nullable(columns: dict[int, bytes], spec: int, rows: int, what: str
              ) -> list[int | None]:
    """A column of numbers with exactly ``rows`` rows; absent, it holds nulls alone
    (Automerge leaves out a column of nulls)."""
    data = columns.get(spec, b"")
    if not data:
        return [None] * rows
    values = _ints(data, rows, signed=(spec & 0x07) == 3)  # (type 3: delta, signed)
    _rows(values, rows, what)
    return values


def _directory(columns: Sequence[tuple[int, bytes]], known: frozenset[int],
               what: str) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    last = -1
    for spec, data in columns:
        plain = spec & ~_DEFLATE_BIT
        if plain not in known:
            raise _fail(f"{what} column {spec:#x} is not one Automerge writes for map ops "
                        "(lists, text or marks, or a newer format)")
        if plain <= last:
            raise _fail(f"its {what} columns are out of order or repeated")
        last = plain
        found[plain] = data
    return found


# ------------------------------------------------------------------ the proof


def prove_feed(change_columns: Sequence[tuple[int, bytes]],
               op_columns: Sequence[tuple[int, bytes]], *, author: bytes, changes: int,
               max_op: int) -> FeedProof | None:
    """Prove that a document's columns (inflated, as read by
    :func:`p2paid.automerge.docchunk.inspect_document`) hold ``author``'s changes
    ``1..changes`` with ops ``1..max_op``, every one passing the rules.

    Every column is decoded, and its rows counted, before anything is proved: content
    this returns None for holds no more than ``changes`` changes and ``max_op`` ops
    when Automerge loads it.

    Returns:
        The proof, or None where the columns hold something this reader leaves to the
        change-by-change check (the rules may still accept or refuse it).

    Raises:
        ChangeMismatchError: columns no honest author writes: unknown or repeated ones,
            nulls where Automerge writes none, row counts that disagree or exceed
            ``changes`` and ``max_op``, a column that does not decode.
    """
    if not 0 < changes <= max_op:
        raise _fail(f"{changes} changes cannot hold ops 1..{max_op}")
    ch = _ChangeColumns(_directory(change_columns, _CHANGE_COLUMNS, "change"), changes)
    op = _OpColumns(_directory(op_columns, _OP_COLUMNS, "op"), max_op)
    counts = ch.prove(max_op)
    if counts is None:
        return None
    return op.prove(author, changes, max_op, max(counts), ch.extra_max)


@final
class _ChangeColumns:
    """A document's change columns, decoded, their rows checked."""

    def __init__(self, ch: dict[int, bytes], rows: int) -> None:
        self.rows = rows
        self.actors = _numbers(ch, _CH_ACTOR, rows, "actor")
        self.seq_deltas = _numbers(ch, _CH_SEQ, rows, "seq")
        self.op_counts = _numbers(ch, _CH_MAX_OP, rows, "max op")
        self.dep_groups = _numbers(ch, _CH_DEPS_GROUP, rows, "deps")
        _nullable(ch, _CH_TIME, rows, "time")
        self.messages = _strings(ch[_CH_MESSAGE], rows) if _CH_MESSAGE in ch else None
        _rows(self.messages, rows, "message")
        n_deps = sum(self.dep_groups)
        if n_deps > rows:  # (an own feed: one dependency a change, the first none)
            raise _fail("its changes name more dependencies than the feed has changes")
        self.dep_deltas = _numbers(ch, _CH_DEPS_INDEX, n_deps, "deps")
        metas = _nullable(ch, _CH_EXTRA_META, rows, "extra bytes")
        sizes = [0 if m is None else m >> 4 for m in metas]
        if sum(sizes) != len(ch.get(_CH_EXTRA_RAW, b"")):
            raise _fail("its extra bytes do not add up")
        self.extra_max = max(sizes, default=0)

    def prove(self, max_op: int) -> list[int] | None:
        """The own-feed rule: actor 0 alone, seq ``1..S``, change ``s`` depending on
        change ``s - 1`` alone (on row ``s - 2``), op counts of 1 to MAX_OPS running
        ``1..max_op``. Returns each change's op count."""
        rows = self.rows
        if self.messages is not None and self.messages.count(None) != rows:
            return None  # (messages are allowed, and checked change by change)
        if self.actors.count(0) != rows or self.seq_deltas.count(1) != rows:
            return None
        groups, deps = self.dep_groups, self.dep_deltas
        if groups[0] != 0 or groups.count(1) != rows - 1:
            return None
        if deps and (deps[0] != 0 or deps.count(1) != len(deps) - 1):
            return None
        counts = self.op_counts
        if min(counts) < 1 or max(counts) > MAX_OPS or sum(counts) != max_op \
                or max_op > MAX_OP_COUNTER:
            return None
        return counts


@final
class _OpColumns:
    """A document's op columns, decoded, their rows checked (at most ``max_op``)."""

    def __init__(self, op: dict[int, bytes], max_op: int) -> None:
        data = op.get(_OP_ID_CTR, b"")
        deltas = _ints(data, max_op, signed=True)
        if None in deltas:
            raise _fail("its op id column holds a null")
        self.ids = list(accumulate(cast("list[int]", deltas)))
        n = self.n = len(self.ids)
        self.obj_actors = _nullable(op, _OP_OBJ_ACTOR, n, "object actor")
        self.objs = _nullable(op, _OP_OBJ_CTR, n, "object")
        keys = op.get(_OP_KEY_STR, b"")
        self.keys = _strings(keys, n) if keys else [None] * n
        _rows(self.keys, n, "key")
        self.id_actors = _numbers(op, _OP_ID_ACTOR, n, "op actor")
        self.actions = _numbers(op, _OP_ACTION, n, "action")
        self.metas = _numbers(op, _OP_VAL_META, n, "value metadata")
        self.succ_groups = _numbers(op, _OP_SUCC_GROUP, n, "successor")
        n_succ = sum(self.succ_groups)
        if n_succ > max_op:  # (each successor is another op of the feed)
            raise _fail("its ops name more successors than the feed has ops")
        self.succ_actors = _numbers(op, _OP_SUCC_ACTOR, n_succ, "successor actor")
        self.succs = list(accumulate(_numbers(op, _OP_SUCC_CTR, n_succ, "successor")))
        self.inserts = _booleans(op.get(_OP_INSERT, b""), n)
        sizes = Counter(self.metas)
        if sum((m >> 4) * k for m, k in sizes.items()) != len(op.get(_OP_VAL_RAW, b"")):
            raise _fail("its values do not add up to the value column")

        self._check_order()

    def _check_order(self) -> None:
        """Ops sorted as Automerge sorts them: by object (the root's first), then by
        key, then by op counter, so that the ops at one key are neighbours. Content in
        another order would load into a broken document."""
        ids, n = self.ids, self.n
        roots = next((i for i, obj in enumerate(self.objs) if obj is not None), n)
        if None in islice(self.objs, roots, None) or None in self.keys:
            raise _fail("its ops are out of order, or an op has no key")
        objs = cast("list[int]", self.objs[roots:])
        keys = cast("list[str]", self.keys)
        if not all(map(le, objs, islice(objs, 1, None))):
            raise _fail("its objects are out of order")
        same_obj = [True] * max(roots - 1, 0) + [False] * (0 < roots < n) + list(
            map(eq, objs, islice(objs, 1, None)))
        following = islice(keys, 1, None)
        if not all(map(le, compress(keys, same_obj), compress(following, same_obj))):
            raise _fail("its keys are out of order")
        self.same = same = list(map(and_, same_obj, map(eq, keys, islice(keys, 1, None))))
        if not all(map(lt, compress(ids, same), compress(islice(ids, 1, None), same))):
            raise _fail("the ops at one key are out of order")

    def prove(self, author: bytes, changes: int, max_op: int, most_ops: int,
              extra_max: int) -> FeedProof | None:
        ids, objs, keys, actions, metas = self.ids, self.objs, self.keys, self.actions, \
            self.metas
        n = self.n
        if not n or self.inserts:
            return None
        # One op on the root (op 1, the author's section); every op the author's own.
        if self.obj_actors[0] is not None or self.obj_actors.count(0) != n - 1 \
                or objs[0] is not None or objs.count(None) != 1:
            return None
        if self.id_actors.count(0) != n or self.succ_actors.count(0) != len(self.succs):
            return None
        if ids[0] != 1 or actions[0] != ACTION_MAKE_MAP or metas[0] != 0 \
                or self.succ_groups[0] or keys[0] != author.hex():
            return None
        # Map ops of the schema: make a map (no value), put an int or a string.
        value_max = 0
        for action, meta in set(zip(actions, metas, strict=True)):
            kind, size = meta & 0x0F, meta >> 4
            if action == ACTION_MAKE_MAP:
                if meta != 0:
                    return None
            elif action != ACTION_SET or not (
                    kind == VALUE_STR or (kind == VALUE_INT and 0 < size <= _MAX_INT_BYTES)):
                return None
            value_max = max(value_max, size)
        key_lengths = list(map(len, islice(keys, 1, None)))  # type: ignore[arg-type]
        if key_lengths and (min(key_lengths) < 1 or max(key_lengths) > MAX_KEY_CHARS):
            return None
        # The largest change these ops can make, bounded from above: a change possibly
        # over MAX_CHANGE_BYTES is left to the change-by-change check.
        key_max = 4 * max(key_lengths, default=0)
        if most_ops * (key_max + value_max + _OP_OVERHEAD) + _CHANGE_OVERHEAD + extra_max \
                > MAX_CHANGE_BYTES:
            return None
        # Every op targets a map the author made before it.
        maps = set(compress(ids, map(not_, actions)))
        targets = cast("list[int]", objs[1:])  # (no None past the root's op: checked)
        if not maps.issuperset(targets) or not all(map(lt, targets, islice(ids, 1, None))):
            return None
        if not self._prove_chains(max_op):
            return None
        return FeedProof(changes, max_op, maps, self)

    def _prove_chains(self, max_op: int) -> bool:
        """The ops at each key form one chain (see the module's docstring): each op's
        successor is the next op there or a delete, and op counters run 1..max_op."""
        ids, n, same = self.ids, self.n, self.same
        deletes: list[int] = []
        links = 0
        if self.succs:
            if max(self.succ_groups) != 1:
                return False
            for succ, i in zip(self.succs, compress(range(n), self.succ_groups), strict=True):
                here = ids[i]
                if self.actions[i] == ACTION_MAKE_MAP or succ <= here:
                    return False  # a map overwritten or deleted; a successor before its op
                if i < n - 1 and same[i]:
                    following = ids[i + 1]
                    if succ > following:
                        return False  # the next op there does not see this one
                    if succ != following:
                        deletes.append(succ)
                    links += 1
                else:
                    deletes.append(succ)
        if sum(same) != links:
            return False  # two chains at one key: a predecessor left out (a conflict)
        counters = set(ids)
        counters.update(deletes)
        return len(counters) == n + len(deletes) == max_op and min(counters) == 1 \
            and max(counters) == max_op  # (no counter repeated, no gap: no delete of nothing)

    def slots(self, keys: set[tuple[int, str]] | None = None) -> dict[tuple[int, str], int]:
        """The op visible at each key of each map (at ``keys`` only, if given: found by
        bisection, the ops being sorted)."""
        ids, objs, groups = self.ids, self.objs, self.succ_groups
        if keys is not None:
            ints = cast("list[int]", objs)
            names = cast("list[str]", self.keys)
            found: dict[tuple[int, str], int] = {}
            for obj, key in keys:
                lo = bisect_left(ints, obj, 1)
                hi = bisect_right(ints, obj, lo)
                first = bisect_left(names, key, lo, hi)
                last = bisect_right(names, key, first, hi)
                if first < last and not groups[last - 1]:  # (the chain's end, not deleted)
                    found[(obj, key)] = ids[last - 1]
            return found
        pairs = zip(islice(objs, 1, None), islice(self.keys, 1, None), strict=True)
        if self.succs:
            visible = list(map(not_, islice(groups, 1, None)))
            return dict(zip(compress(pairs, visible),  # type: ignore[arg-type]
                            compress(islice(ids, 1, None), visible), strict=True))
        return dict(zip(pairs, islice(ids, 1, None), strict=True))  # type: ignore[arg-type]
