"""Verify a batch of envelopes for one board and store the ones that extend its feeds.

Shared by members (who can decrypt and check each change) and by carriers and
relays (who cannot, and store envelopes blind after checking signatures and
chains). The caller holds the store's write lock and passes the feed heads it
has caught up to; :func:`ingest` never applies anything to an Automerge document.

A batch that proves a fork (:class:`~p2paid.core.feed.ForkProof`) ends the author's feed
before the forked seq: the proof is kept (both envelopes, one proof per author) and
stored envelopes from that seq on are deleted (SPEC 4.5).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, final

from p2paid.automerge.chunk import ChangeHeader
from p2paid.core.checkpoint import Checkpoint, verify_checkpoint
from p2paid.core.clock import now_ms
from p2paid.core.envelope import Envelope
from p2paid.core.feed import EMPTY_HEAD, FeedHead, ForkProof, Rejection, plan_batch
from p2paid.errors import (
    ChainError,
    ChangeMismatchError,
    DependencyError,
    EnvelopeDecryptError,
    EnvelopeError,
    ForbiddenOpError,
    ForkedFeedError,
    ForkError,
    InvalidChangeError,
    OwnershipError,
)
from p2paid.storage.base import CheckpointStore, EnvelopeStore, ForkRow

__all__ = ["CONTENT_REFUSALS", "Accepted", "CheckMember", "CheckpointResult", "ExtendMember",
           "IngestResult",
           "OpenChange", "ingest", "ingest_checkpoint", "merge_results", "record_fork"]

#: Opens and checks an envelope's change; None for a blind carrier or relay.
OpenChange = Callable[[Envelope], tuple[ChangeHeader, bytes]]

#: A member's check of a checkpoint's content (p2paid.board.checkpoint): its changes
#: ``1..seq``, or an EnvelopeError; None for a blind carrier or relay.
#: a member's check of a checkpoint's content (SPEC 8a.3); returns the Automerge hash of
#: the head's change
CheckMember = Callable[[Checkpoint], bytes]
#: a member's check that a checkpoint continues the feed it holds up to the given seq
#: (SPEC 8a.4); returns the Automerge hash of the head's change, or None if it cannot
#: tell now (the head then goes as an envelope)
ExtendMember = Callable[[Checkpoint, int], bytes | None]

#: Refusals of a validly signed envelope for its content: every member refuses the
#: same envelope the same way, so its hash may be remembered and refused again cheaply.
CONTENT_REFUSALS: Final = (EnvelopeDecryptError, OwnershipError, ChangeMismatchError,
                           DependencyError, ForbiddenOpError, InvalidChangeError)
#: Refusals worth remembering: each needs the author's valid signature, so it
#: proves the author (not a forger) misbehaved.
_RECORDED: Final = (ForkError, *CONTENT_REFUSALS)
#: Refusals remembered per (board, author): enough to show what happened, bounded.
MAX_RECORDED_PER_AUTHOR: Final = 10


@final
@dataclass(frozen=True, slots=True)
class Accepted:
    envelope: Envelope
    header: ChangeHeader | None
    change: bytes | None


@dataclass(slots=True)
class IngestResult:
    """What became of each envelope offered."""

    accepted: list[Accepted] = field(default_factory=list)
    duplicates: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    #: arrived before an earlier envelope of the same author; not stored
    gaps: list[Envelope] = field(default_factory=list)
    last_id: int = 0
    #: forks this batch proved (new, or lower than the one known): the author's feed
    #: now ends before ``proof.seq``
    forks: list[ForkProof] = field(default_factory=list)


def ingest(
    db: EnvelopeStore,
    board_id: bytes,
    envelopes: Iterable[Envelope],
    heads: Mapping[bytes, FeedHead],
    open_change: OpenChange | None,
    forked: Mapping[bytes, int] | None = None,
) -> IngestResult:
    """Plan, check and store one batch. Must run inside ``db.write()``.

    Uses only the :class:`~p2paid.storage.base.EnvelopeStore` port.

    Args:
        heads: the feed heads the caller has caught up to (``db.heads`` if unsure).
            A proven fork lowers the forked author's head: callers read the heads of
            ``result.forks``' authors again.
        open_change: decrypts and checks one change (members), or None (blind).
        forked: ``author -> seq`` of the forks already known (``db.forks``).

    Returns:
        The result; ``accepted`` is in per-author seq order and already stored.
    """
    plan = plan_batch(
        board_id, envelopes, heads, lambda a, lo, hi: db.held_hashes(board_id, a, lo, hi),
        forked=forked, fetch=lambda a, seq: db.envelope_at(board_id, a, seq),
    )
    result = IngestResult(duplicates=plan.duplicates, gaps=plan.gaps)
    result.rejected.extend(plan.rejected)
    for proof in plan.forks.values():
        if record_fork(db, board_id, proof):
            result.forks.append(proof)
    for run in plan.runs.values():
        for index, env in enumerate(run):
            if open_change is None:
                result.accepted.append(Accepted(env, None, None))
                continue
            try:
                header, change = open_change(env)
            except EnvelopeError as exc:
                result.rejected.append(Rejection(env, exc))
                result.rejected.extend(
                    Rejection(later, ChainError(f"seq {later.seq}: follows a refused envelope"))
                    for later in run[index + 1 :]
                )
                break
            result.accepted.append(Accepted(env, header, change))
    if result.accepted:
        result.last_id = db.insert_envelopes(
            board_id,
            (
                (a.envelope.author, a.envelope.seq, a.envelope.hash, a.envelope.raw,
                 None if a.header is None else a.header.hash)
                for a in result.accepted
            ),
        )
    _record(db, board_id, result.rejected)
    return result


@final
@dataclass(slots=True)
class CheckpointResult:
    """What became of one checkpoint offered (SPEC 8a.4)."""

    #: stored as the author's feed ``1..seq`` (nothing of the author was held)
    taken: bool = False
    #: stored beside the author's envelopes, whose head at its seq it shares
    kept: bool = False
    #: (members) stored as the continuation of the author's feed held up to a lower seq
    extended: bool = False
    #: an equal or longer checkpoint of the author was held already
    duplicate: bool = False
    #: offer this head as an ordinary envelope (a duplicate, a fork proof, one beyond
    #: a gap): the checkpoint neither starts the feed nor matches what is held
    head: Envelope | None = None
    rejected: Rejection | None = None
    last_id: int = 0


def ingest_checkpoint(
    db: CheckpointStore,
    board_id: bytes,
    checkpoint: Checkpoint,
    heads: Mapping[bytes, FeedHead],
    check_member: CheckMember | None,
    forked: Mapping[bytes, int] | None = None,
    extend_member: ExtendMember | None = None,
) -> CheckpointResult:
    """Check and store one decoded checkpoint of ``board_id``. Must run inside ``db.write()``.

    A checkpoint is taken as the author's feed when nothing of the author is held, and
    kept beside the envelopes when the envelope held at its seq is its head (to serve
    peers that hold nothing). Otherwise its head goes the way of any envelope (the caller
    offers :attr:`CheckpointResult.head` to :func:`ingest`): a head held is a duplicate,
    another one proves a fork with two envelopes anyone can check.
    """
    author = checkpoint.author
    ends = (forked or {}).get(author)
    if ends is not None and checkpoint.seq >= ends:
        return CheckpointResult(rejected=Rejection(checkpoint.head, ForkedFeedError(
            f"its author forked the feed at seq {ends}")))
    head = heads.get(author, EMPTY_HEAD).seq
    if head:
        if head < checkpoint.seq and extend_member is not None:
            return _extend(db, board_id, checkpoint, head, extend_member)
        if head < checkpoint.seq or db.held_hashes(
                board_id, author, checkpoint.seq, checkpoint.seq).get(checkpoint.seq) \
                != checkpoint.head.hash:
            return CheckpointResult(head=checkpoint.head)
        held = db.checkpoint(board_id, author)
        if held is not None and held[0] >= checkpoint.seq:
            return CheckpointResult(duplicate=True)
    try:
        verify_checkpoint(checkpoint)
        head_hash = None if check_member is None else check_member(checkpoint)
    except EnvelopeError as exc:
        # Not remembered by the head's hash: the head may be a valid envelope, which
        # members holding the feed as envelopes accept (a refused checkpoint is
        # offered again by a later sync, at its author's cost).
        return CheckpointResult(rejected=Rejection(checkpoint.head, exc))
    db.put_checkpoint(board_id, author, checkpoint.seq, checkpoint.hash, checkpoint.raw)
    if head:
        return CheckpointResult(kept=True)
    last_id = db.insert_envelopes(board_id, [(author, checkpoint.seq, checkpoint.head.hash,
                                              checkpoint.head.raw, head_hash)])
    return CheckpointResult(taken=True, last_id=last_id)


def _extend(db: CheckpointStore, board_id: bytes, checkpoint: Checkpoint, held: int,
            extend_member: ExtendMember) -> CheckpointResult:
    """A member holding the author's feed up to ``held`` (below the checkpoint's seq)
    takes the checkpoint as its continuation, if its content holds that feed (SPEC
    8a.4): it stores the checkpoint and the head as envelope ``seq``."""
    try:
        verify_checkpoint(checkpoint)
        head_hash = extend_member(checkpoint, held)
    except EnvelopeError as exc:
        return CheckpointResult(rejected=Rejection(checkpoint.head, exc))
    if head_hash is None:
        return CheckpointResult(head=checkpoint.head)
    db.put_checkpoint(board_id, checkpoint.author, checkpoint.seq, checkpoint.hash,
                      checkpoint.raw)
    last_id = db.insert_envelopes(board_id, [(checkpoint.author, checkpoint.seq,
                                              checkpoint.head.hash, checkpoint.head.raw,
                                              head_hash)])
    return CheckpointResult(extended=True, last_id=last_id)


def merge_results(first: IngestResult, second: IngestResult) -> IngestResult:
    """Two ingests of one write, as one result (``first`` is extended and returned)."""
    first.accepted.extend(second.accepted)
    first.duplicates += second.duplicates
    first.rejected.extend(second.rejected)
    first.gaps.extend(second.gaps)
    first.forks.extend(second.forks)
    first.last_id = max(first.last_id, second.last_id)
    return first


def record_fork(db: EnvelopeStore, board_id: bytes, proof: ForkProof) -> bool:
    """Keep a verified fork proof and end the author's stored feed before it.

    Must run inside ``db.write()``. Returns False if an equal or lower fork of the
    author was already known (nothing changes then).
    """
    row = ForkRow(proof.author, proof.seq, proof.first.raw, proof.second.raw)
    if not db.record_fork(board_id, row, now_ms()):
        return False
    db.delete_feed_from(board_id, proof.author, proof.seq)
    return True


def _record(db: EnvelopeStore, board_id: bytes, rejected: list[Rejection]) -> None:
    """Remember refusals that prove an author misbehaved: a few per author, no more."""
    now = now_ms()
    counts: dict[bytes, int] = {}
    for rejection in rejected:
        env = rejection.envelope
        if env is None or not isinstance(rejection.error, _RECORDED):
            continue
        if env.author not in counts:
            counts[env.author] = db.rejection_count(board_id, env.author)
        if counts[env.author] >= MAX_RECORDED_PER_AUTHOR:
            continue
        counts[env.author] += 1
        db.record_rejection(
            board_id, env.author, env.seq, env.hash, rejection.error.code,
            str(rejection.error), None, now, rejection.error.change_hash,
        )
