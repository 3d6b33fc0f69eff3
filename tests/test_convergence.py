"""CRDT convergence of real stores under reordering, duplication, drops and restarts.

A hypothesis state machine runs 2..5 replicas, each a real :func:`p2paid.open_store`
in its own temporary data dir, all joined to one board through its invite. Members
post, claim, unclaim, edit, fulfil, withdraw, reopen and rename; every write's new
envelope becomes a message to each other replica. Messages are delivered one by one
or in shuffled batches, duplicated, dropped (and redelivered by the final drain),
relayed by third parties (gossip), and replicas are restarted (losing what
:meth:`Board.receive` held in memory). The machine checks, after every step:

* a replica that has applied all of an author's changes shows exactly that author's
  own view of the author's needs, offers and display name;
* two replicas holding the same version vector have the same heads and items;
* no honest envelope is ever rejected, and every write adds exactly one envelope.

At the end everything is delivered to everyone in random order, and all replicas
(plus a fresh member that receives the whole board in one batch) must have identical
document heads, version vectors and ``items()`` JSON.

Measured runtime (2 cores, data dirs on /dev/shm): about 20 s for this file (200
examples of up to 60 steps; 60 examples where /dev/shm is missing, as SQLite fsyncs
then cost about 4x). P2PAID_CONVERGENCE_EXAMPLES overrides the count.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import tempfile
import unicodedata
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import p2paid
from p2paid import Board, Category, Item, ReceiveReport, Store, Urgency, UsageError
from p2paid.board.model import LIMITS, MAX_QUANTITY, MAX_TTL_DAYS
from p2paid.core.text import name_key, text_problem
from p2paid.errors import ValidationError

#: The "now" every replica renders items at, so ``expired`` flags compare equal.
FIXED_NOW = 1_900_000_000_000
MAX_REPLICAS = 5
#: tmpfs makes SQLite's fsyncs cheap; fall back to the default temp dir elsewhere.
TMP_BASE = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None

F = TypeVar("F", bound=Callable[..., Any])


# --------------------------------------------------------------------- strategies

_TEXT_CHARS = st.characters(
    codec="utf-8", categories=("L", "M", "N", "P", "S", "Zs"), exclude_characters="\x85"
)


def _text(max_size: int, *, multiline: bool = False) -> st.SearchStrategy[str]:
    chars = st.one_of(_TEXT_CHARS, st.sampled_from("\n\t")) if multiline else _TEXT_CHARS
    return st.text(chars, max_size=max_size)


def cleaned(value: str, field_name: str, *, required: bool = False) -> str | None:
    """What the library should store for ``value``, or None if it must refuse it."""
    text = unicodedata.normalize("NFC", value).strip()
    limit = LIMITS["name" if field_name == "display name" else field_name]
    allowed = "\n\t" if field_name in ("details", "note") else ""
    if (required and not text) or len(text) > limit:
        return None
    if any(unicodedata.category(c) == "Cc" and c not in allowed for c in text):
        return None
    # The format-character and isolate rule (p2paid.core.text) and "something visible".
    if text_problem(text, multiline=bool(allowed)) is not None:
        return None
    if text and (required or field_name == "display name") and not name_key(text):
        return None
    return text


titles = _text(LIMITS["title"] + 2)
quantities = st.one_of(st.none(), st.integers(1, MAX_QUANTITY))
ttl_days = st.integers(1, MAX_TTL_DAYS)

item_fields = st.fixed_dictionaries(
    {},
    optional={
        "details": _text(300, multiline=True),
        "category": st.sampled_from(list(Category)),
        "quantity": quantities,
        "unit": _text(LIMITS["unit"]),
        "location": _text(60),
        "urgency": st.sampled_from(list(Urgency)),
        "expires_in_days": st.one_of(st.none(), ttl_days),
    },
)


def expected_fields(title: str | None, fields: dict[str, Any]) -> dict[str, Any] | None:
    """The stored values of a post/edit, or None if some field must be refused."""
    out: dict[str, Any] = {}
    if title is not None:
        t = cleaned(title, "title", required=True)
        if t is None:
            return None
        out["title"] = t
    for name in ("details", "unit", "location"):
        if name in fields:
            v = cleaned(fields[name], name)
            if v is None:
                return None
            out[name] = v
    for name in ("category", "urgency", "quantity"):
        if name in fields:
            out[name] = fields[name]
    return out


# --------------------------------------------------------------------- helpers


def env_hash(raw: bytes) -> bytes:
    return hashlib.sha256(raw).digest()


def author_of(raw: bytes) -> bytes:
    """The author field of an envelope (bytes 33..65 of the wire layout)."""
    return raw[33:65]


def items_json(board: Board) -> list[dict[str, Any]]:
    return [i.to_json(now=FIXED_NOW) for i in board.items()]


def own_view(board: Board, author: bytes) -> tuple[str, list[dict[str, Any]]]:
    """An author's display name and items as ``board`` shows them, without what other
    members' sections decide (claims, and whether another member shows the same name)."""
    rows = []
    for item in board.items():
        if item.author == author.hex():
            row = item.to_json(now=FIXED_NOW)
            del row["claims"], row["claimed_quantity"], row["over_claimed"], row["name_shared"]
            rows.append(row)
    return board.display_name(author), rows


