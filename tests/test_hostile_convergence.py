"""Property: with a hostile member in the board, honest replicas still converge.

Three honest members post, claim and rename on their own replicas (real stores);
member B attacks: it forks its feed (two validly signed versions of one seq, sent to
different replicas), re-seals other members' changes as its own, and sends changes
with wrong dependencies, wrong op counters or values the schema does not use, to
random replicas. Envelopes move between honest replicas in random, partial,
reordered deliveries. Once every replica has been given everything every other
holds (and the fork proofs, as peers and relays pass them on), all honest replicas
show the same board, every honest post is on it, they hold the same feeds, and each
that holds any of a forked author's feed ends it at the lowest fork anyone proved.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

from amcraft import (
    COUNTER,
    MAKE_MAP,
    SET,
    CraftedFeed,
    CraftedOp,
    change_chunk,
    int_value,
    sleb,
    str_value,
)
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import p2paid
from p2paid import Board, Store
from p2paid.core.envelope import Envelope, open_envelope, seal_envelope
from p2paid.core.identity import AuthorKey

NOW = 1_900_000_000_000
TMP_BASE = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
REPLICAS = 3


class _BHistory:
    """B's feed, with what is needed to sign another version of any seq."""

    def __init__(self, feed: CraftedFeed) -> None:
        self.feed = feed
        #: seq -> (prev envelope hash, change hash of seq - 1, max op of seq - 1)
        self.before: dict[int, tuple[bytes, bytes, int]] = {1: (bytes(32), b"", 0)}

    def valid(self, title: str) -> bytes:
        feed = self.feed
        ops = feed.first() if feed.seq == 0 else feed.need_ops(os.urandom(16).hex(), title,
                                                               now=NOW)
        raw = feed.seal(feed.chunk(ops))
        self.before[feed.seq + 1] = (feed.prev, feed.last_hash, feed.max_op)
        return raw

    def other_version(self, seq: int, title: str) -> bytes:
        """A validly signed envelope at ``seq`` (1..current) that differs from B's own."""
        prev, dep, max_op = self.before[seq]
        feed = self.feed
        if seq == 1:
            ops = [*feed.first(), CraftedOp(SET, (0, 1), "alt", int_value(1))]
        else:
            item = (0, max_op + 1)
            ops = [CraftedOp(MAKE_MAP, (0, feed.NEEDS), os.urandom(16).hex()),
                   CraftedOp(SET, item, "title", str_value(title)),
                   CraftedOp(SET, item, "category", str_value("water")),
                   CraftedOp(SET, item, "created", int_value(NOW))]
        chunk = change_chunk(actor=feed.actor, seq=seq, start_op=max_op + 1, ops=ops,
                             deps=[dep] if seq > 1 else [])
        return seal_envelope(board_id=feed.board_id, cipher=feed.cipher, author_key=feed.key,
                             seq=seq, prev=prev, change=chunk).raw

    def broken(self, how: str, stolen: bytes | None) -> bytes:
        feed = self.feed
        if how == "reseal" and stolen is not None:
            return feed.seal(stolen, advance=False)
        op = [CraftedOp(SET, (0, 1), "x", int_value(7))]
        if how == "deps":
            return feed.seal(feed.chunk(op, deps=[os.urandom(32)]), advance=False)
        if how == "start":
            return feed.seal(feed.chunk(op, start_op=feed.max_op + 5), advance=False)
        return feed.seal(feed.chunk([CraftedOp(SET, (0, 1), "x", (COUNTER, sleb(3)))]),
                         advance=False)


