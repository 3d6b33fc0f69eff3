"""The columnar proof of a checkpoint's feed (``p2paid.automerge.feedproof``, SPEC 8a.3.1).

What must hold: whenever the proof accepts a document, checking its changes one by
one, as envelopes' changes are checked, accepts them too and ends in the same rules
state (so a feed is accepted or refused alike whichever way it came); honest feeds
are proved (the fast road is the one they take); columns no honest author writes
(unknown or repeated columns, ops out of Automerge's order, row counts that disagree,
runs describing more rows than the content may hold) are refused before Automerge
builds anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import pytest
from amcraft import (
    COUNTER,
    DEL,
    FLOAT,
    MAKE_LIST,
    MAKE_MAP,
    SET,
    UINT,
    CraftedFeed,
    CraftedOp,
    change_chunk,
    change_hash,
    int_value,
    sleb,
    str_value,
    uleb,
)
from automerge.core import Document
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2paid.automerge.chunk import parse_change
from p2paid.automerge.docchunk import encode_document, inspect_document
from p2paid.automerge.feedproof import FeedProof, _OpColumns, prove_feed
from p2paid.automerge.rules import AuthorState, FeedRules
from p2paid.board.checkpoint import check_checkpoint, seal_feed_checkpoint
from p2paid.board.document import BoardDocument, SectionWriter
from p2paid.board.model import ItemKind, item_fields, now_ms
from p2paid.core.checkpoint import MAX_CHECKPOINT_OPS, seal_checkpoint
from p2paid.core.envelope import ZERO_HASH, Envelope, seal_envelope
from p2paid.core.identity import AuthorKey
from p2paid.core.invite import derive_board_keys, new_board_secret
from p2paid.errors import ChangeMismatchError, CheckpointMismatchError, EnvelopeError

ACTOR = bytes(range(32))
KEYS = ("a", "b", "z", "Z", "é", "ä", "😀", "title", "x" * 64)


def chunks_of(changes: Sequence[Sequence[CraftedOp]], actor: bytes = ACTOR) -> list[bytes]:
    """Change chunks of one author's feed, each depending on the one before."""
    out: list[bytes] = []
    start, last = 1, b""
    for seq, ops in enumerate(changes, start=1):
        chunk = change_chunk(actor=actor, seq=seq, start_op=start, ops=ops,
                             deps=[last] if last else [], time=1_700_000_000_000 + seq)
        out.append(chunk)
        start += len(ops)
        last = change_hash(chunk)
    return out


def one_by_one(chunks: Sequence[bytes]) -> AuthorState | EnvelopeError:
    """The rules' verdict, change by change, as for envelopes."""
    rules = FeedRules(load=lambda _a: AuthorState(), has_history=lambda _a: False)
    try:
        for chunk in chunks:
            header = parse_change(chunk)
            if header.other_actors:
                return ChangeMismatchError("other actors")
            rules.check(header)
    except EnvelopeError as exc:
        return exc
    return rules.state(ACTOR)


def prove(content: bytes, changes: int, max_op: int, actor: bytes = ACTOR) -> FeedProof | None:
    chunk = inspect_document(content, 64 << 20)
    return prove_feed(chunk.change_columns, chunk.op_columns, author=actor, changes=changes,
                      max_op=max_op)


def saved(chunks: Sequence[bytes]) -> bytes | None:
    """Automerge's saved document of ``chunks`` (None if it will not hold them)."""
    try:
        return bytes(Document.load(b"".join(chunks)).save())
    except BaseException as exc:  # (pyo3's PanicException is a BaseException)
        if isinstance(exc, KeyboardInterrupt):
            raise
        return None


# ---------------------------------------------------------------- histories

