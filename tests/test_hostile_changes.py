"""A hostile member's hand-built changes against every other member (issue 7).

Member B holds the invite and its own author key, so it can sign anything as the
next envelope of its own feed. It builds changes byte by byte (``amcraft``), always
obeying the own-feed rule (seq 1 has no deps and starts at op 1; seq s depends on
exactly its seq s-1 and starts after it), so that what is refused is refused for
its ops alone. Each test performs one attack the way B would and asserts what must
hold: no reader crashes, A's and C's data stay intact and writable, and every
honest replica refuses the same thing (so they converge).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from amcraft import (
    BYTES,
    COUNTER,
    DEL,
    FALSE,
    FLOAT,
    INC,
    MAKE_LIST,
    MAKE_MAP,
    MAKE_TABLE,
    MAKE_TEXT,
    MARK,
    SET,
    TIMESTAMP,
    TRUE,
    UINT,
    CraftedFeed,
    CraftedOp,
    int_value,
    null_value,
    sleb,
    str_value,
    uleb,
)
from automerge.core import Document

import p2paid
from p2paid import Board, Store
from p2paid.automerge.chunk import parse_change
from p2paid.automerge.rules import MAX_OP_COUNTER, AuthorState, FeedRules
from p2paid.board.document import receive_changes
from p2paid.board.log import MAX_HELD_BYTES, MAX_HELD_BYTES_PER_AUTHOR
from p2paid.core.envelope import Envelope, open_envelope, seal_envelope
from p2paid.core.identity import AuthorKey
from p2paid.errors import (
    ChangeMismatchError,
    DependencyError,
    EnvelopeError,
    ForbiddenOpError,
    OwnershipError,
)

NOW = 1_900_000_000_000


@dataclass
class World:
    """A (posted a need), C (posted an offer) and the attacker B, on one board."""

    root: Path
    stores: dict[str, Store]
    b: CraftedFeed
    need_id: str

    def board(self, name: str) -> Board:
        return self.stores[name].board()

    @property
    def honest(self) -> list[Board]:
        return [self.board("a"), self.board("c")]

    def offer(self, raws: list[bytes]) -> list[p2paid.ReceiveReport]:
        return [board.receive(raws) for board in self.honest]

    def reopen(self, name: str) -> Board:
        self.stores[name].close()
        self.stores[name] = p2paid.open_store(self.root / name, create=False)
        return self.board(name)

    def sync(self) -> None:
        everything = sorted({raw for board in self.honest for raw in board.envelopes()})
        for board in self.honest:
            board.receive(everything)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    stores = {n: p2paid.open_store(tmp_path / n) for n in "abc"}
    try:
        a = stores["a"].create_board("Riverside", display_name="Ana")
        need = a.post_need("Drinking water", quantity=40, unit="litres")
        c = stores["c"].join(a.invite(), display_name="Cy")
        c.post_offer("Van with driver")
        b = stores["b"].join(a.invite())  # only for B's author key
        feed = CraftedFeed(b.id, b.keys.content_key, AuthorKey(b._author_key.private_bytes()))
        w = World(tmp_path, stores, feed, need.id)
        w.sync()
        yield w
    finally:
        for store in stores.values():
            store.close()


def b_starts(w: World) -> None:
    """B's honest first change (its section and needs map), accepted everywhere."""
    raw = w.b.seal(w.b.chunk(w.b.first()))
    for report in w.offer([raw]):
        assert report.accepted == 1 and not report.rejected


def refused_as(reports: list[p2paid.ReceiveReport], error: type[EnvelopeError]) -> None:
    for report in reports:
        assert report.accepted == 0
        assert [type(r.error) for r in report.rejected] == [error], report.rejected


def assert_intact(w: World) -> None:
    """A's need and C's offer on both honest replicas, readable, savable, writable."""
    for board in w.honest:
        titles = {i.title for i in board.items()}
        assert {"Drinking water", "Van with driver"} <= titles
        assert board.get(w.need_id[:8]).quantity == 40
        saved = board.export_automerge()
        assert sorted(bytes(h) for h in Document.load(saved).get_heads()) == \
            board.document.heads()
    w.board("a").post_need("Blankets", quantity=5)
    w.board("c").post_offer("Tea")
    w.sync()
    for board in w.honest:
        assert {"Blankets", "Tea"} <= {i.title for i in board.items()}
    assert [i.to_json(NOW) for i in w.board("a").items()] == \
        [i.to_json(NOW) for i in w.board("c").items()]


