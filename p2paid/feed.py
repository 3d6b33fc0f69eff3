"""Per-author feeds: sort a batch of envelopes and verify hash-chained runs.

Pure logic shared by nodes, relays and bundle import (no Automerge, no keys
beyond public ones). A feed is contiguous from seq 1; a store holds only a
contiguous prefix, described by its :class:`FeedHead`. For each author in a
batch this module decides, per envelope, one of: *duplicate* (already held,
same hash), *fork* (already held with another hash), *next* (extends the feed),
or *gap* (arrived before an earlier seq).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import final

from .envelope import ZERO_HASH, Envelope
from .errors import ChainError, EnvelopeError, ForkError, SignatureError, WrongBoardError

__all__ = ["EMPTY_HEAD", "BatchPlan", "FeedHead", "Rejection", "plan_batch", "verify_run"]


@final
@dataclass(frozen=True, slots=True)
class FeedHead:
    """The newest envelope a store holds for one author (seq 0 = nothing yet)."""

    seq: int
    hash: bytes


EMPTY_HEAD = FeedHead(0, ZERO_HASH)


@final
@dataclass(frozen=True, slots=True)
class Rejection:
    """One refused envelope (None if its bytes did not even decode) and why."""

    envelope: Envelope | None
    error: EnvelopeError


#: ``lookup(author, lo, hi) -> {seq: hash}`` for envelopes already held in ``lo..hi``.
HashLookup = Callable[[bytes, int, int], Mapping[int, bytes]]


@dataclass(slots=True)
class BatchPlan:
    """What to do with each envelope of a batch for one board."""

    #: author -> verified envelopes that extend the feed, in seq order.
    runs: dict[bytes, list[Envelope]] = field(default_factory=dict)
    duplicates: int = 0
    #: envelopes beyond a gap; keep them until the gap is filled, or drop them.
    gaps: list[Envelope] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        return sum(len(run) for run in self.runs.values())


def verify_run(head: FeedHead, run: Sequence[Envelope]) -> tuple[list[Envelope], list[Rejection]]:
    """Verify a contiguous run ``head.seq+1 ..`` of one author's envelopes.

    Checks the ``prev`` links, then only the newest signature; a bad newest
    signature falls back to checking each one, so a valid prefix is still kept.

    Returns:
        The verified prefix, and a rejection for the first envelope that failed
        plus, as ChainError, everything after it.
    """
    linked: list[Envelope] = []
    rejected: list[Rejection] = []
    prev = head.hash
    for env in run:
        if env.prev != prev:
            rejected.append(Rejection(env, ChainError(f"seq {env.seq}: prev hash does not link")))
            break
        linked.append(env)
        prev = env.hash
    if linked:
        try:
            linked[-1].verify_signature()
        except SignatureError:
            good: list[Envelope] = []
            for env in linked:
                try:
                    env.verify_signature()
                except SignatureError as exc:
                    rejected.insert(0, Rejection(env, exc))
                    break
                good.append(env)
            linked = good
    done = len(linked) + len(rejected)
    for env in run[done:]:
        rejected.append(Rejection(env, ChainError(f"seq {env.seq}: follows a refused envelope")))
    return linked, rejected


def plan_batch(
    board_id: bytes,
    envelopes: Iterable[Envelope],
    heads: Mapping[bytes, FeedHead],
    held: HashLookup,
) -> BatchPlan:
    """Sort a batch into duplicates, forks, gaps and verified runs.

    Args:
        board_id: the board the batch was offered for.
        heads: the store's head per author (missing = empty feed).
        held: looks up hashes of envelopes already held at or below the head.
    """
    plan = BatchPlan()
    by_author: dict[bytes, dict[int, Envelope]] = {}
    for env in envelopes:
        if env.board_id != board_id:
            plan.rejected.append(Rejection(env, WrongBoardError("envelope is for another board")))
            continue
        seen = by_author.setdefault(env.author, {})
        other = seen.get(env.seq)
        if other is None:
            seen[env.seq] = env
        elif other.hash == env.hash:
            plan.duplicates += 1
        else:
            # Two versions in one batch: neither is trusted yet; keep the first offered.
            plan.rejected.append(Rejection(env, ForkError(f"seq {env.seq} offered twice")))
    for author, by_seq in by_author.items():
        head = heads.get(author, EMPTY_HEAD)
        old = [seq for seq in by_seq if seq <= head.seq]
        if old:
            known = held(author, min(old), max(old))
            for seq in old:
                env = by_seq.pop(seq)
                if known.get(seq) == env.hash:
                    plan.duplicates += 1
                    continue
                # Only a correctly signed second version proves the author forked;
                # anything else is a forgery and must not brand the author.
                try:
                    env.verify_signature()
                except SignatureError as exc:
                    plan.rejected.append(Rejection(env, exc))
                else:
                    plan.rejected.append(
                        Rejection(env, ForkError(f"a different envelope is held at seq {seq}"))
                    )
        run: list[Envelope] = []
        seq = head.seq + 1
        while seq in by_seq:
            run.append(by_seq.pop(seq))
            seq += 1
        plan.gaps.extend(by_seq.values())
        if run:
            good, bad = verify_run(head, run)
            if good:
                plan.runs[author] = good
            plan.rejected.extend(bad)
    return plan
