"""Conformance checks for :class:`~p2paid.core.replication.Replica` implementations.

Every replica (the node's, the relay's, an in-memory one in the tests, a future
one on another store) must behave the same way towards a sync session, or two
peers stop converging. :func:`check_replica` runs every check against fresh
replicas built by a factory; each check is also importable alone
(:data:`REPLICA_CHECKS`) so that a test suite can report them one by one.

The factory yields a :class:`ReplicaFixture`: the replica, one board it holds (or,
for a relay, carries), and valid feeds of that board. Feeds are real envelopes
(sealed, signed, chained); for a member's replica their changes must pass the
member's content checks, which is why the fixture, not this module, makes them.
The checks use nothing but the :class:`Replica` protocol and raise
:class:`ConformanceError` naming the rule broken.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Final, TypeVar, final

from p2paid.core.envelope import Envelope
from p2paid.core.feed import ForkProof
from p2paid.core.replication import Replica
from p2paid.errors import EnvelopeError

__all__ = ["REPLICA_CHECKS", "ConformanceError", "ReplicaFixture", "check_replica", "run_checks"]

_Fixture = TypeVar("_Fixture")


class ConformanceError(AssertionError):
    """An implementation broke a rule of its port (the message says which)."""


#: ``feed(author, count, variant)``: envelopes 1..count of test author ``author``
#: (0, 1, 2, ...) on the fixture's board, the same bytes on every call; another
#: ``variant`` is the same author's feed with other content from seq 1 on (so that
#: envelopes of two variants at one seq prove a fork).
FeedMaker = Callable[[int, int, int], list[bytes]]


@final
@dataclass(frozen=True, slots=True)
class ReplicaFixture:
    """A fresh, empty replica and what the checks need to feed it."""

    replica: Replica
    board_id: bytes
    feed: FeedMaker
    #: a valid envelope of a board other than ``board_id``
    foreign: bytes


ReplicaFactory = Callable[[], AbstractContextManager[ReplicaFixture]]


def _expect(condition: bool, rule: str) -> None:
    if not condition:
        raise ConformanceError(rule)


def _author(raw: bytes) -> bytes:
    return Envelope.decode(raw).author


def check_empty_board(fx: ReplicaFixture) -> None:
    """A board with nothing received has no feeds, no forks, nothing to read."""
    r, b = fx.replica, fx.board_id
    author = _author(fx.feed(0, 1, 0)[0])
    _expect(dict(r.vector(b)) == {}, "vector of an empty board is {}")
    _expect(dict(r.heads(b)) == {}, "heads of an empty board are {}")
    _expect(r.hash_at(b, author, 1) is None, "hash_at of an unheld envelope is None")
    _expect(r.read(b, author, 0, 1 << 20) == [], "read of an unheld feed is []")
    _expect(dict(r.forked(b)) == {}, "no forks on an empty board")
    _expect(r.fork_evidence(b, author) is None, "no fork evidence on an empty board")
    _expect(r.role in ("node", "relay"), f"role is 'node' or 'relay', not {r.role!r}")


def check_receive_and_read(fx: ReplicaFixture) -> None:
    """A feed received in order is stored whole; heads, hashes and reads reflect it."""
    r, b = fx.replica, fx.board_id
    feed = fx.feed(0, 5, 0)
    envs = [Envelope.decode(raw) for raw in feed]
    author = envs[0].author
    got = r.receive(b, feed)
    _expect(got.stored == 5 and not got.rejected and got.duplicates == 0,
            f"a valid feed of 5 is stored whole (got {got})")
    _expect(dict(r.vector(b)) == {author: 5}, "vector counts the feed received")
    head = r.heads(b)[author]
    _expect((head.seq, head.hash) == (5, envs[-1].hash), "head is the last envelope")
    _expect(r.hash_at(b, author, 3) == envs[2].hash, "hash_at gives the envelope's hash")
    _expect(r.hash_at(b, author, 6) is None, "hash_at past the head is None")
    _expect(r.read(b, author, 0, 1 << 20) == feed, "read returns the feed byte for byte")
    _expect(r.read(b, author, 2, 1 << 20) == feed[2:], "read starts after ``after``")
    _expect(r.read(b, author, 2, 1) == feed[2:3],
            "read returns one envelope even when it is larger than max_bytes")
    two = len(feed[1]) + len(feed[2])
    _expect(r.read(b, author, 1, two) == feed[1:3], "read fills max_bytes, no more")
    _expect(r.read(b, author, 5, 1 << 20) == [], "read after the head is []")


def check_duplicates(fx: ReplicaFixture) -> None:
    """Envelopes already held are counted as duplicates and change nothing."""
    r, b = fx.replica, fx.board_id
    feed = fx.feed(0, 3, 0)
    r.receive(b, feed)
    again = r.receive(b, feed)
    _expect(again.stored == 0 and again.duplicates == 3 and not again.rejected,
            f"a feed received twice is 3 duplicates the second time (got {again})")
    _expect(dict(r.vector(b)) == {_author(feed[0]): 3}, "duplicates do not grow the vector")


def check_gap(fx: ReplicaFixture) -> None:
    """An envelope beyond a gap is not part of the feed until the gap closes."""
    r, b = fx.replica, fx.board_id
    feed = fx.feed(0, 4, 0)
    author = _author(feed[0])
    r.receive(b, feed[:2])
    later = r.receive(b, feed[3:])
    _expect(later.stored == 0 and not later.rejected,
            f"an envelope after a gap is neither stored nor refused (got {later})")
    _expect(dict(r.vector(b)) == {author: 2}, "the vector stops at the gap")
    _expect(r.hash_at(b, author, 4) is None, "an envelope beyond a gap is not held")
    r.receive(b, feed[2:])
    _expect(dict(r.vector(b)) == {author: 4}, "the feed is whole once the gap closes")
    _expect(r.read(b, author, 0, 1 << 20) == feed, "the whole feed reads back in order")


def check_independent_authors(fx: ReplicaFixture) -> None:
    """Feeds of different authors are stored side by side, in one batch or several."""
    r, b = fx.replica, fx.board_id
    one, two = fx.feed(0, 3, 0), fx.feed(1, 2, 0)
    got = r.receive(b, [one[0], two[0], one[1], two[1], one[2]])
    _expect(got.stored == 5 and not got.rejected, f"interleaved feeds are stored (got {got})")
    _expect(dict(r.vector(b)) == {_author(one[0]): 3, _author(two[0]): 2},
            "each author's feed is counted apart")


def check_refusals(fx: ReplicaFixture) -> None:
    """Forged, malformed and foreign envelopes are refused; nothing of them is stored."""
    r, b = fx.replica, fx.board_id
    feed = fx.feed(0, 2, 0)
    author = _author(feed[0])
    forged = bytearray(feed[0])
    forged[-1] ^= 0x01  # the signature's last byte
    for name, raw in (("a forged envelope", bytes(forged)), ("junk bytes", b"\x01junk"),
                      ("an envelope of another board", fx.foreign), ("nothing", b"")):
        got = r.receive(b, [raw])
        _expect(got.stored == 0 and len(got.rejected) == 1,
                f"{name} is refused, once (got {got})")
        _expect(all(isinstance(e, EnvelopeError) for e in got.rejected),
                f"the refusal of {name} is an EnvelopeError")
    _expect(dict(r.vector(b)) == {}, "refused envelopes store nothing")
    got = r.receive(b, [*feed, bytes(forged)])
    _expect(got.stored == 2 and len(got.rejected) == 1,
            f"a forgery costs itself only: the valid feed beside it is stored (got {got})")
    _expect(dict(r.vector(b)) == {author: 2}, "the valid feed is held")


def check_fork(fx: ReplicaFixture) -> None:
    """Two signed envelopes of one author at one seq end its feed before that seq, and
    the proof is kept and given to peers."""
    r, b = fx.replica, fx.board_id
    feed, other = fx.feed(0, 3, 0), fx.feed(0, 3, 1)
    author = _author(feed[0])
    _expect(other[0] != feed[0] and _author(other[0]) == author,
            "fixture: two variants of one author differ from seq 1")
    r.receive(b, feed)
    r.receive(b, [other[0]])
    _expect(dict(r.forked(b)) == {author: 1},
            f"a fork at seq 1 is recorded (forked = {dict(r.forked(b))})")
    _expect(dict(r.vector(b)).get(author, 0) == 0,
            "the forked author's feed ends before the fork")
    _expect(r.read(b, author, 0, 1 << 20) == [], "nothing of a feed past its fork is read")
    evidence = r.fork_evidence(b, author)
    _expect(evidence is not None, "the fork's evidence is kept")
    assert evidence is not None
    proof = ForkProof.check(b, Envelope.decode(evidence[0]), Envelope.decode(evidence[1]))
    _expect((proof.author, proof.seq) == (author, 1), "the evidence proves the fork")
    _expect(not r.record_fork(b, *evidence), "evidence of a known fork is no news")
    later = r.receive(b, feed)
    _expect(later.stored == 0, "nothing at or after a proven fork is stored again")
    _expect(dict(r.vector(b)).get(author, 0) == 0, "the feed stays ended")


def check_forgery_is_no_fork(fx: ReplicaFixture) -> None:
    """A forged envelope at a held position is refused; the honest author's feed stays."""
    r, b = fx.replica, fx.board_id
    feed = fx.feed(0, 2, 0)
    forged = bytearray(feed[0])
    forged[-1] ^= 0x01
    r.receive(b, feed)
    got = r.receive(b, [bytes(forged)])
    _expect(got.stored == 0 and len(got.rejected) == 1, f"the forgery is refused (got {got})")
    _expect(dict(r.forked(b)) == {}, "a forgery proves no fork")
    _expect(dict(r.vector(b)) == {_author(feed[0]): 2}, "the honest feed is whole")


