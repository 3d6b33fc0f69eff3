"""The replica of one process of a relay cluster: envelopes held blind in PostgreSQL.

:class:`ClusterReplica` is :class:`~p2paid.relay.replica.RelayReplica`'s twin for a
:class:`~p2paid.storage.pg.store.PgStore` that other processes write too. Its
:meth:`~ClusterReplica.receive` runs in a worker thread (the relay's connections are
driven with ``receive_in_thread``) and does everything inside one transaction:

1. lock the board's ``board_bytes`` row, so writers of one board take turns, in this
   process and the others (two processes given one author's feed at once never store
   two envelopes at one position, nor refuse a valid extension: the second reads the
   feed heads the first committed);
2. check the per-board cap and the quotas against the shared tables (exact); the total
   cap is checked when the transaction adds its bytes to the cluster's total, just
   before the commit;
3. verify and store (:func:`~p2paid.storage.ingest.ingest`), and ``NOTIFY`` the board
   (id only) so that every process pushes it to its own clients.

What it caches (feed heads, forks per board) is dropped when this or another process
stores into the board (:meth:`ClusterReplica.invalidate`), under a lock with a
generation count so that a read racing with a write never puts stale heads back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Final, final

from p2paid.core.codes import RefusedCode, Role
from p2paid.core.envelope import Envelope
from p2paid.core.feed import FeedHead, ForkProof
from p2paid.core.replication import BoardAccess, Received
from p2paid.relay.pgstate import ClusterLedger, ClusterTokens
from p2paid.relay.replica import RelayLimits, RelayStats, decode_batch
from p2paid.relay.state import ClientInfo, Quotas
from p2paid.storage.ingest import ingest, record_fork
from p2paid.storage.pg.store import ConflictError, PgStore, TotalFullError

__all__ = ["CHANNEL", "ClusterReplica", "decode_notice", "encode_notice"]

log = logging.getLogger("p2paid.relay.cluster")

#: The LISTEN/NOTIFY channel of stored envelopes.
CHANNEL: Final = "p2paid_envelopes"
#: Attempts of a write that met a conflict (a deadlock victim, a taken position).
_ATTEMPTS: Final = 5
#: Bytes of recent reads kept for the other readers of a board.
READ_CACHE_BYTES: Final = 8 * 1024 * 1024


def encode_notice(board_id: bytes, origin: str) -> str:
    """A notification's payload: the board id and the process that stored (ids only)."""
    return f"{board_id.hex()} {origin}"


def decode_notice(payload: str) -> tuple[bytes, str] | None:
    """``(board_id, origin)`` of a payload; None if it is not one of ours."""
    board, _, origin = payload.partition(" ")
    try:
        board_id = bytes.fromhex(board)
    except ValueError:
        return None
    return (board_id, origin) if len(board_id) == 32 else None


class _Full(Exception):
    """The upload does not fit a cap or a quota (rolls the transaction back)."""

    def __init__(self, code: str, text: str, quota: bool) -> None:
        super().__init__(text)
        self.code, self.text, self.quota = code, text, quota