def tracked(fn: F) -> F:
    """Mark the machine broken if a step raises, so teardown only cleans up."""

    @wraps(fn)
    def wrapper(self: Convergence, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except BaseException:
            self.broken = True
            raise

    return wrapper  # type: ignore[return-value]


class Replica:
    """One member: a store in its own data dir, and the shared board in it."""

    def __init__(self, path: Path, invite: str | None, name: str | None) -> None:
        self.path = path
        self.store: Store = p2paid.open_store(path)
        if invite is None:
            self.board = self.store.create_board("convergence", display_name=name)
        else:
            self.board = self.store.join(invite, display_name=name)
        self.author = bytes(self.board.author)

    def reopen(self) -> None:
        self.store.close()
        self.store = p2paid.open_store(self.path, create=False)
        self.board = self.store.board()

    def seq(self) -> int:
        return self.board.version_vector().get(self.author, 0)


# --------------------------------------------------------------------- the machine


class Convergence(RuleBasedStateMachine):
    """Replicas of one board exchanging envelopes over an unreliable network."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="p2paid-conv-", dir=TMP_BASE))
        self.replicas: list[Replica] = []
        self.all_envelopes: dict[bytes, bytes] = {}  # hash -> raw, every envelope ever written
        self.inflight: list[tuple[int, bytes]] = []  # (destination replica, raw)
        self.dropped: list[tuple[int, bytes]] = []
        self.delivered: list[tuple[int, bytes]] = []
        self.rng = random.Random(0)
        self.broken = False

    # ---------------------------------------------------------------- plumbing

    @initialize(
        n=st.integers(2, MAX_REPLICAS),
        names=st.lists(st.one_of(st.none(), st.sampled_from(["Ana", "Bo", "Chen", "Dayo"])),
                       min_size=MAX_REPLICAS, max_size=MAX_REPLICAS),
        seed=st.integers(0, 2**32 - 1),
    )
    @tracked
    def start(self, n: int, names: list[str | None], seed: int) -> None:
        self.rng = random.Random(seed)
        first = Replica(self.tmp / "r0", None, names[0])
        self.replicas.append(first)
        invite = first.board.invite()
        for i in range(1, n):
            self.replicas.append(Replica(self.tmp / f"r{i}", invite, names[i]))
        for i, r in enumerate(self.replicas):
            if r.seq():
                self._collect(i, r.seq() - 1)

    def _replica(self, index: int) -> Replica:
        return self.replicas[index % len(self.replicas)]

    def _collect(self, writer: int, seq_before: int, *, may_be_noop: bool = False) -> None:
        """Pick up the writer's new envelope and queue it for every other replica."""
        r = self.replicas[writer]
        new = [raw for raw in r.board.envelopes() if env_hash(raw) not in self.all_envelopes]
        if may_be_noop and not new:
            assert r.seq() == seq_before
            return
        assert len(new) == 1, f"one write stored {len(new)} new envelopes"
        raw = new[0]
        assert author_of(raw) == r.author
        assert r.seq() == seq_before + 1
        self.all_envelopes[env_hash(raw)] = raw
        self.inflight.extend((j, raw) for j in range(len(self.replicas)) if j != writer)

    def _write(self, index: int, op: Callable[[Board], Any], *, valid: bool = True,
               may_be_noop: bool = False) -> Any:
        """Run one write; a valid one adds one envelope (none if ``may_be_noop`` and it
        rewrote equal values), an invalid one raises UsageError and changes nothing."""
        i = index % len(self.replicas)
        r = self.replicas[i]
        before = (r.seq(), r.board.document.heads(), items_json(r.board))
        if valid:
            result = op(r.board)
            self._collect(i, before[0], may_be_noop=may_be_noop)
            if r.seq() == before[0]:
                assert (r.board.document.heads(), items_json(r.board)) == before[1:]
            return result
        with pytest.raises(UsageError):
            op(r.board)
        assert (r.seq(), r.board.document.heads(), items_json(r.board)) == before
        assert len(list(r.board.envelopes())) == sum(r.board.version_vector().values())
        return None

    def _receive(self, dest: int, raws: list[bytes]) -> ReceiveReport:
        board = self.replicas[dest].board
        report = board.receive(raws)
        assert not report.rejected, f"honest envelopes rejected: {report.rejected}"
        if report.held:
            event("receive held envelopes back")
        if board.document.pending_count:
            event("changes waiting for a dependency")
        self.delivered.extend((dest, raw) for raw in raws)
        return report

    def _mine(self, board: Board, data: st.DataObject) -> Item | None:
        own = [i for i in board.items() if i.author == board.author.hex()]
        return data.draw(st.sampled_from(own)) if own else None

    # ---------------------------------------------------------------- writes

    @rule(peer=st.integers(0, MAX_REPLICAS - 1), title=titles, fields=item_fields)
    @tracked
    def post_need(self, peer: int, title: str, fields: dict[str, Any]) -> None:
        self._post(peer, True, title, fields)

    @rule(peer=st.integers(0, MAX_REPLICAS - 1), title=titles, fields=item_fields)
    @tracked
    def post_offer(self, peer: int, title: str, fields: dict[str, Any]) -> None:
        self._post(peer, False, title, fields)

    def _post(self, peer: int, need: bool, title: str, fields: dict[str, Any]) -> None:
        expect = expected_fields(title, fields)
        if not need and fields.get("urgency", "normal") != "normal":
            expect = None  # offers have no urgency: refused
        post = Board.post_need if need else Board.post_offer
        item = self._write(peer, lambda b: post(b, title, **fields), valid=expect is not None)
        if item is not None:
            assert expect is not None
            for key, value in expect.items():
                assert getattr(item, key) == value, key

    @rule(peer=st.integers(0, MAX_REPLICAS - 1), data=st.data(),
          quantity=quantities, note=_text(LIMITS["note"] + 2, multiline=True))
    @tracked
    def claim(self, peer: int, data: st.DataObject, quantity: int | None, note: str) -> None:
        board = self._replica(peer).board
        others = [i for i in board.items()
                  if i.author != board.author.hex() and i.display_status() == "open"]
        if not others:
            return
        item = data.draw(st.sampled_from(others))
        still_open = item.open_quantity  # a claim above what is still open is refused
        valid = cleaned(note, "note") is not None and (
            quantity is None or still_open is None or quantity <= still_open)
        claim = self._write(peer, lambda b: b.claim(item.id, quantity=quantity, note=note),
                            valid=valid)
        if claim is not None:
            assert claim.item_id == item.id and claim.quantity == quantity
            assert any(c.id == claim.id for c in board.get(item.id).claims)

    @rule(peer=st.integers(0, MAX_REPLICAS - 1), data=st.data())
    @tracked
    def unclaim(self, peer: int, data: st.DataObject) -> None:
        board = self._replica(peer).board
        me = board.author.hex()
        claimed = [i for i in board.items() if any(c.author == me for c in i.claims)]
        if not claimed:
            return
        item = data.draw(st.sampled_from(claimed))
        self._write(peer, lambda b: b.unclaim(item.id))
        assert not any(c.author == me for c in board.get(item.id).claims)

    @rule(peer=st.integers(0, MAX_REPLICAS - 1), data=st.data(),
          title=st.one_of(st.none(), titles), fields=item_fields)
    @tracked
    def edit(self, peer: int, data: st.DataObject, title: str | None,
             fields: dict[str, Any]) -> None:
        board = self._replica(peer).board
        item = self._mine(board, data)
        if item is None:
            return
        kwargs = dict(fields) if title is None else {"title": title, **fields}
        expect = expected_fields(title, fields) if kwargs else None
        if item.kind.value == "offer" and "urgency" in fields:
            expect = None  # offers have no urgency: refused
        edited = self._write(peer, lambda b: b.edit(item.id, **kwargs), valid=expect is not None,
                             may_be_noop=True)  # same values within the same millisecond
        if edited is not None:
            assert expect is not None
            for key, value in expect.items():
                assert getattr(edited, key) == value, key

    @rule(peer=st.integers(0, MAX_REPLICAS - 1), data=st.data(),
          action=st.sampled_from(["fulfil", "withdraw", "reopen"]))
    @tracked
    def set_status(self, peer: int, data: st.DataObject, action: str) -> None:
        board = self._replica(peer).board
        item = self._mine(board, data)
        if item is None:
            return
        target = {"fulfil": "fulfilled", "withdraw": "withdrawn", "reopen": "open"}[action]
        changed = self._write(peer, lambda b: getattr(b, action)(item.id),
                              valid=item.status.value != target)
        if changed is not None:
            assert changed.status.value == target

    @rule(peer=st.integers(0, MAX_REPLICAS - 1), name=_text(LIMITS["name"] + 2))
    @tracked
    def rename(self, peer: int, name: str) -> None:
        expect = cleaned(name, "display name")
        if expect == self._replica(peer).board.display_name():
            # Renaming to the current name may be a no-op or a polite refusal (see
            # test_same_display_name_twice_is_harmless); it must not break anything.
            with contextlib.suppress(UsageError):
                self._write(peer, lambda b: b.set_display_name(name), may_be_noop=True)
            return
        self._write(peer, lambda b: b.set_display_name(name), valid=expect is not None)
        if expect is not None:
            board = self._replica(peer).board
            assert board.display_name() == expect

    @rule(peer=st.integers(0, MAX_REPLICAS - 1), data=st.data(),
          what=st.sampled_from(["claim-own", "claim-closed", "change-other", "no-claim",
                                "empty-edit", "empty-title", "short-id", "too-many"]))
    @tracked
    def invalid(self, peer: int, data: st.DataObject, what: str) -> None:
        """Requests the API must refuse with UsageError, changing nothing."""
        board = self._replica(peer).board
        me = board.author.hex()
        items = board.items()
        own = [i for i in items if i.author == me]
        others = [i for i in items if i.author != me]
        op: Callable[[Board], Any] | None = None
        if what == "claim-own" and own:
            item = data.draw(st.sampled_from(own))
            op = lambda b: b.claim(item.id)  # noqa: E731
        elif what == "claim-closed":
            closed = [i for i in others if i.status.value != "open"]
            if closed:
                item = data.draw(st.sampled_from(closed))
                op = lambda b: b.claim(item.id)  # noqa: E731
        elif what == "change-other" and others:
            item = data.draw(st.sampled_from(others))
            action = data.draw(st.sampled_from(["fulfil", "withdraw", "reopen", "edit"]))
            op = lambda b: (b.edit(item.id, title="mine now") if action == "edit"  # noqa: E731
                            else getattr(b, action)(item.id))
        elif what == "no-claim":
            free = [i for i in items if not any(c.author == me for c in i.claims)]
            if free:
                item = data.draw(st.sampled_from(free))
                op = lambda b: b.unclaim(item.id)  # noqa: E731
        elif what == "empty-edit" and own:
            item = data.draw(st.sampled_from(own))
            op = lambda b: b.edit(item.id)  # noqa: E731
        elif what == "empty-title":
            op = lambda b: b.post_need(" \t ")  # noqa: E731
        elif what == "short-id":
            op = lambda b: b.fulfil("ab")  # noqa: E731
        elif what == "too-many":
            op = lambda b: b.post_offer("x", quantity=MAX_QUANTITY + 1)  # noqa: E731
        if op is not None:
            self._write(peer, op, valid=False)

    # ---------------------------------------------------------------- network

    @precondition(lambda self: self.inflight)
    @rule(data=st.data(), batch=st.booleans())
    @tracked
    def deliver(self, data: st.DataObject, batch: bool) -> None:
        """Deliver some in-flight messages, in a drawn order, singly or batched per replica."""
        picks = data.draw(st.lists(st.integers(0, len(self.inflight) - 1), min_size=1,
                                   max_size=8, unique=True))
        msgs = [self.inflight[k] for k in picks]
        for k in sorted(picks, reverse=True):
            del self.inflight[k]
        if batch:
            per_dest: dict[int, list[bytes]] = {}
            for dest, raw in msgs:
                per_dest.setdefault(dest, []).append(raw)
            for dest, raws in per_dest.items():
                self._receive(dest, raws)
        else:
            for dest, raw in msgs:
                self._receive(dest, [raw])

    @precondition(lambda self: self.inflight)
    @rule(data=st.data())
    @tracked
    def drop(self, data: st.DataObject) -> None:
        """Lose a message; the final drain redelivers it."""
        k = data.draw(st.integers(0, len(self.inflight) - 1))
        self.dropped.append(self.inflight.pop(k))

    @precondition(lambda self: self.dropped)
    @rule()
    @tracked
    def resend_dropped(self) -> None:
        """The sender retries everything that was lost, in a shuffled order."""
        self.rng.shuffle(self.dropped)
        self.inflight.extend(self.dropped)
        self.dropped.clear()

    @precondition(lambda self: self.delivered)
    @rule(data=st.data())
    @tracked
    def duplicate(self, data: st.DataObject) -> None:
        """Deliver again something already delivered: a stored one changes nothing."""
        dest, raw = self.delivered[data.draw(st.integers(0, len(self.delivered) - 1))]
        board = self.replicas[dest].board
        author, seq = author_of(raw), int.from_bytes(raw[65:73], "big")
        held = board.version_vector().get(author, 0) >= seq
        before = (board.document.heads(), board.version_vector())
        report = self._receive(dest, [raw])
        if held:
            assert report.accepted == 0 and report.duplicates >= 1
            assert (board.document.heads(), board.version_vector()) == before

    @rule(src=st.integers(0, MAX_REPLICAS - 1), dst=st.integers(0, MAX_REPLICAS - 1))
    @tracked
    def gossip(self, src: int, dst: int) -> None:
        """One replica forwards everything it stores (others' envelopes too), shuffled."""
        s, d = src % len(self.replicas), dst % len(self.replicas)
        if s == d:
            return
        raws = list(self.replicas[s].board.envelopes())
        self.rng.shuffle(raws)
        self._receive(d, raws)
        vs, vd = self.replicas[s].board.version_vector(), self.replicas[d].board.version_vector()
        assert all(vd.get(a, 0) >= n for a, n in vs.items()), "gossip left a gap"

    @rule(peer=st.integers(0, MAX_REPLICAS - 1), snapshot=st.booleans())
    @tracked
    def restart(self, peer: int, snapshot: bool) -> None:
        """Close and reopen a store (from a fresh snapshot or by replaying every stored
        change): the document reloads to the same state, waiting changes included."""
        r = self._replica(peer)
        board = r.board
        if snapshot:
            board.save_snapshot()
        before = (board.document.heads(), board.version_vector(), items_json(board),
                  board.document.pending_count)
        r.reopen()
        board = r.board
        after = (board.document.heads(), board.version_vector(), items_json(board),
                 board.document.pending_count)
        assert after == before

    # ---------------------------------------------------------------- checks

    @invariant()
    @tracked
    def authors_view_is_authoritative(self) -> None:
        """A replica that applied all of an author's changes shows that author's own view."""
        for author in self.replicas:
            top = author.seq()
            if not top:
                continue
            truth = own_view(author.board, author.author)
            for other in self.replicas:
                if other is author:
                    continue
                doc = other.board.document
                other.board.refresh()
                if doc.applied_seq.get(author.author, 0) == top:
                    assert own_view(other.board, author.author) == truth

    @invariant()
    @tracked
    def same_vector_same_state(self) -> None:
        """Replicas holding the same envelopes show the same document and items."""
        seen: dict[tuple[tuple[bytes, int], ...], tuple[list[bytes], list[dict[str, Any]]]] = {}
        for r in self.replicas:
            vv = r.board.version_vector()
            assert len(list(r.board.envelopes())) == sum(vv.values())
            for a, n in vv.items():
                owner = next(x for x in self.replicas if x.author == a)
                assert n <= owner.seq()
            key = tuple(sorted(vv.items()))
            state = (r.board.document.heads(), items_json(r.board))
            if key in seen:
                assert state == seen[key]
            else:
                seen[key] = state

    def _drain(self) -> None:
        """Deliver every envelope ever written to every replica, shuffled, in chunks."""
        everything = list(self.all_envelopes.values())
        truth = {r.author: r.seq() for r in self.replicas if r.seq()}
        order = list(range(len(self.replicas)))
        self.rng.shuffle(order)
        for i in order:
            raws = everything[:]
            self.rng.shuffle(raws)
            cut = sorted(self.rng.sample(range(len(raws) + 1), k=min(3, len(raws) + 1)))
            report = None
            for lo, hi in zip([0, *cut], [*cut, len(raws)], strict=True):
                report = self._receive(i, raws[lo:hi])
            assert report is not None and report.held == 0
            board = self.replicas[i].board
            assert board.version_vector() == truth
            assert board.document.pending_count == 0
        self.inflight.clear()
        self.dropped.clear()

    def _compare_all(self) -> None:
        first = self.replicas[0].board
        heads, vv, items = first.document.heads(), first.version_vector(), items_json(first)
        for r in self.replicas[1:]:
            assert r.board.document.heads() == heads
            assert r.board.version_vector() == vv
            assert items_json(r.board) == items
        # a newcomer that receives the whole board in one batch sees the same
        newcomer = p2paid.open_store(self.tmp / "newcomer")
        try:
            board = newcomer.join(first.invite())
            everything = list(self.all_envelopes.values())
            self.rng.shuffle(everything)
            report = board.receive(everything)
            assert not report.rejected and report.held == 0
            assert board.document.heads() == heads
            assert board.version_vector() == vv
            assert items_json(board) == items
        finally:
            newcomer.close()

    def teardown(self) -> None:
        try:
            if self.replicas and not self.broken:
                event(f"replicas={len(self.replicas)}")
                event(f"envelopes: {len(self.all_envelopes) // 10 * 10}+")
                self._drain()
                self._compare_all()
        finally:
            for r in self.replicas:
                r.store.close()
            shutil.rmtree(self.tmp, ignore_errors=True)


Convergence.TestCase.settings = settings(
    max_examples=int(os.environ.get("P2PAID_CONVERGENCE_EXAMPLES", "200" if TMP_BASE else "60")),
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                           HealthCheck.data_too_large],
    print_blob=True,
)
TestConvergence = Convergence.TestCase


def test_fields_strategy_sanity() -> None:
    """The local validity model agrees with the library on a few hand-picked cases."""
    assert cleaned("  ok  ", "title", required=True) == "ok"
    assert cleaned(" ", "title", required=True) is None
    assert cleaned("a" * 201, "title") is None
    assert cleaned("a\nb", "note") == "a\nb"
    assert cleaned("a\nb", "title") is None
    with pytest.raises(ValidationError):
        p2paid.board.model.clean_text("a\nb", "title")


def test_same_display_name_twice_is_harmless(tmp_path: Path) -> None:
    """Setting the display name you already have is not a protocol error.

    Automerge drops a put of an unchanged value, so the write makes no change and
    BoardDocument.write raises LocalProtocolError ("a bug in the caller") at the user.
    """
    with p2paid.open_store(tmp_path / "a") as store:
        board = store.create_board("names", display_name="Ana")
        seq = board.version_vector()[board.author]
        with contextlib.suppress(UsageError):  # refusing politely is fine too
            board.set_display_name("Ana")
        assert board.display_name() == "Ana"
        assert board.version_vector()[board.author] in (seq, seq + 1)