# --------------------------------------------------------------------- finding 1: value types

VALUE_ATTACKS = {
    "counter": (COUNTER, sleb(5)),
    "uint": (UINT, uleb(5)),
    "float": (FLOAT, bytes(8)),
    "bytes": (BYTES, b"ab"),
    "timestamp": (TIMESTAMP, sleb(5)),
    "true": (TRUE, b""),
    "false": (FALSE, b""),
    "type-10": (10, b"ab"),
    "type-13": (13, b""),
    "type-15": (15, b"\x00"),
    "null": null_value(),
}


@pytest.mark.parametrize("where", ["in-a-need", "in-the-section"])
@pytest.mark.parametrize("name", list(VALUE_ATTACKS))
def test_values_the_schema_does_not_use_are_refused(world: World, name: str, where: str
                                                    ) -> None:
    """A Counter (which crashes the binding), an unknown type code 10-15 (which panics
    on read) or any other type the schema does not use, in a need or at the section's
    own keys: refused by every member before it is applied (ForbiddenOpError); nothing
    of it is stored, and every reader and writer keeps working."""
    w = world
    b_starts(w)
    value = VALUE_ATTACKS[name]
    if where == "in-a-need":
        ops = w.b.need_ops(os.urandom(16).hex(), "B's need", now=NOW,
                           extra=[("quantity", value)])
    else:
        ops = [CraftedOp(SET, (0, w.b.SECTION), "x", value)]
    raw = w.b.seal(w.b.chunk(ops))
    refused_as(w.offer([raw]), ForbiddenOpError)
    for board in w.honest:
        assert board.version_vector()[w.b.actor] == 1
    assert_intact(w)


