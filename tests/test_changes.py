"""The change parser against Automerge itself, and against crafted changes.

``parse_change`` must accept every change Automerge makes with the ops the board
schema uses (map ops: make map, put int or str, delete), decode each op exactly,
and refuse anything not encoded as Automerge encodes it: such a change applies in
memory but makes the saved document unloadable ("mismatching heads").
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from amcraft import DEL, INT, MAKE_MAP, SET, STR, CraftedOp, change_chunk, int_value, str_value
from automerge.core import ROOT, Document, ObjType, ScalarType
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2paid.automerge.chunk import (
    ACTION_DEL,
    ACTION_MAKE_MAP,
    ACTION_SET,
    VALUE_INT,
    VALUE_NULL,
    VALUE_STR,
    parse_change,
)
from p2paid.board.document import sync_message_with_changes
from p2paid.board.readmodel import object_counter
from p2paid.errors import ChangeMismatchError

KEYS = st.sampled_from(["title", "status", "quantity", "a", "b", "needs", "ü", "ключ", "x" * 40])
VALUES = (st.integers(-(2**63), 2**63 - 1) | st.text(max_size=300)
          | st.sampled_from([0, 1, -1, 63, 64, -64, -65, 2**31, "", "same"]))
STEP = st.one_of(
    st.tuples(st.just("put"), st.integers(0, 5), KEYS, VALUES),
    st.tuples(st.just("map"), st.integers(0, 5), KEYS, st.none()),
    st.tuples(st.just("del"), st.integers(0, 5), KEYS, st.none()),
)


def _run(steps: list[list[tuple[str, int, str, Any]]]) -> tuple[Document, list[Any]]:
    """Apply transactions of steps to one document; objects are picked by index."""
    actor = os.urandom(32)
    doc = Document(actor_id=actor)
    with doc.transaction() as tx:
        maps = [bytes(tx.put_object(ROOT, actor.hex(), ObjType.Map))]
    for transaction in steps:
        with doc.transaction() as tx:
            for kind, obj_index, key, value in transaction:
                obj = maps[obj_index % len(maps)]
                if kind == "put":
                    if isinstance(value, int):
                        tx.put(obj, key, ScalarType.Int, value)
                    else:
                        tx.put(obj, key, ScalarType.Str, value)
                elif kind == "map":
                    current = tx.get(obj, key)
                    if current is None or current[0] != ObjType.Map:
                        maps.append(bytes(tx.put_object(obj, key, ObjType.Map)))
                else:
                    got = tx.get(obj, key)
                    if got is not None and got[0] != ObjType.Map:
                        tx.delete(obj, key)
    return doc, doc.get_changes([])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(STEP, min_size=1, max_size=15), min_size=1, max_size=5))
def test_every_change_automerge_makes_parses_exactly(
    steps: list[list[tuple[str, int, str, Any]]],
) -> None:
    """Differential: each change Automerge produced parses, canonically, with the ops
    Automerge reports (count, start op), and the decoded values are the ones written."""
    doc, changes = _run(steps)
    for change in changes:
        header = parse_change(bytes(change.bytes))
        assert header.hash == bytes(change.hash)
        assert header.start_op == int(change.start_op)
        assert header.max_op == int(change.max_op)
        assert parse_change(bytes(change.raw_bytes)) == header
        for op in header.ops:
            assert op.action in (ACTION_MAKE_MAP, ACTION_SET, ACTION_DEL)
            if op.action == ACTION_SET:
                assert op.value_type in (VALUE_INT, VALUE_STR)
            else:
                assert op.value_type == VALUE_NULL and op.value is None
    # and the decoded values are what the document holds now
    last_put: dict[tuple[int, str], Any] = {}
    for change in changes:
        for op in parse_change(bytes(change.bytes)).ops:
            obj = 0 if op.obj is None else op.obj[1]
            if op.action == ACTION_SET:
                last_put[(obj, op.key)] = op.value
            else:
                last_put.pop((obj, op.key), None)
    root_section = doc.get(ROOT, doc.keys(ROOT)[0])
    assert root_section is not None
    section = bytes(root_section[1])
    for key in doc.keys(section):
        value = doc.get(section, key)
        if value is not None and not isinstance(value[0], ObjType):
            assert last_put[(object_counter(section), key)] == value[0][1]


def _crafted(ops: list[CraftedOp], *, canonical: bool = True) -> bytes:
    actor = bytes(range(32))
    first = [CraftedOp(MAKE_MAP, None, actor.hex()), *ops]
    return change_chunk(actor=actor, seq=1, start_op=1, ops=first, canonical=canonical)


def test_crafted_changes_parse_like_automerge_ones() -> None:
    """The test crafting tool writes canonical changes, so a crafted change that Automerge
    would also make is byte-identical to Automerge's (guards the hostile tests below)."""
    actor = bytes(range(32))
    doc = Document(actor_id=actor)
    with doc.transaction() as tx:
        section = tx.put_object(ROOT, actor.hex(), ObjType.Map)
        tx.put(section, "v", ScalarType.Int, 1)
        tx.put(section, "name", ScalarType.Str, "Amina")
        needs = tx.put_object(section, "needs", ObjType.Map)
        tx.put(needs, "k", ScalarType.Str, "same")
        tx.put(needs, "j", ScalarType.Str, "same")
    made = bytes(doc.get_last_local_change().raw_bytes)  # type: ignore[union-attr]
    crafted = _crafted([CraftedOp(SET, (0, 1), "v", int_value(1)),
                        CraftedOp(SET, (0, 1), "name", str_value("Amina")),
                        CraftedOp(MAKE_MAP, (0, 1), "needs"),
                        CraftedOp(SET, (0, 4), "k", str_value("same")),
                        CraftedOp(SET, (0, 4), "j", str_value("same"))])
    # Automerge stamps the time; the op columns must be identical.
    assert parse_change(made).ops == parse_change(crafted).ops