def check_fork_evidence(fx: ReplicaFixture) -> None:
    """Evidence from a peer ends a held feed; evidence that proves nothing is refused."""
    r, b = fx.replica, fx.board_id
    feed, other = fx.feed(0, 3, 0), fx.feed(0, 3, 1)
    author = _author(feed[0])
    r.receive(b, feed)
    forged = bytearray(other[0])
    forged[-1] ^= 0x01
    for name, first, second in (("one envelope twice", feed[0], feed[0]),
                                ("two seqs", feed[0], feed[1]),
                                ("a forgery", feed[0], bytes(forged)),
                                ("junk", b"\x01junk", other[0])):
        try:
            r.record_fork(b, first, second)
        except EnvelopeError:
            continue
        raise ConformanceError(f"evidence of {name} is refused with an EnvelopeError")
    _expect(dict(r.forked(b)) == {} and dict(r.vector(b)) == {author: 3},
            "evidence that proves nothing changes nothing")
    _expect(r.record_fork(b, feed[0], other[0]), "valid evidence is news")
    _expect(dict(r.forked(b)) == {author: 1}, "the fork is recorded")
    _expect(dict(r.vector(b)).get(author, 0) == 0, "the feed ends before the fork")


#: Every check, in the order :func:`check_replica` runs them.
REPLICA_CHECKS: Final[Sequence[Callable[[ReplicaFixture], None]]] = (
    check_empty_board,
    check_receive_and_read,
    check_duplicates,
    check_gap,
    check_independent_authors,
    check_refusals,
    check_fork,
    check_forgery_is_no_fork,
    check_fork_evidence,
)


def run_checks(checks: Sequence[Callable[[_Fixture], None]],
               make: Callable[[], AbstractContextManager[_Fixture]]) -> Iterator[str]:
    """Run each check against a fresh fixture from ``make``; yields each check's name as
    it passes.

    Raises:
        ConformanceError: a check failed.
    """
    for check in checks:
        with make() as fixture:
            check(fixture)
        yield check.__name__


def check_replica(make: ReplicaFactory) -> Iterator[str]:
    """Run every replica check (:data:`REPLICA_CHECKS`), each against a fresh fixture;
    yields each check's name as it passes.

    Raises:
        ConformanceError: a check failed.
    """
    return run_checks(REPLICA_CHECKS, make)