@final
class ClusterReplica:
    """A process's view of the envelopes its cluster holds in PostgreSQL.

    Args:
        origin: this process's id, carried in its notifications.
    """

    def __init__(self, store: PgStore, limits: RelayLimits, origin: str) -> None:
        self._store = store
        self._limits = limits
        self.origin = origin
        self.tokens = ClusterTokens(store)
        self.ledger = ClusterLedger(store)
        self._quotas = Quotas(limits.quota_per_key, limits.quota_per_address)
        self._lock = threading.Lock()
        self._heads: dict[bytes, dict[bytes, FeedHead]] = {}
        self._forks: dict[bytes, dict[bytes, int]] = {}
        self._generation: dict[bytes, int] = {}
        self._epoch = 0
        self._changed: set[bytes] = set()
        self._sizes: dict[bytes, int] = store.board_sizes()
        self._full_logged: dict[bytes, float] = {}
        #: recent reads: ``(board, author, after, max_bytes) -> (generation, envelopes)``
        self._reads: dict[tuple[bytes, bytes, int, int],
                          tuple[tuple[int, int], list[bytes]]] = {}
        self._read_bytes = 0
        self.stats = RelayStats()

    # ------------------------------------------------------------------ caches

    def invalidate(self, board_id: bytes) -> None:
        """The board changed (here or in another process): forget what is cached."""
        with self._lock:
            self._generation[board_id] = self._generation.get(board_id, 0) + 1
            self._heads.pop(board_id, None)
            self._forks.pop(board_id, None)

    def invalidate_all(self) -> None:
        """Notifications may have been missed: forget every cached board."""
        with self._lock:
            self._epoch += 1
            self._heads.clear()
            self._forks.clear()

    def take_changed(self) -> set[bytes]:
        """Boards this process stored into since the last call."""
        with self._lock:
            changed, self._changed = self._changed, set()
        return changed

    def _gen(self, board_id: bytes) -> tuple[int, int]:
        return self._epoch, self._generation.get(board_id, 0)

    def _board_heads(self, board_id: bytes) -> dict[bytes, FeedHead]:
        with self._lock:
            heads = self._heads.get(board_id)
            generation = self._gen(board_id)
        if heads is None:
            heads = self._store.heads(board_id)
            with self._lock:
                if self._gen(board_id) == generation:
                    self._heads[board_id] = heads
        return heads

    def _forked(self, board_id: bytes) -> dict[bytes, int]:
        with self._lock:
            forked = self._forks.get(board_id)
            generation = self._gen(board_id)
        if forked is None:
            forked = {a: f.seq for a, f in self._store.forks(board_id).items()}
            with self._lock:
                if self._gen(board_id) == generation:
                    self._forks[board_id] = forked
        return forked

    def refresh_sizes(self) -> None:
        """Read the bytes held per board again (for status and metrics)."""
        self._sizes = self._store.board_sizes()

    # ------------------------------------------------------------------ Replica

    @property
    def role(self) -> Role:
        return Role.RELAY

    @property
    def total_bytes(self) -> int:
        return sum(self._sizes.values())

    def board_count(self) -> int:
        return len(self._sizes)

    def boards(self) -> Sequence[BoardAccess]:
        return [BoardAccess(b, None) for b in self._sizes]

    def accepts(self, board_id: bytes) -> tuple[str, str] | None:
        allowed = self._limits.allowed_boards
        if allowed is not None and board_id not in allowed:
            return (RefusedCode.NOT_ALLOWED,
                    "this relay carries only the boards its operator allows")
        return None

    def vector(self, board_id: bytes) -> Mapping[bytes, int]:
        return {a: h.seq for a, h in self._board_heads(board_id).items()}

    def heads(self, board_id: bytes) -> Mapping[bytes, FeedHead]:
        return self._board_heads(board_id)

    def hash_at(self, board_id: bytes, author: bytes, seq: int) -> bytes | None:
        return self._store.held_hashes(board_id, author, seq, seq).get(seq)

    def forked(self, board_id: bytes) -> Mapping[bytes, int]:
        return self._forked(board_id)

    def fork_evidence(self, board_id: bytes, author: bytes) -> tuple[bytes, bytes] | None:
        fork = self._store.forks(board_id).get(author)
        return None if fork is None else (fork.first, fork.second)

    def read(self, board_id: bytes, author: bytes, after: int, max_bytes: int) -> list[bytes]:
        """Envelopes after ``after``: one query for all the readers of a board that ask
        for the same (a live post goes to every reader connected here), dropped when the
        board changes."""
        key = (board_id, author, after, max_bytes)
        with self._lock:
            generation = self._gen(board_id)
            cached = self._reads.get(key)
        if cached is not None and cached[0] == generation:
            return cached[1]
        envelopes = self._store.read_feed(board_id, author, after, max_bytes)
        size = sum(len(e) for e in envelopes)
        with self._lock:
            if self._gen(board_id) == generation and size <= READ_CACHE_BYTES:
                if self._read_bytes + size > READ_CACHE_BYTES:
                    self._reads.clear()
                    self._read_bytes = 0
                self._reads[key] = (generation, envelopes)
                self._read_bytes += size
        return envelopes

    def record_fork(self, board_id: bytes, first: bytes, second: bytes) -> bool:
        """Learn a fork from evidence a client sent.

        Raises:
            EnvelopeError: the evidence proves nothing (the sender's fault).
        """
        proof = ForkProof.check(board_id, Envelope.decode(first), Envelope.decode(second))
        if proof.author not in self._board_heads(board_id):
            return False
        proof_bytes = len(first) + len(second)
        try:
            with self._store.write(total_cap=self._limits.max_total_bytes):
                size = self._store.lock_board(board_id)
                if size + proof_bytes > self._limits.max_board_bytes:
                    return False
                if not record_fork(self._store, board_id, proof):
                    return False
                self._store.notify(CHANNEL, encode_notice(board_id, self.origin))
        except TotalFullError:
            return False
        self._stored_into(board_id)
        return True

    def _stored_into(self, board_id: bytes) -> None:
        self.invalidate(board_id)
        with self._lock:
            self._changed.add(board_id)

    def receive(self, board_id: bytes, envelopes: Sequence[bytes],
                client: ClientInfo | None = None) -> Received:
        """Verify and store a batch in one transaction (see the module's docstring).
        Blocks: call it from a worker thread."""
        refusal = self.accepts(board_id)
        if refusal is not None:
            return Received(notice=refusal)
        decoded, rejected = decode_batch(envelopes)
        incoming = sum(len(e.raw) for e in decoded)
        for attempt in range(_ATTEMPTS):
            try:
                got = self._receive_once(board_id, decoded, incoming, client)
                break
            except ConflictError as exc:
                if attempt == _ATTEMPTS - 1:
                    raise
                log.info("board %s: %s; trying again", board_id.hex()[:12], exc)
                time.sleep(0.005 * (attempt + 1))
            except TotalFullError:
                got = self._refuse(board_id, _Full(
                    RefusedCode.BOARD_FULL, "this relay has no room for more of this board",
                    False), len(decoded))
                break
            except _Full as full:
                got = self._refuse(board_id, full, len(decoded))
                break
        got.rejected[:0] = rejected
        with self._lock:
            self.stats.refused += len(rejected)
        return got

    def _refuse(self, board_id: bytes, full: _Full, count: int) -> Received:
        with self._lock:
            if full.quota:
                self.stats.refused_quota += count
            else:
                self.stats.refused_full += count
        self._log_once(board_id, "board %s refused: %s", board_id.hex()[:12], full.text)
        return Received(notice=(full.code, full.text))

    def _receive_once(self, board_id: bytes, decoded: list[Envelope], incoming: int,
                      client: ClientInfo | None) -> Received:
        limits = self._limits
        with self._store.write(total_cap=limits.max_total_bytes):
            size = self._store.lock_board(board_id)
            if (size + incoming > limits.max_board_bytes
                    or self._store.total_bytes() + incoming > limits.max_total_bytes):
                raise _Full(RefusedCode.BOARD_FULL,
                            "this relay has no room for more of this board", False)
            if client is not None and decoded:
                over = self.ledger.check(board_id, size, incoming, client, self._quotas)
                if over is not None:
                    raise _Full(RefusedCode.QUOTA,
                                f"{over}; ask the relay's operator for an access token", True)
            heads = self._store.heads_of(board_id, (env.author for env in decoded))
            forked = {a: f.seq for a, f in self._store.forks(board_id).items()}
            result = ingest(self._store, board_id, decoded, heads, None, forked=forked)
            if result.accepted:
                self.ledger.stored(board_id, size, client)
            if result.accepted or result.forks:
                self._store.notify(CHANNEL, encode_notice(board_id, self.origin))
        if result.accepted or result.forks:
            self._stored_into(board_id)
            stored = sum(len(a.envelope.raw) for a in result.accepted)
            self._sizes = {**self._sizes, board_id: size + stored}
        rejected = [r.error for r in result.rejected]
        with self._lock:
            self.stats.stored += len(result.accepted)
            self.stats.duplicates += result.duplicates
            self.stats.refused += len(rejected)
        return Received(len(result.accepted), result.duplicates, rejected)

    def _log_once(self, board_id: bytes, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._full_logged.get(board_id, -3600.0) > 60:
            self._full_logged[board_id] = now
            log.warning(message, *args)

