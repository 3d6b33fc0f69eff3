"""Conformance checks for :class:`~p2paid.storage.base.EnvelopeStore` implementations.

:func:`check_envelope_store` runs every check against fresh, empty stores made by
a factory; :data:`ENVELOPE_STORE_CHECKS` lists them for a test suite that reports
each one. A store is opaque to what it holds (it checks no signature), so the
checks use made-up rows. They raise
:class:`~p2paid.core.conformance.ConformanceError` naming the rule broken.

The factory yields a :class:`StoreFixture`: the store, and ``reopen`` (close it and
open the same data again) when the implementation can, so that durability is
checked too.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Final, final

from p2paid.core.conformance import ConformanceError, run_checks
from p2paid.core.feed import FeedHead
from p2paid.errors import StorageError
from p2paid.storage.base import EnvelopeStore, ForkRow, NewEnvelope

__all__ = ["ENVELOPE_STORE_CHECKS", "StoreFixture", "check_envelope_store"]

BOARD: Final = b"\x0b" * 32
OTHER_BOARD: Final = b"\x0c" * 32
ALICE: Final = b"\xa1" * 32
BOB: Final = b"\xb0" * 32


@final
@dataclass(frozen=True, slots=True)
class StoreFixture:
    """A fresh, empty store; ``reopen`` (if given) closes it and returns a new handle on
    the same data."""

    store: EnvelopeStore
    reopen: Callable[[], EnvelopeStore] | None = None


StoreFactory = Callable[[], AbstractContextManager[StoreFixture]]


def _expect(condition: bool, rule: str) -> None:
    if not condition:
        raise ConformanceError(rule)


def _row(author: bytes, seq: int, size: int = 40, variant: int = 0) -> NewEnvelope:
    data = bytes([variant]) + author[:1] + seq.to_bytes(8, "big") + b"\x00" * max(size - 10, 0)
    return (author, seq, hashlib.sha256(data).digest(), data, hashlib.sha256(b"c" + data).digest())


def _feed(author: bytes, count: int, size: int = 40) -> list[NewEnvelope]:
    return [_row(author, seq, size) for seq in range(1, count + 1)]


def check_empty(fx: StoreFixture) -> None:
    """A new store holds nothing."""
    s = fx.store
    _expect(s.heads(BOARD) == {}, "heads of an empty store are {}")
    _expect(s.held_hashes(BOARD, ALICE, 1, 100) == {}, "held_hashes of an empty store are {}")
    _expect(s.envelope_at(BOARD, ALICE, 1) is None, "envelope_at an empty position is None")
    _expect(s.read_feed(BOARD, ALICE, 0, 1 << 20) == [], "read_feed of no feed is []")
    _expect(s.forks(BOARD) == {}, "no forks in an empty store")
    _expect(s.rejection_count(BOARD, ALICE) == 0, "no rejections in an empty store")
    _expect(s.board_sizes() == {}, "no board sizes in an empty store")


def check_insert_and_read(fx: StoreFixture) -> None:
    """Inserted feeds read back byte for byte, per board and author."""
    s = fx.store
    alice, bob = _feed(ALICE, 4, 50), _feed(BOB, 2, 30)
    with s.write():
        s.insert_envelopes(BOARD, alice)
        s.insert_envelopes(BOARD, bob[:1])
        s.insert_envelopes(OTHER_BOARD, bob)
    _expect(s.heads(BOARD) == {ALICE: FeedHead(4, alice[3][2]), BOB: FeedHead(1, bob[0][2])},
            f"heads are each author's newest envelope (got {s.heads(BOARD)})")
    _expect(s.heads(OTHER_BOARD) == {BOB: FeedHead(2, bob[1][2])}, "boards are apart")
    _expect(s.held_hashes(BOARD, ALICE, 2, 3) == {2: alice[1][2], 3: alice[2][2]},
            "held_hashes covers lo..hi, both included")
    _expect(s.held_hashes(BOARD, ALICE, 4, 9) == {4: alice[3][2]},
            "held_hashes skips what is not held")
    _expect(s.envelope_at(BOARD, ALICE, 2) == alice[1][3], "envelope_at returns the bytes")
    feed = [r[3] for r in alice]
    got = s.read_feed(BOARD, ALICE, 0, 1 << 20)
    _expect(got == feed and all(type(x) is bytes for x in got),
            "read_feed returns the feed in seq order, as bytes")
    _expect(s.read_feed(BOARD, ALICE, 1, 1 << 20) == feed[1:], "read_feed starts after ``after``")
    _expect(s.read_feed(BOARD, ALICE, 1, 1) == feed[1:2],
            "read_feed returns one envelope even when it is larger than max_bytes")
    _expect(s.read_feed(BOARD, ALICE, 0, 100) == feed[:2], "read_feed fills max_bytes, no more")
    _expect(s.read_feed(BOARD, ALICE, 4, 1 << 20) == [], "read_feed after the head is []")
    _expect(s.board_sizes() == {BOARD: 4 * 50 + 30, OTHER_BOARD: 60},
            f"board_sizes counts envelope bytes (got {s.board_sizes()})")


def check_arrival_counter(fx: StoreFixture) -> None:
    """insert_envelopes returns a counter that grows with every insert."""
    s = fx.store
    seen = []
    for seq in range(1, 4):
        with s.write():
            seen.append(s.insert_envelopes(BOARD, [_row(ALICE, seq)]))
    with s.write():
        seen.append(s.insert_envelopes(BOARD, _feed(BOB, 3)))
    _expect(all(a < b for a, b in itertools.pairwise(seen)),
            f"the arrival counter grows (got {seen})")


def check_unique_position(fx: StoreFixture) -> None:
    """A second envelope at a held position fails and rolls the whole write back."""
    s = fx.store
    with s.write():
        s.insert_envelopes(BOARD, _feed(ALICE, 2))
    try:
        with s.write():
            s.insert_envelopes(BOARD, [_row(BOB, 1)])
            s.insert_envelopes(BOARD, [_row(ALICE, 2, variant=1)])
    except StorageError:
        pass
    else:
        raise ConformanceError("a second envelope at (board, author, seq) raises StorageError")
    _expect(s.heads(BOARD) == {ALICE: FeedHead(2, _row(ALICE, 2)[2])},
            "a failed write leaves nothing behind (Bob's row too)")
    _expect(s.envelope_at(BOARD, ALICE, 2) == _row(ALICE, 2)[3], "the first envelope stays")


def check_rollback(fx: StoreFixture) -> None:
    """An exception inside a write (or a nested write) undoes all of it."""
    s = fx.store
    for nested in (False, True):
        try:
            with s.write():
                s.insert_envelopes(BOARD, _feed(ALICE, 2))
                if nested:
                    with s.write():
                        s.insert_envelopes(BOARD, _feed(BOB, 1))
                        raise _Boom
                raise _Boom
        except _Boom:
            pass
        _expect(s.heads(BOARD) == {}, f"a write that raised stored nothing (nested={nested})")
    with s.write():
        s.insert_envelopes(BOARD, _feed(ALICE, 1))
        with s.write():
            s.insert_envelopes(BOARD, _feed(BOB, 1))
    _expect(set(s.heads(BOARD)) == {ALICE, BOB}, "a nested write joins the outer one")


class _Boom(Exception):
    pass


def check_delete_feed_from(fx: StoreFixture) -> None:
    """delete_feed_from cuts one author's feed on one board, nothing else."""
    s = fx.store
    with s.write():
        s.insert_envelopes(BOARD, [*_feed(ALICE, 5), *_feed(BOB, 5)])
        s.insert_envelopes(OTHER_BOARD, _feed(ALICE, 5))
    with s.write():
        s.delete_feed_from(BOARD, ALICE, 3)
    _expect(s.heads(BOARD)[ALICE].seq == 2, "the author's feed ends before the seq")
    _expect(s.held_hashes(BOARD, ALICE, 1, 9).keys() == {1, 2}, "later envelopes are gone")
    _expect(s.heads(BOARD)[BOB].seq == 5 and s.heads(OTHER_BOARD)[ALICE].seq == 5,
            "other authors and boards are untouched")
    with s.write():
        s.delete_feed_from(BOARD, ALICE, 1)
    _expect(ALICE not in s.heads(BOARD), "a feed cut at seq 1 has no head")
    with s.write():
        s.insert_envelopes(BOARD, [_row(ALICE, 1, variant=2)])
    _expect(s.envelope_at(BOARD, ALICE, 1) == _row(ALICE, 1, variant=2)[3],
            "a deleted position can be written again")