FLAWS = ("no-pred", "extra-pred", "root", "counter", "float", "uint", "map-overwritten",
         "delete-nothing", "insert", "list", "not-a-map", "empty-key", "long-key")


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[list[CraftedOp]], bool]:
    """A feed of map ops (puts, new maps, overwrites, deletes), each change honest or,
    sometimes, with one flaw the rules refuse; and whether it is all honest."""
    maps = [1]
    slots: dict[tuple[int, str], tuple[int, bool]] = {}
    counter = 1
    changes: list[list[CraftedOp]] = [[CraftedOp(MAKE_MAP, None, ACTOR.hex())]]
    honest = True
    for _ in range(draw(st.integers(1, 6))):
        ops: list[CraftedOp] = []
        for _ in range(draw(st.integers(1, 4))):
            counter += 1
            target = draw(st.sampled_from(maps))
            key = draw(st.sampled_from(KEYS))
            current = slots.get((target, key))
            while current is not None and current[1]:
                key = f"{key[:56]}-{counter}"  # (honest ops never land on a map)
                current = slots.get((target, key))
            pred = () if current is None else ((0, current[0]),)
            kind = draw(st.sampled_from(("int", "str", "map", "delete") if current
                                        else ("int", "str", "map")))
            flaw = draw(st.sampled_from(FLAWS)) if draw(st.integers(0, 9)) == 0 else None
            if flaw is not None:
                honest = False
                ops.append(_flawed(flaw, target, key, pred, slots, maps))
                continue
            if kind == "delete":
                ops.append(CraftedOp(DEL, (0, target), key, preds=pred))
                del slots[(target, key)]
                continue
            value = {"int": int_value(draw(st.integers(-2**40, 2**40))),
                     "str": str_value(draw(st.text(max_size=12))),
                     "map": (0, b"")}[kind]
            ops.append(CraftedOp(MAKE_MAP if kind == "map" else SET, (0, target), key, value,
                                 preds=pred))
            slots[(target, key)] = (counter, kind == "map")
            if kind == "map":
                maps.append(counter)
        changes.append(ops)
    return changes, honest


def _flawed(flaw: str, target: int, key: str, pred: tuple[tuple[int, int], ...],
            slots: dict[tuple[int, str], tuple[int, bool]], maps: list[int]) -> CraftedOp:
    """One op the rules refuse (the model's state is left as it was)."""
    obj = (0, target)
    if flaw == "no-pred" and pred:
        return CraftedOp(SET, obj, key, int_value(1))
    if flaw == "extra-pred":
        return CraftedOp(SET, obj, key, int_value(1), preds=((0, 1), *pred))
    if flaw == "root":
        return CraftedOp(SET, None, "someone", int_value(1))
    if flaw == "counter":
        return CraftedOp(SET, obj, key, (COUNTER, int_value(1)[1]), preds=pred)
    if flaw == "float":
        return CraftedOp(SET, obj, key, (FLOAT, bytes(8)), preds=pred)
    if flaw == "uint":
        return CraftedOp(SET, obj, key, (UINT, uleb(5)), preds=pred)
    if flaw == "map-overwritten":
        made = [(k, v) for k, v in slots.items() if v[1]]
        if made:
            (m, k), (c, _) = made[0]
            return CraftedOp(SET, (0, m), k, int_value(1), preds=((0, c),))
        return CraftedOp(SET, (0, 1), ACTOR.hex(), int_value(1))
    if flaw == "delete-nothing":
        return CraftedOp(DEL, obj, key + "?")
    if flaw == "insert":
        return CraftedOp(SET, obj, key, int_value(1), preds=pred, insert=True)
    if flaw == "list":
        return CraftedOp(MAKE_LIST, obj, key, preds=pred)
    if flaw == "not-a-map":
        return CraftedOp(SET, (0, max(maps) + 1000), key, int_value(1))
    if flaw == "empty-key":
        return CraftedOp(SET, obj, "", int_value(1))
    return CraftedOp(SET, obj, "k" * 65, int_value(1))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories())
def test_the_proof_never_accepts_what_the_rules_refuse(history: tuple[list[list[CraftedOp]],
                                                                      bool]) -> None:
    changes, honest = history
    chunks = chunks_of(changes)
    content = saved(chunks)
    if content is None:
        assert not honest, "Automerge refused an honest feed"
        return
    if inspect_document(content, 64 << 20).heads != (change_hash(chunks[-1]),):
        assert not honest
        return  # (Automerge could not save this history as it was signed)
    verdict = one_by_one(chunks)
    last = parse_change(chunks[-1])
    try:
        proof = prove(content, len(chunks), last.max_op)
    except ChangeMismatchError:
        assert not honest
        return
    if honest:
        assert isinstance(verdict, AuthorState), verdict
        assert proof is not None, "an honest feed took the slow road"
    if proof is not None:
        assert isinstance(verdict, AuthorState), f"proved a feed the rules refuse: {verdict}"
        state = proof.state(last.hash)
        assert (state.seq, state.last_hash, state.max_op) == (
            verdict.seq, verdict.last_hash, verdict.max_op)
        assert state.maps == verdict.maps
        assert state.slots == verdict.slots


