"""Per-author feeds: sort a batch of envelopes and verify hash-chained runs.

Pure logic shared by nodes, relays and bundle import (no Automerge, no keys
beyond public ones). A feed is contiguous from seq 1; a store holds only a
contiguous prefix, described by its :class:`FeedHead`. For each author in a
batch this module decides, per envelope, one of: *duplicate* (already held,
same hash), *next* (extends the feed), *gap* (arrived before an earlier seq), or
refused.

Forks: two different, validly signed envelopes at one ``(author, seq)`` prove that
the author forked its feed (:class:`ForkProof`). Every replica then ends that
author's feed just before the lowest forked seq it knows of, whichever version it
saw first, and passes the proof on; so all replicas converge on the same feed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import final

from p2paid.core.envelope import ZERO_HASH, Envelope
from p2paid.errors import (
    ChainError,
    EnvelopeError,
    ForkedFeedError,
    ForkError,
    SignatureError,
    WrongBoardError,
)

__all__ = [
    "EMPTY_HEAD",
    "BatchPlan",
    "FeedHead",
    "ForkProof",
    "Rejection",
    "plan_batch",
    "verify_run",
]


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


@final
@dataclass(frozen=True, slots=True)
class ForkProof:
    """Two different envelopes of one author at one seq, both validly signed."""

    first: Envelope
    second: Envelope

    @property
    def author(self) -> bytes:
        return self.first.author

    @property
    def seq(self) -> int:
        return self.first.seq

    @classmethod
    def check(cls, board_id: bytes, first: Envelope, second: Envelope) -> ForkProof:
        """Verify a proof received from elsewhere.

        Raises:
            ForkError: the two envelopes do not prove a fork on this board (the error
                is the sender's: it sent a bogus proof).
            SignatureError: either signature does not verify.
        """
        if first.board_id != board_id or second.board_id != board_id:
            raise ForkError("fork evidence for another board")
        if (first.author, first.seq) != (second.author, second.seq):
            raise ForkError("fork evidence of two different feed positions")
        if first.hash == second.hash:
            raise ForkError("fork evidence of one envelope twice")
        first.verify_signature()
        second.verify_signature()
        return cls(first, second)


#: ``lookup(author, lo, hi) -> {seq: hash}`` for envelopes already held in ``lo..hi``.
HashLookup = Callable[[bytes, int, int], Mapping[int, bytes]]
#: ``fetch(author, seq) -> raw envelope`` of a held envelope (for fork evidence).
Fetch = Callable[[bytes, int], bytes | None]


@dataclass(slots=True)
class BatchPlan:
    """What to do with each envelope of a batch for one board."""

    #: author -> verified envelopes that extend the feed, in seq order.
    runs: dict[bytes, list[Envelope]] = field(default_factory=dict)
    duplicates: int = 0
    #: envelopes beyond a gap; keep them until the gap is filled, or drop them.
    gaps: list[Envelope] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    #: forks this batch proves (lowest seq per author; only where it lowers ``forked``)
    forks: dict[bytes, ForkProof] = field(default_factory=dict)

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


def _valid(candidates: list[Envelope], plan: BatchPlan) -> list[Envelope]:
    """The validly signed ones among several different envelopes offered at one seq.

    Conflicts are rare, so each candidate's signature is checked: forgeries are
    refused as such (and can neither brand the author as forked nor block the
    genuine envelope).
    """
    valid: list[Envelope] = []
    for env in candidates:
        try:
            env.verify_signature()
        except SignatureError as exc:
            plan.rejected.append(Rejection(env, exc))
            continue
        valid.append(env)
    return valid


def plan_batch(
    board_id: bytes,
    envelopes: Iterable[Envelope],
    heads: Mapping[bytes, FeedHead],
    held: HashLookup,
    forked: Mapping[bytes, int] | None = None,
    fetch: Fetch | None = None,
) -> BatchPlan:
    """Sort a batch into duplicates, gaps, refusals, fork proofs and verified runs.

    Args:
        board_id: the board the batch was offered for.
        heads: the store's head per author (missing = empty feed).
        held: looks up hashes of envelopes already held at or below the head.
        forked: ``author -> seq`` of proven forks already known: that author's feed
            ends before ``seq`` (envelopes from there on are refused).
        fetch: reads a held envelope, to prove a fork against it; without it such a
            conflict is refused as ForkError but proves nothing.
    """
    plan = BatchPlan()
    forked = forked or {}
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
        head = heads.get(author, EMPTY_HEAD)
        ends = forked.get(author)
        by_seq: dict[int, Envelope] = {}
        proof: ForkProof | None = None
        known: Mapping[int, bytes] = {}
        old = [seq for seq in by_seq_candidates if seq <= head.seq]
        if old:
            known = held(author, min(old), max(old))
        for seq in sorted(by_seq_candidates):
            candidates = by_seq_candidates[seq]
            if ends is not None and seq >= ends:
                plan.rejected.extend(Rejection(env, ForkedFeedError(
                    f"its author forked the feed at seq {ends}")) for env in candidates)
                continue
            held_hash = known.get(seq) if seq <= head.seq else None
            if seq <= head.seq and held_hash is None:
                # Held only inside a checkpoint (SPEC 8a.4): nothing to compare it with.
                plan.duplicates += len(candidates)
                continue
            if held_hash is not None:
                fresh = [env for env in candidates if env.hash != held_hash]
                plan.duplicates += len(candidates) - len(fresh)
                if not fresh:
                    continue
                # Only a correctly signed second version proves the author forked;
                # anything else is a forgery and must not brand the author.
                valid = _valid(fresh, plan)
                if valid:
                    raw = fetch(author, seq) if fetch is not None else None
                    if raw is not None:
                        proof = ForkProof(Envelope.decode(raw), valid[0])
                    plan.rejected.extend(Rejection(env, ForkError(
                        f"a different envelope is held at seq {seq}")) for env in valid)
                    if proof is not None:
                        ends = seq
                continue
            if len(candidates) == 1:
                by_seq[seq] = candidates[0]
                continue
            valid = _valid(candidates, plan)
            if len(valid) == 1:
                by_seq[seq] = valid[0]
            elif valid:
                proof = ForkProof(valid[0], valid[1])
                plan.rejected.extend(Rejection(env, ForkError(
                    f"seq {seq} offered in two versions")) for env in valid)
                ends = seq
        if proof is not None:
            plan.forks[author] = proof
            for seq in [s for s in by_seq if s >= proof.seq]:
                plan.rejected.append(Rejection(by_seq.pop(seq), ForkedFeedError(
                    f"its author forked the feed at seq {proof.seq}")))
        run: list[Envelope] = []
        seq = head.seq + 1
        while seq in by_seq:
            run.append(by_seq.pop(seq))
            seq += 1
        plan.gaps.extend(by_seq[s] for s in sorted(by_seq))
        if run:
            good, bad = verify_run(head, run)
            if good:
                plan.runs[author] = good
            plan.rejected.extend(bad)
    return plan