def check_rejections(fx: StoreFixture) -> None:
    """A refusal is remembered once per envelope hash, counted per author."""
    s = fx.store
    a1, a1b, b1 = _row(ALICE, 1), _row(ALICE, 1, variant=1), _row(BOB, 1)
    with s.write():
        for author, _seq, hash_, data, change in (a1, a1, a1b, b1):
            s.record_rejection(BOARD, author, 1, hash_, "forbidden-op", "why", data, 1, change)
        s.record_rejection(OTHER_BOARD, ALICE, 1, a1[2], "fork", "why", None, 1)
    _expect(s.rejection_count(BOARD, ALICE) == 2, "the same refusal twice is kept once")
    _expect(s.rejection_count(BOARD, BOB) == 1 and s.rejection_count(OTHER_BOARD, ALICE) == 1,
            "refusals are counted per board and author")


def check_forks(fx: StoreFixture) -> None:
    """The lowest fork proof of an author is kept; its bytes count in board_sizes."""
    s = fx.store
    high = ForkRow(ALICE, 5, b"f" * 100, b"s" * 100)
    low = ForkRow(ALICE, 3, b"F" * 10, b"S" * 20)
    with s.write():
        s.insert_envelopes(BOARD, _feed(BOB, 1, 40))
        _expect(s.record_fork(BOARD, high, 1), "a first proof is kept")
        _expect(not s.record_fork(BOARD, high, 2), "the same proof again is not news")
        _expect(not s.record_fork(BOARD, ForkRow(ALICE, 7, b"x", b"y"), 2),
                "a higher proof is not news")
    _expect(s.forks(BOARD) == {ALICE: high}, "the proof reads back")
    with s.write():
        _expect(s.record_fork(BOARD, low, 3), "a lower proof replaces a higher one")
    _expect(s.forks(BOARD) == {ALICE: low} and s.forks(OTHER_BOARD) == {},
            "one proof per author, per board")
    _expect(s.heads(BOARD) == {BOB: FeedHead(1, _row(BOB, 1)[2])},
            "record_fork touches no feed")
    _expect(s.board_sizes() == {BOARD: 40 + 30}, "board_sizes counts both proof envelopes")