def _put(writer: SectionWriter, *, item: str, fields: dict[str, str | int | None]) -> None:
    writer.put_item(ItemKind.NEED, item, fields)


def _update(writer: SectionWriter, *, item: str, fields: dict[str, str | int | None]) -> None:
    writer.update_item(ItemKind.NEED, item, fields)


def test_a_members_real_feed_is_proved() -> None:
    """A node's own writes (posts, edits, removed fields) take the fast road."""
    key = AuthorKey.generate()
    doc = BoardDocument(key.public)
    items = []
    for i in range(30):
        item = f"{i:032x}"
        items.append(item)
        fields = item_fields(ItemKind.NEED, f"need {i} ünïcode", now=now_ms(),
                             category="water", quantity=i + 1, unit="litres")
        doc.write(partial(_put, item=item, fields=fields))
    for i in range(0, 30, 3):
        doc.write(partial(_update, item=items[i], fields={"title": f"edited {i}"}))
    for i in range(1, 30, 7):
        doc.write(partial(_update, item=items[i], fields={"unit": None}))
    changes = [bytes(c.bytes) for c in doc.automerge.get_changes([])]
    assert any(parse_change(c).ops and any(op.action == DEL for op in parse_change(c).ops)
               for c in changes), "the feed should hold deletes"
    content = bytes(Document.load(b"".join(changes)).save())
    last = parse_change(changes[-1])
    proof = prove(content, len(changes), last.max_op, bytes(key.public))
    assert proof is not None
    verdict = FeedRules(load=lambda _a: AuthorState(), has_history=lambda _a: False)
    for c in changes:
        verdict.check(parse_change(c))
    assert proof.state(last.hash).slots == verdict.state(bytes(key.public)).slots


# ---------------------------------------------------------------- hostile columns


def honest_feed() -> tuple[list[bytes], bytes]:
    ops: list[list[CraftedOp]] = [[CraftedOp(MAKE_MAP, None, ACTOR.hex()),
                                   CraftedOp(MAKE_MAP, (0, 1), "needs")]]
    for i in range(5):
        base = 3 + 3 * i
        ops.append([CraftedOp(MAKE_MAP, (0, 2), f"{i:032x}"),
                    CraftedOp(SET, (0, base), "title", str_value(f"need {i}")),
                    CraftedOp(SET, (0, base), "quantity", int_value(i))])
    chunks = chunks_of(ops)
    content = saved(chunks)
    assert content is not None
    return chunks, content


def rebuilt(content: bytes, *, changes: dict[int, bytes] | None = None,
            ops: dict[int, bytes] | None = None) -> bytes:
    """``content`` with some columns replaced (by spec, deflate bit cleared)."""
    chunk = inspect_document(content, 64 << 20)
    def swap(columns: Sequence[tuple[int, bytes]], new: dict[int, bytes] | None
             ) -> list[tuple[int, bytes]]:
        out = {spec & ~0x08: data for spec, data in columns}
        out.update(new or {})
        return sorted((spec, data) for spec, data in out.items() if data)
    return encode_document(chunk.actors, chunk.heads, swap(chunk.change_columns, changes),
                           swap(chunk.op_columns, ops))


def test_rebuilt_columns_load_and_prove_as_before() -> None:
    chunks, content = honest_feed()
    again = rebuilt(content)
    assert {bytes(h) for h in Document.load(again).get_heads()} == {change_hash(chunks[-1])}
    assert prove(again, len(chunks), parse_change(chunks[-1]).max_op) is not None