class HostileBoard(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="p2paid-hostile-", dir=TMP_BASE))
        self.stores: list[Store] = [p2paid.open_store(self.root / str(i))
                                    for i in range(REPLICAS)]
        first = self.stores[0].create_board("Aid", display_name="m0")
        invite = first.invite()
        for i, store in enumerate(self.stores[1:], start=1):
            store.join(invite, display_name=f"m{i}")
        with p2paid.open_store(self.root / "b") as b_store:
            board = b_store.join(invite)
            key = AuthorKey(board._author_key.private_bytes())
        self.b = _BHistory(CraftedFeed(first.id, first.keys.content_key, key))
        self.honest_posts: set[str] = set()
        self.rng = random.Random(0)

    def teardown(self) -> None:
        for store in self.stores:
            store.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def board(self, i: int) -> Board:
        return self.stores[i].board()

    # ------------------------------------------------------------------ honest members

    @rule(i=st.integers(0, REPLICAS - 1), kind=st.sampled_from(["need", "offer"]))
    def post(self, i: int, kind: str) -> None:
        board = self.board(i)
        item = (board.post_need if kind == "need" else board.post_offer)(
            f"{kind} by m{i}", quantity=10)
        self.honest_posts.add(item.id)

    @rule(i=st.integers(0, REPLICAS - 1), pick=st.integers(0, 1000),
          qty=st.integers(1, 20))
    def claim(self, i: int, pick: int, qty: int) -> None:
        board = self.board(i)
        others = [it for it in board.items() if it.author != board.author.hex()
                  and it.display_status(NOW) == "open" and (it.open_quantity or 0) >= qty]
        if others:
            board.claim(others[pick % len(others)].id, quantity=qty)

    @rule(i=st.integers(0, REPLICAS - 1), name=st.sampled_from(["Ana", "Bo", "m0", "Cy"]))
    def rename(self, i: int, name: str) -> None:
        self.board(i).set_display_name(name)

    @rule(src=st.integers(0, REPLICAS - 1), dst=st.integers(0, REPLICAS - 1),
          share=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
    def deliver(self, src: int, dst: int, share: float, seed: int) -> None:
        """A partial, reordered delivery of what ``src`` holds (like a cut connection)."""
        if src == dst:
            return
        raws = list(self.board(src).envelopes())
        rng = random.Random(seed)
        rng.shuffle(raws)
        self.board(dst).receive(raws[: int(len(raws) * share)])

    # ------------------------------------------------------------------ the attacker

    @rule(dst=st.integers(0, REPLICAS - 1))
    def b_posts(self, dst: int) -> None:
        self.board(dst).receive([self.b.valid("B's post")])

    @precondition(lambda self: self.b.feed.seq >= 1)
    @rule(dst=st.integers(0, REPLICAS - 1), back=st.integers(0, 5))
    def b_forks(self, dst: int, back: int) -> None:
        seq = max(1, self.b.feed.seq - back)
        self.board(dst).receive([self.b.other_version(seq, "B's other story")])

    @precondition(lambda self: self.b.feed.seq >= 1)
    @rule(dst=st.integers(0, REPLICAS - 1),
          how=st.sampled_from(["reseal", "deps", "start", "value"]), src=st.integers(0, 2))
    def b_sends_broken(self, dst: int, how: str, src: int) -> None:
        victim = self.board(src)
        own = [Envelope.decode(r) for r in victim.envelopes()]
        own = [e for e in own if e.author == victim.author]
        stolen = open_envelope(own[-1], victim._cipher) if own else None
        self.board(dst).receive([self.b.broken(how, stolen)])

    # ------------------------------------------------------------------ invariant

    def _sync_all(self) -> None:
        for _ in range(3):
            for src in range(REPLICAS):
                raws = list(self.board(src).envelopes())
                proofs = list(self.board(src).forks().values())
                for dst in range(REPLICAS):
                    if dst != src:
                        self.board(dst).receive(raws)
                        for proof in proofs:
                            self.board(dst).record_fork(proof.first, proof.second)

    @invariant()
    def honest_data_is_never_lost_and_replicas_converge_once_synced(self) -> None:
        if not self.honest_posts or self.rng.random() < 0.6:
            return  # (a full sync at every step would hide ordering effects)
        self._sync_all()
        boards = [self.board(i) for i in range(REPLICAS)]
        views = [[it.to_json(NOW) for it in b.items()] for b in boards]
        assert all(view == views[0] for view in views), "replicas differ"
        ids = {it["id"] for it in views[0]}
        assert self.honest_posts <= ids, "an honest post is missing"
        assert len({tuple(sorted(b.version_vector().items())) for b in boards}) == 1
        # Forks: every replica that holds any of a forked author's feed knows the lowest
        # fork, and nobody holds anything at or beyond it. (A replica that holds nothing
        # of that author ignores the proof: it changes nothing there.)
        lowest: dict[bytes, int] = {}
        for b in boards:
            for author, seq in b.forked.items():
                lowest[author] = min(seq, lowest.get(author, seq))
        for b in boards:
            vector = b.version_vector()
            for author, seq in lowest.items():
                assert vector.get(author, 0) < seq
                if vector.get(author, 0):
                    assert b.forked.get(author) == seq
        assert len({tuple(b.document.heads()) for b in boards}) == 1
        for board in boards:
            assert len(board.export_automerge()) > 0  # the saved form stays loadable


TestHostileBoard = HostileBoard.TestCase
TestHostileBoard.settings = settings(
    max_examples=20, stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