def check_durable(fx: StoreFixture) -> None:
    """What a write committed is there after reopening; what rolled back is not."""
    if fx.reopen is None:
        return
    s = fx.store
    with s.write():
        s.insert_envelopes(BOARD, _feed(ALICE, 3))
        s.record_fork(BOARD, ForkRow(BOB, 2, b"a", b"b"), 1)
        s.record_rejection(BOARD, BOB, 2, b"h" * 32, "fork", "why", None, 1)
    try:
        with s.write():
            s.insert_envelopes(BOARD, _feed(BOB, 1))
            raise _Boom
    except _Boom:
        pass
    again = fx.reopen()
    _expect(again.heads(BOARD) == {ALICE: FeedHead(3, _row(ALICE, 3)[2])},
            "committed envelopes survive a reopen; rolled-back ones do not")
    _expect(again.forks(BOARD) == {BOB: ForkRow(BOB, 2, b"a", b"b")}, "forks survive")
    _expect(again.rejection_count(BOARD, BOB) == 1, "rejections survive")


#: Every check, in the order :func:`check_envelope_store` runs them.
ENVELOPE_STORE_CHECKS: Final[Sequence[Callable[[StoreFixture], None]]] = (
    check_empty,
    check_insert_and_read,
    check_arrival_counter,
    check_unique_position,
    check_rollback,
    check_delete_feed_from,
    check_rejections,
    check_forks,
    check_durable,
)


def check_envelope_store(make: StoreFactory) -> Iterator[str]:
    """Run every store check (:data:`ENVELOPE_STORE_CHECKS`), each against a fresh
    store; yields each check's name as it passes.

    Raises:
        ConformanceError: a check failed.
    """
    return run_checks(ENVELOPE_STORE_CHECKS, make)