@pytest.mark.parametrize("ops, changes", [
    ({0x23: sleb(2**40) + sleb(1)}, None),             # op ids: a run of 2^40 rows
    ({0x42: sleb(2**40) + uleb(1)}, None),             # actions: more rows than ops
    ({0x56: sleb(0) + uleb(2**40)}, None),             # value metadata: 2^40 nulls
    ({0x80: sleb(17) + uleb(2**30)}, None),            # successors: 2^30 each
    (None, {0x03: sleb(2**40) + sleb(1)}),             # change seq: 2^40 rows
    (None, {0x43: sleb(2**40) + sleb(1)}),             # deps: more rows than deps
    ({0x23: sleb(-2) + sleb(1) + bytes([0x81])}, None),  # a number cut short
    ({0x94: uleb(17)}, None),                          # a column of lists or text
])
def test_columns_describing_other_rows_are_refused(ops: dict[int, bytes] | None,
                                                   changes: dict[int, bytes] | None) -> None:
    chunks, content = honest_feed()
    with pytest.raises(ChangeMismatchError):
        prove(rebuilt(content, ops=ops, changes=changes), len(chunks),
              parse_change(chunks[-1]).max_op)


def _encode_ops(cols: _OpColumns, raw: Sequence[bytes]) -> dict[int, bytes]:
    """Op columns encoded again from decoded lists (as Automerge writes them)."""
    from amcraft import _booleans, _delta, _rle

    def ints(values: Sequence[int | None]) -> bytes:
        return _rle([None if v is None else uleb(v) for v in values])

    def strs(values: Sequence[str | None]) -> bytes:
        return _rle([None if v is None else uleb(len(v.encode())) + v.encode()
                     for v in values])

    return {0x01: ints(cols.obj_actors), 0x02: ints(cols.objs), 0x15: strs(cols.keys),
            0x21: ints(cols.id_actors), 0x23: _delta(cols.ids),
            0x34: _booleans([False] * cols.n), 0x42: ints(cols.actions),
            0x56: ints(cols.metas), 0x57: b"".join(raw), 0x80: ints(cols.succ_groups)}


def test_ops_out_of_automerges_order_are_refused() -> None:
    """Content whose ops are not sorted by object, key and counter would load into a
    broken document (lookups assume the order): refused before Automerge loads it."""
    chunks, content = honest_feed()
    chunk = inspect_document(content, 64 << 20)
    op_columns = {spec & ~0x08: data for spec, data in chunk.op_columns}
    max_op = parse_change(chunks[-1]).max_op
    cols = _OpColumns(op_columns, max_op)
    raw, pos = [], 0
    for meta in cols.metas:
        raw.append(op_columns.get(0x57, b"")[pos:pos + (meta >> 4)])
        pos += meta >> 4
    assert prove(rebuilt(content, ops=_encode_ops(cols, raw)), len(chunks), max_op)
    names = ("obj_actors", "objs", "keys", "id_actors", "ids", "actions", "metas",
             "succ_groups")
    for i in range(cols.n - 1):
        swapped = _OpColumns(op_columns, max_op)
        order = list(range(cols.n))
        order[i], order[i + 1] = order[i + 1], order[i]
        for name in names:
            column = getattr(swapped, name)
            setattr(swapped, name, [column[j] for j in order])
        with pytest.raises(ChangeMismatchError, match="order"):
            prove(rebuilt(content, ops=_encode_ops(swapped, [raw[j] for j in order])),
                  len(chunks), max_op)


def test_too_many_ops_are_refused_before_the_content_is_read() -> None:
    keys = derive_board_keys(new_board_secret())
    key = AuthorKey.generate()
    feed = CraftedFeed(keys.board_id, keys.content_key, key)
    first = feed.chunk(feed.first())
    feed.seal(first)
    head = Envelope.decode(feed.seal(feed.chunk(
        [CraftedOp(SET, (0, 1), "v", int_value(2), preds=((0, 2),))],
        start_op=MAX_CHECKPOINT_OPS + 2)))
    content = bytes(Document.load(first).save())
    cp = seal_checkpoint(cipher=feed.cipher, author_key=key, head=head, content=content)
    with pytest.raises(CheckpointMismatchError, match="ops"):
        check_checkpoint(cp, feed.cipher)