@pytest.mark.parametrize("name", ["counter", "type-10"])
def test_cli_survives_the_values_that_used_to_brick_a_board(world: World, name: str) -> None:
    """The commands the audit saw die with "PanicException: not yet implemented" all
    work after B sent such a change: list, show, export, board list, claim."""
    w = world
    b_starts(w)
    ops = w.b.need_ops(os.urandom(16).hex(), "B's need", now=NOW,
                       extra=[("quantity", VALUE_ATTACKS[name])])
    w.offer([w.b.seal(w.b.chunk(ops))])
    w.stores["a"].close()
    data_dir = str(w.root / "a")
    try:
        for args in (["list"], ["show", w.need_id[:8]], ["export", "--format", "json"],
                     ["export", "--format", "csv"], ["board", "list"]):
            run = subprocess.run([sys.executable, "-m", "p2paid", "--data-dir", data_dir,
                                  *args], capture_output=True, text=True, timeout=60)
            assert run.returncode == 0, (args, run.stderr)
            assert "Traceback" not in run.stderr and "Panic" not in run.stderr
        with p2paid.open_store(w.root / "c") as c_again:
            offer = next(i for i in c_again.board().items() if i.title == "Van with driver")
        run = subprocess.run([sys.executable, "-m", "p2paid", "--data-dir", data_dir, "claim",
                              offer.id[:8]], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
    finally:
        w.stores["a"] = p2paid.open_store(w.root / "a")


@pytest.mark.parametrize("action", [INC, MAKE_LIST, MAKE_TEXT, MAKE_TABLE, MARK, 99])
def test_actions_the_schema_does_not_use_are_refused(world: World, action: int) -> None:
    """Increment, lists, text, tables, marks or an unknown action code."""
    w = world
    b_starts(w)
    value = int_value(1) if action == INC else null_value()
    raw = w.b.seal(w.b.chunk([CraftedOp(action, (0, w.b.SECTION), "x", value)]))
    refused_as(w.offer([raw]), ForbiddenOpError)
    assert_intact(w)


def test_list_style_ops_are_refused_before_anything_else(world: World) -> None:
    """An insert, or an op keyed by a list element, in a map: the parser refuses the
    columns such ops need (ChangeMismatchError)."""
    w = world
    b_starts(w)
    inserted = CraftedOp(SET, (0, w.b.SECTION), "x", int_value(1), insert=True)
    refused_as(w.offer([w.b.seal(w.b.chunk([inserted]), advance=False)]), ForbiddenOpError)
    element = CraftedOp(SET, (0, w.b.SECTION), (0, 2), int_value(1))
    refused_as(w.offer([w.b.seal(w.b.chunk([element]), advance=False)]), ChangeMismatchError)
    assert_intact(w)


OBJECT_ATTACKS = {
    "unknown object": CraftedOp(SET, (0, 99), "x", int_value(1)),
    "a scalar as object": CraftedOp(SET, (0, 2), "x", int_value(1)),  # op 2 put "v"
    "the root map": CraftedOp(SET, None, "x", int_value(1)),
    "empty key": CraftedOp(SET, (0, 1), "", int_value(1)),
    "key of 65 characters": CraftedOp(SET, (0, 1), "k" * 65, int_value(1)),
    "overwrite without pred": CraftedOp(SET, (0, 1), "v", int_value(2)),
    "pred of another key": CraftedOp(SET, (0, 1), "w", int_value(2), preds=[(0, 2)]),
    "pred in the future": CraftedOp(SET, (0, 1), "v", int_value(2), preds=[(0, 9)]),
    "pred that never was": CraftedOp(SET, (0, 1), "v", int_value(2), preds=[(0, 50)]),
    "two preds": CraftedOp(SET, (0, 1), "v", int_value(2), preds=[(0, 2), (0, 3)]),
    "delete without pred": CraftedOp(DEL, (0, 1), "v"),
    "delete of a missing key": CraftedOp(DEL, (0, 1), "nope", preds=[(0, 2)]),
    "overwrite a map": CraftedOp(SET, (0, 1), "needs", int_value(1), preds=[(0, 3)]),
    "delete a map": CraftedOp(DEL, (0, 1), "needs", preds=[(0, 3)]),
    "make a map over a map": CraftedOp(MAKE_MAP, (0, 1), "needs", preds=[(0, 3)]),
}


@pytest.mark.parametrize("name", list(OBJECT_ATTACKS))
def test_ops_must_target_own_maps_with_exact_predecessors(world: World, name: str) -> None:
    """Ops on objects B never made, or whose preds are not exactly the op they
    overwrite: Automerge panics on some (an unknown object), and others make every
    later save unloadable; all are refused."""
    w = world
    b_starts(w)
    raw = w.b.seal(w.b.chunk([OBJECT_ATTACKS[name]]))
    refused_as(w.offer([raw]), ForbiddenOpError)
    assert_intact(w)


def test_valid_overwrites_and_deletes_are_accepted(world: World) -> None:
    """The positive control of the test above: exact preds pass, on every replica."""
    w = world
    b_starts(w)
    ops = [CraftedOp(SET, (0, 1), "v", int_value(2), preds=[(0, 2)]),
           CraftedOp(SET, (0, 1), "note", str_value("hello")),
           CraftedOp(DEL, (0, 1), "note", preds=[(0, 5)])]
    raw = w.b.seal(w.b.chunk(ops))
    for report in w.offer([raw]):
        assert report.accepted == 1 and not report.rejected
    need = w.b.need_ops(os.urandom(16).hex(), "B needs soap", now=NOW)
    for report in w.offer([w.b.seal(w.b.chunk(need))]):
        assert report.accepted == 1
    for board in w.honest:
        assert "B needs soap" in {i.title for i in board.items()}
    assert_intact(w)


def test_a_panic_on_the_read_path_costs_one_entry(world: World) -> None:
    """Second line of defence: a value that makes the binding panic when read, placed
    in the document behind the checks' back, is one invalid entry; the rest of the
    board reads, lists and saves."""
    w = world
    b_starts(w)
    a = w.board("a")
    ops = w.b.need_ops(os.urandom(16).hex(), "B's need", now=NOW,
                       extra=[("quantity", VALUE_ATTACKS["type-10"])])
    chunk = w.b.chunk(ops)
    doc = a.document
    doc.merge_local()
    assert receive_changes(doc.automerge, [chunk])  # straight into Automerge
    doc.view.remote_changes(w.b.actor, None, False)
    titles = {i.title for i in a.items()}
    assert "Drinking water" in titles and "B's need" not in titles
    assert len(a.document.save()) > 0


# --------------------------------------------------------------------- finding 2: op counters


@pytest.mark.parametrize("start_op", [2**32 - 2, 2**31, 2, 1, 5])
def test_start_op_must_be_exactly_after_the_previous_change(world: World, start_op: int
                                                            ) -> None:
    """B's seq 2 at start_op 2^32 - 2 (every later post by anyone aborted the process),
    or below its previous change's max op (every save became unloadable), or one past
    where it should: refused; the board stays writable, savable and loadable."""
    w = world
    b_starts(w)  # B's seq 1 ends at op 3, so seq 2 must start at op 4
    raw = w.b.seal(w.b.chunk([CraftedOp(SET, (0, 1), "x", int_value(1))],
                             start_op=start_op))
    refused_as(w.offer([raw]), DependencyError)
    assert_intact(w)
    for name in "ac":
        w.reopen(name)
    assert_intact(w)


def test_op_counters_stay_below_the_cap() -> None:
    """A feed that has legitimately reached the cap cannot go past it."""
    author = os.urandom(32)
    state = AuthorState(seq=1, last_hash=b"h" * 32, max_op=MAX_OP_COUNTER - 1, maps={1})
    rules = FeedRules(lambda _a: state, lambda _a: True)
    ops = [CraftedOp(SET, (0, 1), f"k{i}", int_value(i)) for i in range(3)]
    from amcraft import change_chunk

    chunk = change_chunk(actor=author, seq=2, start_op=MAX_OP_COUNTER, ops=ops,
                         deps=[b"h" * 32])
    with pytest.raises(DependencyError, match="beyond"):
        rules.check(parse_change(chunk))


DEPENDENCY_ATTACKS = ["another member's head", "no deps", "own and another's", "unknown hash"]


@pytest.mark.parametrize("name", DEPENDENCY_ATTACKS)
def test_a_change_depends_on_exactly_its_authors_previous_change(world: World, name: str
                                                                 ) -> None:
    """Depending on another member's change is what let one member's fork strand
    others; depending on nothing, or on a hash nobody has, is just as refused."""
    w = world
    b_starts(w)
    a = w.board("a")
    a_first = next(e for e in map(Envelope.decode, a.envelopes()) if e.author == a.author)
    a_head = parse_change(open_envelope(a_first, a._cipher)).hash
    deps = {"another member's head": [a_head], "no deps": [],
            "own and another's": sorted([w.b.last_hash, a_head]),
            "unknown hash": [os.urandom(32)]}[name]
    raw = w.b.seal(w.b.chunk([CraftedOp(SET, (0, 1), "x", int_value(1))], deps=deps))
    refused_as(w.offer([raw]), DependencyError)
    assert_intact(w)


def test_a_first_change_must_create_the_section_and_depend_on_nothing(world: World) -> None:
    w = world
    bad_first = [CraftedOp(MAKE_MAP, None, "someone-else"),
                 CraftedOp(SET, (0, 1), "v", int_value(1))]
    refused_as(w.offer([w.b.seal(w.b.chunk(bad_first), advance=False)]), ForbiddenOpError)
    with_deps = w.b.chunk(w.b.first(), deps=[os.urandom(32)])
    refused_as(w.offer([w.b.seal(with_deps, advance=False)]), DependencyError)
    assert_intact(w)


# --------------------------------------------------------------------- finding 3: re-sealing


def test_a_resealed_change_does_not_poison_its_author(world: World, tmp_path: Path) -> None:
    """B puts C's head change (bytes copied) inside B's own envelope. It is refused as
    a mismatch, and what the refusal remembers is B's envelope only: C's change, and
    everything that depends on it, is still accepted, by A and by a newcomer D who
    gets everything from a blind carrier (as a relay would carry it). After a full sync
    and a reopen, A and C see each other's posts."""
    w = world
    c_board = w.board("c")
    c_post = c_board.post_need("Insulin, cold chain")
    c_env = Envelope.decode(max(c_board.envelopes(), key=lambda r: Envelope.decode(r).seq
                                if Envelope.decode(r).author == c_board.author else 0))
    c_change = open_envelope(c_env, c_board._cipher)
    b_starts(w)
    stolen = w.b.seal(c_change, advance=False)
    a = w.board("a")
    refused_as([a.receive([stolen])], ChangeMismatchError)
    refused_as([c_board.receive([stolen])], ChangeMismatchError)
    # C's honest change arrives at A only now, and C goes on writing
    c_board.post_offer("Blankets, 20")
    w.sync()
    for name in "ac":
        w.reopen(name)
    w.sync()
    for board in w.honest:
        titles = {i.title for i in board.items()}
        assert {"Insulin, cold chain", "Blankets, 20", "Drinking water"} <= titles
        assert board.get(c_post.id[:8]).title == "Insulin, cold chain"
    a = w.board("a")
    rows = w.stores["a"]._db.rejections(a.id)
    assert {(author, code) for author, _, code, _ in rows} == {(w.b.actor, "change-mismatch")}
    # a blind carrier stores B's envelope (it cannot read it) and passes it on
    bundle = tmp_path / "all.p2paid"
    with p2paid.open_store(tmp_path / "carrier") as carrier:
        a.receive([stolen])
        from p2paid.board.bundle import write_bundle

        write_bundle(bundle, [*a.envelopes(), stolen])
        assert carrier.import_bundle(bundle).rejected == 0
        carrier.export_bundle(bundle)
    with p2paid.open_store(tmp_path / "d") as d_store:
        d = d_store.join(a.invite())
        d_store.import_bundle(bundle)
        assert {i.title for i in d.items()} == {i.title for i in w.board("a").items()}


# --------------------------------------------------------------------- finding 5: forks


def _versions(w: World) -> tuple[bytes, bytes]:
    """Two validly signed versions of B's seq 2."""
    b_starts(w)
    v1 = w.b.seal(w.b.chunk(w.b.need_ops("1" * 32, "B's first story", now=NOW)),
                  advance=False)
    v2 = w.b.seal(w.b.chunk(w.b.need_ops("2" * 32, "B's second story", now=NOW)),
                  advance=False)
    return v1, v2


@pytest.mark.parametrize("order", ["A-first", "C-first"])
def test_a_fork_never_strands_other_members(world: World, order: str) -> None:
    """B gives version 1 of seq 2 to A and version 2 to C; A and C keep posting. After
    A's and C's envelopes are exchanged (in either order), both see each other's posts,
    both end B's feed before seq 2 (whichever version each saw), and they converge."""
    w = world
    v1, v2 = _versions(w)
    a, c = w.board("a"), w.board("c")
    assert a.receive([v1]).accepted == 1
    assert c.receive([v2]).accepted == 1
    a.post_need("Posted by A after the fork")
    c.post_need("Posted by C after the fork")
    a_all, c_all = list(a.envelopes()), list(c.envelopes())
    pairs = [(a, c_all), (c, a_all)] if order == "A-first" else [(c, a_all), (a, c_all)]
    for board, raws in pairs:
        board.receive(raws)
    w.sync()
    for board in (a, c):
        titles = {i.title for i in board.items()}
        assert {"Posted by A after the fork", "Posted by C after the fork"} <= titles
        assert not titles & {"B's first story", "B's second story"}
        assert board.forked == {w.b.actor: 2}
        assert board.version_vector()[w.b.actor] == 1
    assert [i.to_json(NOW) for i in a.items()] == [i.to_json(NOW) for i in c.items()]
    assert a.document.heads() == c.document.heads()
    for name in "ac":
        w.reopen(name)
    assert w.board("a").forked == {w.b.actor: 2} == w.board("c").forked
    assert_intact(w)


def test_a_forked_author_cannot_post_again(world: World) -> None:
    w = world
    v1, v2 = _versions(w)
    w.board("a").receive([v1, v2])
    w.b.seal(w.b.chunk(w.b.need_ops("1" * 32, "B's first story", now=NOW)))  # v1 "wins"
    later = w.b.seal(w.b.chunk([CraftedOp(SET, (0, 1), "x", int_value(1))]))
    report = w.board("a").receive([later])
    assert [r.error.code for r in report.rejected] == ["forked"]


def test_fork_evidence_from_a_peer_must_prove_a_fork(world: World) -> None:
    """Evidence is checked: a forgery, two copies of one envelope, or two envelopes at
    different seqs prove nothing and change nothing."""
    w = world
    v1, v2 = _versions(w)
    a = w.board("a")
    forged = bytearray(v2)
    forged[-3] ^= 1
    other = seal_envelope(board_id=a.id, cipher=a._cipher, author_key=AuthorKey.generate(),
                          seq=2, prev=bytes(32), change=b"x").raw
    for first, second in ((v1, bytes(forged)), (v1, v1), (v1, other)):
        with pytest.raises(EnvelopeError):
            a.record_fork(first, second)
    assert a.forked == {}
    assert a.record_fork(v1, v2) and a.forked == {w.b.actor: 2}
    assert not a.record_fork(v2, v1)  # known: no news


# --------------------------------------------------------------------- finding 8: held data


def test_held_envelopes_are_bounded_in_bytes_per_author_and_per_board(world: World) -> None:
    """B's seq 2 depends on a hash nobody has (refused), then B sends 999 envelopes of
    about 60 KB chained after it: they are gaps, held only up to the per-author byte
    bound; the rest is dropped, to be fetched again. Twenty more hostile authors doing
    the same stay within the per-board bound. Nothing of it is stored or survives a
    reopen."""
    w = world
    a = w.board("a")
    b_starts(w)
    refused = w.b.seal(w.b.chunk([CraftedOp(SET, (0, 1), "x", int_value(1))],
                                 deps=[os.urandom(32)]))
    refused_as([a.receive([refused])], DependencyError)

    def big_tail(feed: CraftedFeed, count: int) -> list[bytes]:
        out = []
        for i in range(count):
            text = os.urandom(22_000).hex()[:40_000]
            op = CraftedOp(SET, (0, 1), f"k{i % 50}", str_value(text))
            out.append(feed.seal(feed.chunk([op])))
        return out

    tail = big_tail(w.b, 999)
    assert all(len(r) > 40_000 for r in tail)
    for start in range(0, len(tail), 50):
        report = a.receive(tail[start : start + 50])
        assert report.accepted == 0
    held = sum(len(e.raw) for e in a.log._held.values())
    assert 0 < held <= MAX_HELD_BYTES_PER_AUTHOR
    for n in range(20):
        other = CraftedFeed(a.id, a.keys.content_key, AuthorKey.generate())
        other.seal(other.chunk(other.first()))  # never sent: all the rest are gaps
        a.receive(big_tail(other, 60))
        per_author: dict[bytes, int] = {}
        for env in a.log._held.values():
            per_author[env.author] = per_author.get(env.author, 0) + len(env.raw)
        assert max(per_author.values()) <= MAX_HELD_BYTES_PER_AUTHOR
        assert sum(per_author.values()) <= MAX_HELD_BYTES, n
    assert a.version_vector()[w.b.actor] == 1
    a = w.reopen("a")
    assert a.log._held == {} and a.version_vector()[w.b.actor] == 1
    assert_intact(w)


def test_ownership_is_still_checked_first(world: World) -> None:
    """A change that names another actor is refused as an ownership violation, not for
    its (also wrong) dependencies."""
    w = world
    b_starts(w)
    from amcraft import change_chunk

    chunk = change_chunk(actor=w.b.actor, seq=2, start_op=4, deps=[w.b.last_hash],
                         other_actors=[bytes(w.board("a").author)],
                         ops=[CraftedOp(SET, (1, 1), "title", str_value("B was here"))])
    refused_as(w.offer([w.b.seal(chunk, advance=False)]), OwnershipError)
    assert_intact(w)


def test_a_bundle_carries_fork_proofs(world: World, tmp_path: Path) -> None:
    """A replica that proved a fork writes the proof into its bundles: a member that had
    version 2 only, and a newcomer, both end B's feed there when they import it."""
    w = world
    v1, v2 = _versions(w)
    a, c = w.board("a"), w.board("c")
    a.receive([v1, v2])
    assert a.forked == {w.b.actor: 2}
    c.receive([v2])
    bundle = tmp_path / "proof.p2paid"
    w.stores["a"].export_bundle(bundle, [a.id])
    w.stores["c"].import_bundle(bundle)
    assert c.forked == {w.b.actor: 2} and c.version_vector()[w.b.actor] == 1
    with p2paid.open_store(tmp_path / "d") as d_store:
        d = d_store.join(a.invite())
        d_store.import_bundle(bundle)
        assert d.forked == {w.b.actor: 2}
        assert [i.to_json(NOW) for i in d.items()] == [i.to_json(NOW) for i in a.items()]
