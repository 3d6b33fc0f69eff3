"""The envelope store port: what ingest and a blind replica need from storage.

:class:`EnvelopeStore` is the whole contract between the replication engine and a
store of signed envelopes: per-author feeds with their heads, the refusals worth
remembering, proven forks, and a write transaction that is durable when it ends.
:class:`~p2paid.storage.sqlite.Database` implements it for one node or relay; a
relay cluster's shared store is the second implementation. Every implementation
runs :func:`p2paid.storage.conformance.check_envelope_store`.

What an implementation must guarantee (SPEC 12):

- ``(board_id, author, seq)`` is unique: inserting a second envelope there fails
  with :class:`~p2paid.errors.StorageError` and leaves the transaction to roll back;
- :meth:`EnvelopeStore.write` is all or nothing, and durable once it returns;
  nested use joins the outer transaction;
- ``insert_envelopes`` returns an arrival counter that only grows, so that readers
  can catch up with what other writers added.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol, final

from p2paid.core.feed import FeedHead

__all__ = ["CheckpointStore", "EnvelopeStore", "ForkRow", "NewEnvelope"]

#: ``(author, seq, envelope hash, envelope bytes, change hash or None)``
NewEnvelope = tuple[bytes, int, bytes, bytes, bytes | None]


@final
@dataclass(frozen=True, slots=True)
class ForkRow:
    """Proof that ``author`` forked its feed at ``seq``: two envelopes, both signed."""

    author: bytes
    seq: int
    first: bytes
    second: bytes


class EnvelopeStore(Protocol):
    """Signed envelopes per board and author, refusals and fork proofs."""

    def write(self) -> AbstractContextManager[None]:
        """A write transaction: all or nothing, durable on exit; nested use joins it.

        Raises:
            StorageError: the store cannot be locked or the commit failed.
        """
        ...

    def heads(self, board_id: bytes) -> dict[bytes, FeedHead]:
        """The newest envelope held per author of a board."""
        ...

    def held_hashes(self, board_id: bytes, author: bytes, lo: int, hi: int) -> dict[int, bytes]:
        """``seq -> envelope hash`` of the author's envelopes held with ``lo <= seq <= hi``."""
        ...

    def envelope_at(self, board_id: bytes, author: bytes, seq: int) -> bytes | None:
        """The envelope held at one position, or None."""
        ...

    def insert_envelopes(self, board_id: bytes, rows: Iterable[NewEnvelope]) -> int:
        """Store new envelopes; returns the arrival counter of the last one.

        Must run inside :meth:`write`.

        Raises:
            StorageError: a position is already taken, or the store failed.
        """
        ...

    def read_feed(self, board_id: bytes, author: bytes, after: int, max_bytes: int) -> list[bytes]:
        """Envelopes ``after+1, after+2, ...`` of one author: the first one held (if
        any), then as many more as fit in ``max_bytes``."""
        ...

    def delete_feed_from(self, board_id: bytes, author: bytes, seq: int) -> None:
        """Forget the author's envelopes from ``seq`` on. Must run inside :meth:`write`."""
        ...

    def record_rejection(
        self, board_id: bytes, author: bytes, seq: int, hash_: bytes, code: str, detail: str,
        data: bytes | None, now: int, change_hash: bytes | None = None,
    ) -> None:
        """Remember one refusal (once per envelope hash). Must run inside :meth:`write`."""
        ...

    def rejection_count(self, board_id: bytes, author: bytes) -> int:
        """How many refusals of the author's envelopes are remembered on the board."""
        ...

    def forks(self, board_id: bytes) -> dict[bytes, ForkRow]:
        """The proven fork of each forked author of a board."""
        ...

    def record_fork(self, board_id: bytes, fork: ForkRow, now: int) -> bool:
        """Keep a proof if it is the author's first or lowest; True if kept.

        Must run inside :meth:`write`. Does not touch the feed (see
        :func:`p2paid.storage.ingest.record_fork`).
        """
        ...

    def board_sizes(self) -> dict[bytes, int]:
        """Bytes held per board: envelopes, and both envelopes of each fork proof."""
        ...


class CheckpointStore(EnvelopeStore, Protocol):
    """An envelope store that also keeps checkpoints (SPEC 8a): one per author, the one
    reaching furthest; ``delete_feed_from`` drops a checkpoint that reaches its seq."""

    def put_checkpoint(self, board_id: bytes, author: bytes, seq: int, hash_: bytes,
                       data: bytes) -> None:
        """Keep a verified checkpoint (inside ``write()``)."""
        ...

    def checkpoint(self, board_id: bytes, author: bytes) -> tuple[int, bytes] | None:
        """``(seq, bytes)`` of the author's checkpoint, if one is held."""
        ...