def test_a_checkpoint_checked_on_the_fast_road_reads_its_changes_back() -> None:
    """A checkpoint proved from its columns still gives its changes when a board that
    holds other feeds must apply them (read back from the document)."""
    keys = derive_board_keys(new_board_secret())
    key = AuthorKey.generate()
    cipher = ChaCha20Poly1305(keys.content_key)
    doc = BoardDocument(key.public)
    envelopes: list[Envelope] = []
    for i in range(5):
        fields = item_fields(ItemKind.NEED, f"need {i}", now=now_ms())
        written = doc.write(partial(_put, item=f"{i:032x}", fields=fields))
        assert written is not None
        envelopes.append(seal_envelope(
            board_id=keys.board_id, cipher=cipher, author_key=key, seq=i + 1,
            prev=envelopes[-1].hash if envelopes else ZERO_HASH, change=written[1]))
    cp = seal_feed_checkpoint(cipher=cipher, author_key=key, head=envelopes[-1],
                              own=doc.automerge)
    checked = check_checkpoint(cp, cipher)
    assert [h.seq for h, _ in checked.changes()] == [1, 2, 3, 4, 5]
    assert checked.state().seq == 5


def test_two_byte_numbers_decode_as_the_strict_readers_do() -> None:
    """The shortcut for two-byte numbers agrees with the strict LEB128 readers on every
    two-byte token (value, or refusal of a number that is not minimal)."""
    from p2paid.automerge.chunk import _sleb, _uleb
    from p2paid.automerge.feedproof import _Numbers

    for signed, read in ((True, _sleb), (False, _uleb)):
        for low in range(0x80, 0x100):
            for high in range(0x80):
                token = bytes([low, high])
                try:
                    expected: int | str = read(token, 0)[0]
                except ChangeMismatchError:
                    expected = "refused"
                try:
                    got: int | str = _Numbers(signed)[token]
                except ChangeMismatchError:
                    got = "refused"
                assert got == expected, (token, signed)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_altered_columns_raise_only_the_documents_error(data: st.DataObject) -> None:
    """Bytes of any column flipped, cut or replaced: the reader refuses with a
    ChangeMismatchError, proves nothing it should not, and never fails otherwise."""
    chunks, content = honest_feed()
    chunk = inspect_document(content, 64 << 20)
    group = data.draw(st.sampled_from(("changes", "ops")))
    columns = [(spec & ~0x08, d) for spec, d in (chunk.change_columns if group == "changes"
                                                 else chunk.op_columns)]
    index = data.draw(st.integers(0, len(columns) - 1))
    spec, column = columns[index]
    how = data.draw(st.sampled_from(("flip", "cut", "replace", "spec")))
    if how == "flip" and column:
        at = data.draw(st.integers(0, len(column) - 1))
        flipped = column[at] ^ data.draw(st.integers(1, 255))
        column = column[:at] + bytes([flipped]) + column[at + 1:]
    elif how == "cut":
        column = column[:data.draw(st.integers(0, len(column)))]
    elif how == "replace":
        column = data.draw(st.binary(max_size=40))
    else:
        spec = data.draw(st.integers(0, 0x1FF))
    columns[index] = (spec, column)
    columns.sort()
    altered = encode_document(
        chunk.actors, chunk.heads,
        columns if group == "changes" else list(chunk.change_columns),
        columns if group == "ops" else list(chunk.op_columns))
    verdict = one_by_one(chunks)
    assert isinstance(verdict, AuthorState)
    try:
        proof = prove(altered, len(chunks), parse_change(chunks[-1]).max_op)
    except ChangeMismatchError:
        return
    if proof is None:
        return
    # A proof of content Automerge loads with the signed heads is a proof of the signed
    # feed itself (the hashes bind it): the same state as the rules reach.
    try:
        heads = {bytes(h) for h in Document.load(altered).get_heads()}
    except BaseException as exc:  # (pyo3's PanicException is a BaseException)
        if isinstance(exc, KeyboardInterrupt):
            raise
        return
    if heads == {change_hash(chunks[-1])}:
        state = proof.state(verdict.last_hash)
        assert (state.maps, state.slots, state.max_op) == (
            verdict.maps, verdict.slots, verdict.max_op)
