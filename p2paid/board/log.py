"""The replica engine of one board: its feeds in the store and its Automerge document,
kept in step.

:class:`BoardLog` verifies, stores and applies what arrives (a peer's batch, a
bundle, what another process on the same data dir stored), makes the local
authors' changes (the node's own member's and each paired device's) durable as the
next envelopes of their feeds, and keeps snapshots.
The domain (needs, offers, claims, relays) is :class:`p2paid.board.board.Board`,
which reads and writes through it.

Theory of operation
-------------------
The document is in one of two states:

======== =============================================== ===================================
state    what holds                                      leaves it
======== =============================================== ===================================
UNLOADED no document in memory (the store is the truth)  :meth:`load` (also on first use)
LOADED   the document has every applied change; deferred :meth:`_discard`: a failed
         changes are stored, checked, and applied before commit, a proven fork, a change
         any read (in each author's seq order)           out of order, or Automerge panics
======== =============================================== ===================================

Loading applies the snapshot (if any) and every stored change after it. If
Automerge panics while applying, :meth:`_recover` refuses the change being applied
(when it is known), discards the document and marks the log *careful*: the next load
applies one change per Automerge call, so that each culprit is found. Every stored
change was checked against the rules (:mod:`p2paid.automerge.rules`) before it was
stored, so this is the second line of defence.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final, final

from automerge.core import Document
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from p2paid.automerge.chunk import ChangeHeader
from p2paid.automerge.rules import AuthorState, FeedRules, check_change
from p2paid.board.checkpoint import (
    CheckedCheckpoint,
    adoptable_document,
    check_checkpoint,
    check_continuation,
    seal_feed_checkpoint,
)
from p2paid.board.document import BoardDocument, DocumentBrokenError, SectionWriter
from p2paid.board.model import BoardEvent
from p2paid.core.checkpoint import Checkpoint, decode_record, is_checkpoint, verify_checkpoint
from p2paid.core.envelope import Envelope, open_envelope, seal_envelope
from p2paid.core.feed import EMPTY_HEAD, FeedHead, ForkProof, Rejection
from p2paid.core.identity import AuthorKey, fingerprint
from p2paid.core.memory import release_freed_memory
from p2paid.errors import (
    EnvelopeError,
    InvalidChangeError,
    LocalProtocolError,
    P2paidError,
    StorageError,
    UsageError,
)
from p2paid.storage.base import ForkRow
from p2paid.storage.ingest import (
    CONTENT_REFUSALS,
    Accepted,
    IngestResult,
    ingest,
    ingest_checkpoint,
    merge_results,
    record_fork,
)
from p2paid.storage.sqlite import Database, EnvelopeRow, SnapshotRow

__all__ = [
    "MAX_HELD_BYTES",
    "MAX_HELD_BYTES_PER_AUTHOR",
    "SNAPSHOT_EVERY",
    "SNAPSHOT_ON_CLOSE",
    "BoardLog",
    "ReceiveReport",
]

log = logging.getLogger("p2paid.board")

#: A snapshot costs O(document) (about 40 ms at 10,000 items), so it is taken when the
#: board is closed or the node is idle once this many changes were applied since the
#: last one ...
SNAPSHOT_ON_CLOSE: Final = 200
#: ... and in the middle of steady work past this many (bounding what an open
#: re-applies). A bulk sync applies in one go when the link falls quiet, not here.
SNAPSHOT_EVERY: Final = 2000
#: Most bytes of out-of-order envelopes held in memory while waiting for earlier ones,
#: per board and per author (they are unverified until the gap fills, so the bound is
#: what matters); what does not fit is dropped and offered again by a later sync.
MAX_HELD_BYTES: Final = 16 * 1024 * 1024
MAX_HELD_BYTES_PER_AUTHOR: Final = 2 * 1024 * 1024
_MAX_RELOADS: Final = 50
#: A local author's feed is checkpointed (SPEC 8a) when idle, once it grew by this many
#: envelopes since its last checkpoint.
CHECKPOINT_AFTER: Final = 64
#: Most checkpoints checked ahead of a receive (one Checkpoints message holds 1,024).
MAX_PRECHECKED: Final = 1024
#: Most bytes of checkpoints' content an empty board keeps to load as one document.
MAX_STASHED_BYTES: Final = 32 * 1024 * 1024

Clock = Callable[[], int]


@final
@dataclass(slots=True)
class ReceiveReport:
    """What :meth:`BoardLog.receive` did with a batch."""

    accepted: int = 0
    duplicates: int = 0
    #: arrived before an earlier envelope of the same author; kept in memory
    held: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    #: changes applied to the document (can exceed ``accepted`` when held ones became ready)
    applied: list[ChangeHeader] = field(default_factory=list)
    #: forks the batch proved: each author's feed now ends before its proof's seq
    forks: list[ForkProof] = field(default_factory=list)


def _load_for_applying(saved: bytes) -> Document:
    """A saved document, ready to take changes fast.

    Automerge 0.7 applies a change that is concurrent with a loaded document's heads
    (as every member's change is: each depends only on its author's previous one)
    about 40 times slower than one applied to a document it built itself, even in a
    batch: 0.41 ms against 0.026 ms per change at 10,000. A copy made with ``fork_at``
    of all heads (about 0.05 s per 10,000 changes, once per open) is such a document.
    """
    loaded = Document.load(saved)
    heads = loaded.get_heads()
    if not heads:
        return loaded
    # (fork_at exists in automerge-py 0.2.0.dev4 but not in its type stubs)
    forked: Document = loaded.fork_at(heads)  # type: ignore[attr-defined]
    del loaded
    release_freed_memory()  # the loaded copy's pages, and the saved bytes' parse
    return forked


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector (if it runs) for a bounded bulk step."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _envelope(value: bytes | Envelope) -> Envelope:
    return value if isinstance(value, Envelope) else Envelope.decode(value)


@final
class BoardLog:
    """One board's feeds and document. Made by :class:`~p2paid.board.board.Board`.

    Args:
        db: the store.
        board_id: the board.
        author_key: the node's own member's key (it signs that member's feed; a paired
            device's key is given to :meth:`write`).
        cipher: ``ChaCha20Poly1305(content_key)`` of the board.
        name: the board's name, for log lines.
        clock: milliseconds since the epoch.
    """

    def __init__(self, db: Database, board_id: bytes, author_key: AuthorKey,
                 cipher: ChaCha20Poly1305, name: str, clock: Clock) -> None:
        self._db = db
        self.id = board_id
        self._author_key = author_key
        self.author = author_key.public
        self._cipher = cipher
        self.name = name
        self._clock = clock
        self._doc: BoardDocument | None = None
        self._heads: dict[bytes, FeedHead] = {}
        self._forked: dict[bytes, int] = {}
        self._seen_id = 0
        self._held: dict[tuple[bytes, int], Envelope] = {}
        self._since_snapshot = 0
        self._careful = False
        self._grouped = False
        self._tracking = False
        self._refused_envelopes: set[bytes] = set()
        self._purged: list[tuple[ChangeHeader, str]] = []
        self._deferred: list[tuple[ChangeHeader, bytes]] = []
        #: checkpoints taken for an empty document, whose heads wait in ``_deferred``:
        #: loaded as one document when the deferred changes are applied (see flush)
        self._deferred_feeds: list[CheckedCheckpoint] = []
        self._rules = FeedRules(self._author_state, self._has_changes)
        #: authors this node writes as: its own member and the devices it holds keys of
        self._local_authors: set[bytes] = {self.author}
        #: the keys of local authors this log has written with (to seal checkpoints)
        self._local_keys: dict[bytes, AuthorKey] = {self.author: author_key}
        #: rules state after each checkpoint checked in the open write, by its hash
        self._checked: dict[bytes, CheckedCheckpoint] = {}
        #: ``author -> seq`` each local author's feed was last checkpointed to (or tried)
        self._sealed_to: dict[bytes, int] | None = None
        #: changes of checkpoints that continue a held feed in the open write, by hash
        self._extended: dict[bytes, list[tuple[ChangeHeader, bytes]]] = {}
        #: member checks of checkpoints made ahead, by checkpoint hash (see precheck)
        self._prechecked: dict[bytes, CheckedCheckpoint | EnvelopeError] = {}
        #: checkpoints the open write takes for an empty document (see _take_checkpoints)
        self._taking: list[CheckedCheckpoint] = []

    # ------------------------------------------------------------------ states

    def _discard(self, why: str) -> None:
        """LOADED -> UNLOADED: the document no longer matches the store."""
        if self._doc is not None:
            log.debug("board %s: dropping the document in memory (%s)", self.name, why)
        self._doc = None
        self._deferred_feeds.clear()  # (loading reads them from the store)

    def _recover(self, exc: DocumentBrokenError) -> None:
        """Automerge panicked: refuse the culprit if known, and reload carefully."""
        log.error("board %s: %s", self.name, exc)
        self._careful = True
        self._discard("automerge panicked")
        if exc.culprit is not None:
            self._purge([(exc.culprit, "automerge panicked applying it")])

    @property
    def has_deferred(self) -> bool:
        """Stored, checked changes wait to be applied (see :meth:`flush`)."""
        return bool(self._deferred or self._deferred_feeds)

    @property
    def document(self) -> BoardDocument:
        """The board's document, loaded from the store on first use (and with any
        deferred changes applied: see :meth:`receive`)."""
        if self._doc is not None and self._doc.stale:
            self._discard("a change came out of order")
        if self._doc is None:
            self._load()
        if self._deferred:
            self.flush()
        assert self._doc is not None
        return self._doc

    @property
    def applied_count(self) -> int:
        """Changes in the loaded document now (deferred ones not counted, none applied)."""
        return 0 if self._doc is None else sum(self._doc.applied_seq.values())

    def flush(self, max_changes: int | None = None) -> list[ChangeHeader]:
        """Apply changes that :meth:`receive` stored with ``defer_apply``: all of them, or
        the first ``max_changes`` (so that a caller can keep each step short; see
        :attr:`has_deferred`)."""
        if not self._deferred or self._doc is None:
            return []
        self._adopt_deferred_feeds()
        if max_changes is None or max_changes >= len(self._deferred):
            changes, self._deferred = self._deferred, []
        else:
            changes = self._deferred[:max_changes]
            self._deferred = self._deferred[max_changes:]
        rest, self._deferred = self._deferred, []
        try:
            applied = self._apply_guarded(changes)
        finally:
            self._deferred = [*self._deferred, *rest]
        for header, reason in self._purged:
            log.warning("board %s: stored change %d of %s refused on apply: %s", self.name,
                        header.seq, fingerprint(header.actor), reason)
        self._purged.clear()
        self._since_snapshot += len(applied)
        return applied

    def track_events(self) -> None:
        """Record a :class:`~p2paid.board.model.BoardEvent` for every change from now on."""
        self._tracking = True
        self.load().track_events()

    def take_events(self) -> list[BoardEvent]:
        """Events recorded since the last call (see :meth:`track_events`)."""
        return [] if self._doc is None else self._doc.take_events()

    def load(self) -> BoardDocument:
        """Load the document now (otherwise it loads on first use); returns it."""
        return self.document

    def _load(self) -> None:
        for _ in range(_MAX_RELOADS):
            try:
                self._load_once()
                return
            except DocumentBrokenError as exc:
                self._recover(exc)  # and load again, one change per Automerge call
        raise StorageError(f"board {self.name!r} cannot be loaded: too many unusable changes")

    def _load_once(self) -> None:
        db = self._db
        with db.read():
            snap = db.snapshot(self.id)
            index = db.change_index(self.id)
            heads = db.heads(self.id)
            forks = db.forks(self.id)
            self._refused_envelopes = db.rejected_hashes(
                self.id, (cls.code for cls in CONTENT_REFUSALS))
        automerge_doc: Document | None = None
        vector: dict[bytes, int] = {}
        sections: dict[bytes, int] = {}
        max_ops: dict[bytes, int] = {}
        if snap is not None:
            try:
                automerge_doc = _load_for_applying(snap.doc)
                vector, sections, max_ops = snap.vector, snap.sections, snap.max_ops
            except Exception as exc:  # automerge raises bare Exception on a corrupt save
                log.warning("board %s: snapshot unreadable (%s); rebuilding", self.name, exc)
        last_hashes = {a: h for _, a, s, h in index if h is not None and s == vector.get(a)}
        # Envelopes never opened (no change hash) are applied again whatever the
        # snapshot says: nothing may sit in a joined board unchecked.
        tail = [i for i, a, s, h in index if s > vector.get(a, 0) or h is None]
        doc = BoardDocument(self.author, automerge_doc, last_hashes, vector, sections, max_ops)
        doc.local_authors.update(self._local_authors)
        doc.careful = self._careful
        if self._tracking:
            doc.track_events()
        self._doc = doc
        self._heads = heads
        self._forked = {a: f.seq for a, f in forks.items()}
        self._seen_id = max((i for i, _, _, _ in index), default=0)
        self._since_snapshot = len(tail)
        self._rules = FeedRules(self._author_state, self._has_changes)
        rows = db.envelopes_by_id(tail) if tail else []
        try:
            self._apply(self._check_stored(self._open_rows(rows)))
        except BaseException:
            self._discard("loading failed")
            raise
        doc.careful = False

    def _check_stored(self, changes: list[tuple[ChangeHeader, bytes]]
                      ) -> list[tuple[ChangeHeader, bytes]]:
        """Check stored changes of other members against the rules before applying them
        (the local author's own are trusted); purge what fails."""
        good: list[tuple[ChangeHeader, bytes]] = []
        refused: list[tuple[ChangeHeader, str]] = []
        failed: set[bytes] = set()
        for header, data in changes:
            if header.actor == self.author:
                good.append((header, data))
                continue
            if header.actor in failed:
                continue
            try:
                self._rules.check(header)
            except EnvelopeError as exc:
                failed.add(header.actor)
                refused.append((header, str(exc)))
                continue
            good.append((header, data))
        self._rules.commit()
        if refused:
            self._purge(refused)
        return good

    def _author_state(self, author: bytes) -> AuthorState:
        """Rules state of an author with history, read from the document."""
        if self._deferred:
            self.flush()
        return self.document.author_state(author)

    def _has_changes(self, author: bytes) -> bool:
        """Whether the store holds changes of ``author`` (applied or still deferred: the
        loader applies the deferred ones before it reads the author's state)."""
        return self._heads.get(author, EMPTY_HEAD).seq > 0

    def _apply(self, changes: list[tuple[ChangeHeader, bytes]]) -> list[ChangeHeader]:
        """Apply changes to the document; purge any that Automerge refuses."""
        doc = self._doc
        assert doc is not None
        applied = doc.add_changes(changes)
        refused = doc.take_refused()
        if refused:
            self._purge(refused)
        return applied

    def _purge(self, refused: list[tuple[ChangeHeader, str]]) -> None:
        """Drop stored changes that cannot be applied, with everything later of their
        authors.

        Every honest replica refuses the same changes, so they converge; the
        envelopes' hashes are remembered so a peer offering them again is refused
        before anything is stored.
        """
        now = self._clock()
        with self._db.write():
            for header, reason in refused:
                held = self._db.held_hashes(self.id, header.actor, header.seq, header.seq)
                env_hash = held.get(header.seq)
                if env_hash is None:
                    continue
                log.warning("board %s: refusing change %d of %s: %s", self.name, header.seq,
                            fingerprint(header.actor), reason)
                self._db.record_rejection(self.id, header.actor, header.seq, env_hash,
                                          InvalidChangeError.code, reason, None, now,
                                          header.hash)
                self._db.delete_feed_from(self.id, header.actor, header.seq)
                self._refused_envelopes.add(env_hash)
                self._rules.forget(header.actor)
                self._purged.append((header, reason))
            self._heads = self._db.heads(self.id)

    def _open_rows(self, rows: Iterable[EnvelopeRow]) -> list[tuple[ChangeHeader, bytes]]:
        """Decrypt envelopes this store already verified (bad ones are logged and skipped).

        A row that starts a feed held from a checkpoint (SPEC 8a: nothing stored before
        it) brings the checkpoint's changes before its own."""
        out: list[tuple[ChangeHeader, bytes]] = []
        doc = self._doc
        last: dict[bytes, int] = {}
        for row in rows:
            before = last.get(row.author, doc.applied_seq.get(row.author, 0) if doc else 0)
            last[row.author] = row.seq
            if row.seq > before + 1:
                changes = self._checkpoint_changes(row.author, row.seq)
                if changes:
                    out.extend(c for c in changes if c[0].seq > before)
                    continue
            try:
                env = Envelope.decode(row.data)
                change = open_envelope(env, self._cipher)
                out.append((check_change(env, change), change))
            except P2paidError as exc:
                log.error("board %s: stored envelope %d unreadable: %s", self.name, row.id, exc)
        return out

    def _open(self, env: Envelope) -> tuple[ChangeHeader, bytes]:
        """Decrypt and check a remote envelope's change before it is stored.

        Refusals are remembered by the envelope's own hash only, never by anything
        taken from a payload that failed its checks (a member can put another
        member's change bytes inside its own envelope).
        """
        if env.hash in self._refused_envelopes:
            raise InvalidChangeError(f"seq {env.seq} was refused before: it cannot be applied")
        change = open_envelope(env, self._cipher)
        header = check_change(env, change)
        self._rules.check(header)
        return header, change

    @property
    def seen_id(self) -> int:
        """Arrival counter of the newest stored envelope of this board seen so far."""
        return self._seen_id

    def refresh(self) -> list[ChangeHeader]:
        """Apply envelopes that other processes stored since we last looked."""
        if self._doc is None:
            self._load()
            return []
        return self._catch_up()

    def _catch_up(self) -> list[ChangeHeader]:
        rows = self._db.envelopes_since(self.id, self._seen_id)
        if not rows:
            return []
        for row in rows:
            head = self._heads.get(row.author, EMPTY_HEAD)
            if row.seq > head.seq:
                self._heads[row.author] = FeedHead(row.seq, row.hash)
            # Another process checked these; what we knew of their author is stale.
            self._rules.forget(row.author)
        self._seen_id = rows[-1].id
        if self._doc is None:
            self._load()
        self._forked = {a: f.seq for a, f in self._db.forks(self.id).items()}
        applied = self._apply_guarded(self._open_rows(rows))
        self._since_snapshot += len(applied)
        return applied

    def _apply_guarded(self, changes: list[tuple[ChangeHeader, bytes]]) -> list[ChangeHeader]:
        """:meth:`_apply` (after the deferred changes, which come first in each author's
        feed), reloading the document if Automerge panics."""
        self._adopt_deferred_feeds()
        if self._deferred:
            changes = [*self._deferred, *changes]
            self._deferred = []
        try:
            return self._apply(changes)
        except DocumentBrokenError as exc:
            self._recover(exc)
            self.load()
            return []

    def heads(self) -> dict[bytes, FeedHead]:
        """The newest envelope held per author."""
        self.refresh()
        return dict(self._heads)

    def version_vector(self) -> dict[bytes, int]:
        """``author -> highest contiguous seq`` held."""
        return {a: h.seq for a, h in self.heads().items()}

    def forks(self) -> dict[bytes, ForkRow]:
        """Proven forks of this board's authors (each author's feed ends before its fork)."""
        return self._db.forks(self.id)

    @property
    def forked(self) -> dict[bytes, int]:
        """``author -> seq`` of each proven fork (the author's feed ends before ``seq``)."""
        if self._doc is None:
            self._load()
        return dict(self._forked)

    def receive(
        self, envelopes: Iterable[bytes | Envelope], *, defer_apply: bool = False
    ) -> ReceiveReport:
        """Verify, store and apply envelopes from a peer or a bundle.

        (A batch of thousands of changes makes some 100,000 short-lived, acyclic
        objects; the cyclic garbage collector is paused meanwhile, since scanning
        them again and again cost a quarter of the time.)

        Envelopes that arrive before an earlier one of the same author are held
        in memory until the gap is filled (a bounded number of bytes per author and
        per board; the rest is dropped and fetched again on a later sync). Nothing
        invalid is stored. With ``defer_apply`` the checked, stored changes wait for
        :meth:`flush` (or the next read), so that a stream of large batches costs one
        Automerge call.

        Returns:
            Counts of accepted, duplicate and held envelopes, and each rejection.
        """
        with collector_paused():
            return self._receive(envelopes, defer_apply)

    def _receive(self, envelopes: Iterable[bytes | Envelope], defer_apply: bool
                 ) -> ReceiveReport:
        report = ReceiveReport()
        decoded: list[Envelope] = []
        checkpoints: list[Checkpoint] = []
        for item in envelopes:
            if isinstance(item, Envelope):
                decoded.append(item)
                continue
            try:
                record = decode_record(item)
            except EnvelopeError as exc:
                report.rejected.append(Rejection(None, exc))
                continue
            if isinstance(record, Checkpoint):
                checkpoints.append(record)
            else:
                decoded.append(record)
        if self._doc is None:
            self._load()  # (deferred changes stay deferred: each author's order is kept)
        self._taking = []
        try:
            with self._db.write():
                self._catch_up()
                # A checkpoint starts a feed held nothing of, unless the batch starts
                # it with envelopes; the others meet the feeds as this batch left them.
                starts = {env.author for env in decoded if env.seq == 1}
                first = [cp for cp in checkpoints if cp.author not in starts
                         and not self._heads.get(cp.author, EMPTY_HEAD).seq]
                taken_first = {id(cp) for cp in first}
                later = [cp for cp in checkpoints if id(cp) not in taken_first]
                heads_offered: list[Envelope] = []
                from_checkpoints = self._take_checkpoints(first, heads_offered, report)
                decoded.extend(heads_offered)  # (offered by this batch's sender)
                batch = list(self._held.values()) + decoded
                self._held.clear()
                result = ingest(self._db, self.id, batch, self._heads, self._open,
                                forked=self._forked)
                self._note_ingested(result)
                if later:
                    heads_offered = []
                    from_checkpoints += self._take_checkpoints(later, heads_offered, report)
                    if heads_offered:
                        more = ingest(self._db, self.id, heads_offered, self._heads,
                                      self._open, forked=self._forked)
                        self._note_ingested(more)
                        decoded.extend(heads_offered)  # (offered by this batch's sender)
                        result = merge_results(result, more)
        except BaseException:
            self._rules.rollback()
            self._taking = []
            raise
        self._rules.commit()
        self._stash_feeds(self._taking)
        self._taking = []
        self._hold(result.gaps)
        report.accepted = len(result.accepted)
        report.duplicates = result.duplicates
        report.held = len(self._held)
        report.forks = result.forks
        # Envelopes held from an earlier batch came from someone else: their faults
        # must not be blamed on whoever sent this batch.
        offered = {id(env) for env in decoded}
        for rejection in result.rejected:
            if rejection.envelope is None or id(rejection.envelope) in offered:
                report.rejected.append(rejection)
            else:
                log.info("board %s: a held envelope was refused: %s", self.name,
                         rejection.error)
        changes = from_checkpoints + [(a.header, a.change) for a in result.accepted
                                      if a.header and a.change]
        if result.forks:
            self._end_forked_feeds(result.forks)
        if defer_apply:
            # Stored (durable) and checked; Automerge gets them later in one call.
            self._deferred.extend(changes)
            return report
        self._purged.clear()
        report.applied = self._apply_guarded(changes)
        self._report_purged(report, result.accepted)
        self._since_snapshot += len(report.applied)
        if self._since_snapshot >= SNAPSHOT_EVERY:
            self.save_snapshot()
        return report

    def _note_ingested(self, result: IngestResult) -> None:
        """Move the heads (and the arrival counter) past what an ingest stored."""
        for acc in result.accepted:
            env = acc.envelope
            self._heads[env.author] = FeedHead(env.seq, env.hash)
        if result.forks:
            self._heads = self._db.heads(self.id)
        if result.last_id:
            self._seen_id = max(self._seen_id, result.last_id)

    def _take_checkpoints(self, checkpoints: list[Checkpoint], heads: list[Envelope],
                          report: ReceiveReport) -> list[tuple[ChangeHeader, bytes]]:
        """Store checkpoints (inside the write); the heads to offer as envelopes instead
        join ``heads``. Returns the changes to apply."""
        taken: list[CheckedCheckpoint] = []
        continuing: list[tuple[ChangeHeader, bytes]] = []
        for cp in checkpoints:
            result = ingest_checkpoint(self._db, self.id, cp, self._heads,
                                       self._check_checkpoint, self._forked,
                                       self._extend_checkpoint)
            if result.head is not None:
                heads.append(result.head)
            elif result.rejected is not None:
                report.rejected.append(result.rejected)
            elif result.duplicate or result.kept:
                report.duplicates += 1
            elif result.extended:
                held = self._heads[cp.author].seq
                self._heads[cp.author] = FeedHead(cp.seq, cp.head.hash)
                self._seen_id = max(self._seen_id, result.last_id)
                report.accepted += cp.seq - held
                continuing.extend(self._extended.pop(cp.hash))
            elif result.taken:
                checked = self._checked.pop(cp.hash)
                self._heads[cp.author] = FeedHead(cp.seq, cp.head.hash)
                self._rules.adopt(cp.author, checked.state)
                self._seen_id = max(self._seen_id, result.last_id)
                report.accepted += cp.seq
                taken.append(checked)
        self._checked.clear()
        self._extended.clear()
        if not taken:
            return continuing
        assert self._doc is not None
        if self._doc.is_empty():
            # An empty board takes the checkpoints' documents as its own, loaded as one
            # once the write is stored (see _adopt_deferred_feeds): Automerge need not
            # apply their changes again (SPEC 7 allows any route). Only their heads
            # remain to apply.
            self._taking.extend(taken)
            return [c.head for c in taken] + continuing
        return [change for c in taken for change in c.changes()] + continuing

    def _stash_feeds(self, taken: list[CheckedCheckpoint]) -> None:
        """Keep checkpoints taken for the empty document until the deferred changes are
        applied (they then load as one); only the first keeps its loaded document (it
        is all a single one needs), and past :data:`MAX_STASHED_BYTES` of content they
        are loaded at once, so that a long sync does not hold them all in memory."""
        for checked in taken:
            if self._deferred_feeds:
                checked.release()
            self._deferred_feeds.append(checked)
        if sum(len(c.content) for c in self._deferred_feeds) > MAX_STASHED_BYTES:
            self._adopt_deferred_feeds()

    def _adopt_deferred_feeds(self) -> None:
        """Give an empty document the feeds of checkpoints taken (their heads wait in the
        deferred changes, after them): one Automerge load of them all, or, if Automerge
        will not load them as one, their changes applied."""
        feeds, self._deferred_feeds = self._deferred_feeds, []
        if not feeds or self._doc is None:
            return
        doc = self._doc
        document = adoptable_document(feeds) if doc.is_empty() else None
        if document is not None and doc.adopt(document, [
                (c.checkpoint.author, c.checkpoint.seq - 1, c.head[0].deps[0], c.max_op)
                for c in feeds]):
            return
        log.warning("board %s: %d checkpoints did not load as one document; applying "
                    "their changes", self.name, len(feeds))
        self._apply([change for c in feeds for change in c.changes()[:-1]])

    def _extend_checkpoint(self, cp: Checkpoint, held: int) -> bytes | None:
        """Check a checkpoint as the continuation of the author's feed held up to
        ``held`` (SPEC 8a.4): its content must hold that feed, and its later changes
        pass the rules from the state held. None if the document does not hold the
        feed up to ``held`` now (changes of it wait in this batch)."""
        if cp.head.hash in self._refused_envelopes:
            raise InvalidChangeError(f"seq {cp.seq} was refused before: it cannot be applied")
        doc = self.document
        if doc.applied_seq.get(cp.author, 0) != held or self._rules.state(cp.author).seq != held:
            return None
        changes = check_continuation(cp, self._cipher, held, doc.last_hashes[cp.author])
        try:
            for header, _ in changes:
                self._rules.check(header)
        except EnvelopeError:
            self._rules.forget(cp.author)  # (read from the document again: it holds ``held``)
            raise
        self._extended[cp.hash] = changes
        return changes[-1][0].hash

    def precheck(self, records: Iterable[bytes]) -> None:
        """Make the member check of each checkpoint among ``records`` whose author this
        board holds nothing of, for the next :meth:`receive` of them to use.

        Safe to call from a worker thread while the owning thread runs: it reads the
        feed heads (a stale read costs only a wasted check) and touches neither the
        store nor the document. Results wait until the next call (at most
        :data:`MAX_PRECHECKED` of them); a receive that finds none checks as usual.
        """
        self._prechecked.clear()
        for raw in records:
            if not is_checkpoint(raw) or len(self._prechecked) >= MAX_PRECHECKED:
                continue
            try:
                cp = Checkpoint.decode(raw)
                if self._heads.get(cp.author, EMPTY_HEAD).seq or cp.hash in self._prechecked:
                    continue
                verify_checkpoint(cp)
                result: CheckedCheckpoint | EnvelopeError = check_checkpoint(cp, self._cipher)
            except EnvelopeError as exc:
                result = exc
            except P2paidError:
                continue  # (receive meets it again, and says so)
            self._prechecked[cp.hash] = result

    def _check_checkpoint(self, cp: Checkpoint) -> bytes:
        if cp.head.hash in self._refused_envelopes:
            raise InvalidChangeError(f"seq {cp.seq} was refused before: it cannot be applied")
        early = self._prechecked.pop(cp.hash, None)
        if isinstance(early, EnvelopeError):
            raise early
        checked = check_checkpoint(cp, self._cipher) if early is None else early
        self._checked[cp.hash] = checked
        return checked.head[0].hash

    def _checkpoint_changes(self, author: bytes, seq: int) -> list[tuple[ChangeHeader, bytes]]:
        """The changes ``1..seq`` of a stored checkpoint (checked when it was stored; the
        caller checks them against the rules again, as it does stored envelopes)."""
        held = self._db.checkpoint(self.id, author)
        if held is None or held[0] != seq:
            return []
        try:
            return check_checkpoint(Checkpoint.decode(held[1]), self._cipher).changes()
        except P2paidError as exc:
            log.error("board %s: stored checkpoint of %s unreadable: %s", self.name,
                      fingerprint(author), exc)
            return []

    def checkpoint(self, author: bytes) -> bytes | None:
        """The stored checkpoint of ``author``'s feed, if any."""
        held = self._db.checkpoint(self.id, author)
        return None if held is None else held[1]

    def maybe_checkpoint(self, min_new: int = CHECKPOINT_AFTER) -> bool:
        """Seal a checkpoint of each local author's feed that grew by at least ``min_new``
        envelopes since its last one (SPEC 8a); True if one was sealed."""
        if self._doc is None:
            return False
        sealed = False
        if self._sealed_to is None:  # (then kept here: an idle node asks every poll)
            self._sealed_to = self._db.checkpoint_seqs(self.id)
        have = self._sealed_to
        for author in sorted(self._local_authors):
            key = self._local_keys.get(author)
            head = self._heads.get(author, EMPTY_HEAD).seq
            if key is None or head < 2 or head - have.get(author, 0) < min_new:
                continue
            have[author] = head  # (a feed that cannot be sealed is tried again later)
            raw = self._db.envelope_at(self.id, author, head)
            if raw is None:
                continue
            try:
                cp = seal_feed_checkpoint(cipher=self._cipher, author_key=key,
                                          head=Envelope.decode(raw),
                                          own=self.document.automerge)
            except LocalProtocolError as exc:
                log.info("board %s: no checkpoint of %s: %s", self.name, fingerprint(author),
                         exc)
                continue
            with self._db.write():
                self._db.put_checkpoint(self.id, author, cp.seq, cp.hash, cp.raw)
            sealed = True
        return sealed

    def _hold(self, gaps: Iterable[Envelope]) -> None:
        """Keep envelopes beyond a gap, within a byte budget per author and per board."""
        per_author: dict[bytes, int] = {}
        total = 0
        for env in self._held.values():
            per_author[env.author] = per_author.get(env.author, 0) + len(env.raw)
            total += len(env.raw)
        for env in sorted(gaps, key=lambda e: (e.author, e.seq)):
            size = len(env.raw)
            used = per_author.get(env.author, 0)
            if used + size > MAX_HELD_BYTES_PER_AUTHOR or total + size > MAX_HELD_BYTES:
                continue  # dropped: a peer or bundle offers it again after the gap
            per_author[env.author] = used + size
            total += size
            self._held[(env.author, env.seq)] = env

    def record_fork(self, first: bytes | Envelope, second: bytes | Envelope) -> bool:
        """Learn a fork from its evidence (two validly signed envelopes of one author at
        one seq, e.g. from a peer): end that author's feed before it.

        Returns:
            True if it was news (a new fork, or a lower one of the author); False also
            when nothing of that author is held here (its feed is then refused at the
            fork once it arrives and a peer proves it again).

        Raises:
            EnvelopeError: the envelopes do not prove a fork on this board.
        """
        proof = ForkProof.check(self.id, _envelope(first), _envelope(second))
        if self._doc is None:
            self._load()
        with self._db.write():
            self._catch_up()
            if proof.author not in self._heads:
                return False  # nothing of that author here: the proof changes nothing
            if not record_fork(self._db, self.id, proof):
                return False
            self._heads = self._db.heads(self.id)
        self._end_forked_feeds([proof])
        return True

    def _end_forked_feeds(self, forks: Iterable[ForkProof]) -> None:
        """A proven fork ends its author's feed before the forked seq: drop held and
        deferred changes from there on, and rebuild the document without any it had
        applied (nobody's changes depend on them, so nothing else is lost)."""
        rebuild = False
        for proof in forks:
            author, seq = proof.author, proof.seq
            self._forked[author] = min(seq, self._forked.get(author, seq))
            log.warning("board %s: member %s signed two versions of its change %d; its "
                        "later changes are ignored", self.name, fingerprint(author), seq)
            self._held = {k: e for k, e in self._held.items() if not (
                e.author == author and e.seq >= seq)}
            self._deferred = [(h, d) for h, d in self._deferred if not (
                h.actor == author and h.seq >= seq)]
            if any(c.checkpoint.author == author for c in self._deferred_feeds):
                rebuild = True  # (the fork cut the checkpoint's feed: read the store)
            self._rules.forget(author)
            doc = self._doc
            if doc is not None and doc.applied_seq.get(author, 0) >= seq:
                rebuild = True
                snap = self._db.snapshot(self.id)
                if snap is not None and snap.vector.get(author, 0) >= seq:
                    self._db.delete_snapshot(self.id)
        if rebuild:
            self._discard("a proven fork removed changes it had applied")
            self._load()

    def _report_purged(self, report: ReceiveReport, accepted: Iterable[Accepted]) -> None:
        """Envelopes stored, then refused by Automerge, count as rejected after all."""
        if not self._purged:
            return
        by_address = {(a.envelope.author, a.envelope.seq): a.envelope for a in accepted}
        for header, reason in self._purged:
            env = by_address.get((header.actor, header.seq))
            if env is not None:
                report.accepted -= 1
                error = InvalidChangeError(f"seq {header.seq}: {reason}")
                error.change_hash = header.hash
                report.rejected.append(Rejection(env, error))

    def envelopes(self) -> Iterable[bytes]:
        """Every stored envelope of this board, per author in seq order."""
        return self._db.envelopes(self.id)

    def read_feed(self, author: bytes, after: int, max_bytes: int) -> list[bytes]:
        """Stored envelopes ``after+1, ...`` of one author: one at least (if held), then
        as many as fit in ``max_bytes``."""
        return self._db.read_feed(self.id, author, after, max_bytes)

    def hash_at(self, author: bytes, seq: int) -> bytes | None:
        """The hash of the stored envelope ``(author, seq)``, if any."""
        return self._db.held_hashes(self.id, author, seq, seq).get(seq)

    def save_snapshot(self) -> None:
        """Store the current document so the next open skips re-applying changes."""
        doc = self.document
        try:
            saved = doc.save()
        except StorageError as exc:
            log.error("board %s: no snapshot: %s", self.name, exc)
            self._since_snapshot = 0
            return
        vector = dict(doc.applied_seq)
        snap = SnapshotRow(saved, vector, dict(doc.start_ops), dict(doc.max_ops),
                           sum(vector.values()))
        self._db.put_snapshot(self.id, snap, self._clock())
        self._since_snapshot = 0

    def close(self) -> None:
        """Save a snapshot if enough changed; the board stays usable."""
        self.maybe_snapshot()

    def maybe_snapshot(self, threshold: int = SNAPSHOT_ON_CLOSE) -> bool:
        """Save a snapshot if at least ``threshold`` changes were applied since the last."""
        if self._doc is not None and self._since_snapshot >= threshold:
            self.save_snapshot()
            return True
        return False

    @contextlib.contextmanager
    def group(self) -> Iterator[None]:
        """Make every write inside one durable transaction (one commit, one fsync).

        Each write still becomes its own envelope. If the commit fails, none of
        them happened (the document is reloaded from the store).
        """
        try:
            with self._db.write():
                self._catch_up()
                self._grouped = True
                yield
        except BaseException:
            self._discard("a group of writes was not committed")
            raise
        finally:
            self._grouped = False

    def add_local_author(self, author: bytes) -> None:
        """Count ``author`` (a paired device's) as local: its changes are made here."""
        self._local_authors.add(author)
        if self._doc is not None:
            self._doc.local_authors.add(author)

    def write(self, edit: Callable[[SectionWriter], None], *, key: AuthorKey | None = None,
              authorize: Callable[[], None] | None = None) -> Envelope | None:
        """Make one change durable as the next envelope of a local author's feed.

        Args:
            edit: the ops, on the author's own section.
            key: the author's key (default: the node's own member's); the change
                depends only on that author's previous one and is sealed with it.
            authorize: called under the write lock after catching up; what it raises
                refuses the write (nothing is written).

        Returns:
            The envelope, or None if ``edit`` changed nothing.
        """
        key = self._author_key if key is None else key
        author = key.public
        self._local_keys[author] = key
        self.document  # noqa: B018 - load, and apply what is deferred, before the lock
        changed = False
        try:
            with self._db.write():
                if not self._grouped:  # a group caught up once, under the same lock
                    self._catch_up()
                if authorize is not None:
                    authorize()
                if author in self._forked:
                    whose, remedy = (("your key", "join the board again as a new member")
                                     if author == self.author else
                                     ("this device's key", "pair the device again"))
                    raise UsageError(
                        f"{whose} on board {self.name!r} was used to sign two versions of "
                        "one change (was this data dir copied to another device?); other "
                        f"members ignore its new posts: {remedy}")
                doc = self.document
                head = self._heads.get(author, EMPTY_HEAD)
                written = doc.write(edit, author)
                if written is None:
                    return None
                header, change = written
                changed = True
                if header.seq != head.seq + 1:
                    raise StorageError(
                        f"the local feed is out of step with the store (change seq {header.seq}, "
                        f"stored head {head.seq}); reopen the store"
                    )
                env = seal_envelope(
                    board_id=self.id, cipher=self._cipher, author_key=key,
                    seq=header.seq, prev=head.hash, change=change,
                )
                self._seen_id = self._db.insert_envelopes(
                    self.id, [(author, env.seq, env.hash, env.raw, header.hash)]
                )
        except BaseException:
            if changed:
                self._discard("it holds a change the store did not take")
            raise
        self._local_authors.add(author)
        self._heads[author] = FeedHead(env.seq, env.hash)
        self._rules.forget(author)
        self._since_snapshot += 1
        if self._since_snapshot >= SNAPSHOT_EVERY:
            self.save_snapshot()
        return env