def test_non_canonical_encoding_is_refused() -> None:
    """The same ops written with literal runs where Automerge writes a repeat run."""
    ops = [CraftedOp(SET, (0, 1), "a", int_value(1)), CraftedOp(SET, (0, 1), "b", int_value(1))]
    assert parse_change(_crafted(ops)).op_count == 3
    with pytest.raises(ChangeMismatchError, match="not encoded as Automerge encodes it"):
        parse_change(_crafted(ops, canonical=False))


@pytest.mark.parametrize("raw", [b"\x80\x01" + b"\x00", b"\xff\xff\x7f", b""])
def test_non_minimal_or_wrong_length_int_is_refused(raw: bytes) -> None:
    ops = [CraftedOp(SET, (0, 1), "a", (INT, raw))]
    with pytest.raises(ChangeMismatchError):
        parse_change(_crafted(ops))


def test_string_value_must_be_utf8() -> None:
    with pytest.raises(ChangeMismatchError, match="UTF-8"):
        parse_change(_crafted([CraftedOp(SET, (0, 1), "a", (STR, b"\xff\xfe"))]))


def test_list_ops_are_refused_by_the_parser() -> None:
    """Ops keyed by list element (keyActor/keyCtr columns) are not map ops."""
    ops = [CraftedOp(SET, (0, 1), (0, 1), int_value(1))]
    with pytest.raises(ChangeMismatchError, match="does not accept"):
        parse_change(_crafted(ops))


def test_sync_message_helper_round_trips() -> None:
    """The apply path wraps changes in a sync message; Automerge takes a crafted one."""
    chunk = _crafted([CraftedOp(SET, (0, 1), "a", int_value(5)),
                      CraftedOp(DEL, (0, 1), "a", preds=[(0, 2)])])
    from automerge.core import Message, SyncState

    doc = Document()
    doc.receive_sync_message(SyncState(), Message.decode(sync_message_with_changes([chunk])))
    assert [bytes(h) for h in doc.get_heads()] == [parse_change(chunk).hash]
    assert Document.load(bytes(doc.save())).get_heads() == doc.get_heads()
