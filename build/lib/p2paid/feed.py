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
        The verified prefix, and one rejection for every other envelope of the
        run: the first failure with its own error, the rest as ChainError.
    """
    linked: list[Envelope] = []
    prev = head.hash
    for env in run:
        if env.prev != prev:
            break
        linked.append(env)
        prev = env.hash
    good = linked
    failed: Rejection | None = None
    if linked:
        try:
            linked[-1].verify_signature()
        except SignatureError:
            good = []
            for env in linked:
                try:
                    env.verify_signature()
                except SignatureError as exc:
                    failed = Rejection(env, exc)
                    break
                good.append(env)
    rejected: list[Rejection] = []
    rest = list(run[len(good):])
    if failed is not None:
        rejected.append(failed)
        rest = rest[1:]
    elif rest:
        env = rest.pop(0)
        # A validly signed envelope that does not link continues another version of
        # the feed (a fork the sender may hold innocently); a badly signed one is forged.
        try:
            env.verify_signature()
        except SignatureError as exc:
            rejected.append(Rejection(env, exc))
        else:
            rejected.append(Rejection(env, ChainError(f"seq {env.seq}: prev hash does not link")))
    rejected.extend(
        Rejection(env, ChainError(f"seq {env.seq}: follows a refused envelope")) for env in rest
    )
    return good, rejected


def _pick(candidates: list[Envelope], plan: BatchPlan) -> Envelope:
    """Of several different envelopes offered at one seq, keep one valid one.

    Conflicts are rare, so each candidate's signature is checked: forgeries are
    refused as such (and cannot brand the author as forked, nor block the genuine
    envelope); two validly signed versions are a real fork: keep the first.
    """
    valid: list[Envelope] = []
    for env in candidates:
        try:
            env.verify_signature()
        except SignatureError as exc:
            plan.rejected.append(Rejection(env, exc))
            continue
        valid.append(env)
    if not valid:
        return candidates[0]  # all forged: let verify_run refuse the first, already counted
    for env in valid[1:]:
        plan.rejected.append(Rejection(env, ForkError(f"seq {env.seq} offered in two versions")))
    return valid[0]


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
    offered: dict[bytes, dict[int, list[Envelope]]] = {}
    for env in envelopes:
        if env.board_id != board_id:
            plan.rejected.append(Rejection(env, WrongBoardError("envelope is for another board")))
            continue
        candidates = offered.setdefault(env.author, {}).setdefault(env.seq, [])
        if any(c.hash == env.hash for c in candidates):
            plan.duplicates += 1
        else:
            candidates.append(env)
    for author, by_seq_candidates in offered.items():
        by_seq: dict[int, Envelope] = {}
        for seq, candidates in by_seq_candidates.items():
            if len(candidates) == 1:
                by_seq[seq] = candidates[0]
            else:
                chosen = _pick(candidates, plan)
                if not any(r.envelope is chosen for r in plan.rejected):
                    by_seq[seq] = chosen
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
