"""A joined board: its document, its feeds in the store, and the operations on it.

:class:`Board` is the synchronous library API for one board. Every write runs
under the store's write lock: it first catches up with envelopes that other
processes on the same data dir have stored, then makes one Automerge change,
seals it as the next envelope of the local author's feed and commits it durably.
Remote envelopes (a bundle, a peer) go through :meth:`Board.receive`.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, final

from automerge.core import Document
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from p2paid.automerge.chunk import ChangeHeader
from p2paid.automerge.rules import AuthorState, FeedRules, check_change
from p2paid.board import relayplan
from p2paid.board.document import (
    BoardDocument,
    DocumentBrokenError,
    SectionWriter,
    new_item_id,
)
from p2paid.board.model import (
    DEFAULT_NEED_TTL_DAYS,
    NEVER,
    BoardEvent,
    Category,
    Claim,
    ClaimStatus,
    Item,
    ItemKind,
    Member,
    Status,
    Urgency,
    clean_enum,
    clean_quantity,
    clean_text,
    clean_ttl_days,
    item_fields,
    member_label,
    now_ms,
)
from p2paid.board.relayplan import RelaySuggestion, board_relays, normal_address
from p2paid.core.envelope import Envelope, open_envelope, seal_envelope
from p2paid.core.feed import EMPTY_HEAD, FeedHead, ForkProof, Rejection
from p2paid.core.identity import AuthorId, AuthorKey, fingerprint
from p2paid.core.invite import MAX_RELAY_HINTS, BoardId, BoardKeys, Invite, derive_board_keys
from p2paid.core.memory import release_freed_memory
from p2paid.core.relayaddr import RelayAddress
from p2paid.errors import (
    AmbiguousIdError,
    EnvelopeError,
    InvalidChangeError,
    NotFoundError,
    P2paidError,
    StorageError,
    UsageError,
    ValidationError,
)
from p2paid.storage.ingest import CONTENT_REFUSALS, Accepted, ingest, record_fork
from p2paid.storage.sqlite import BoardRow, Database, EnvelopeRow, ForkRow, SnapshotRow

__all__ = ["Board", "ReceiveReport"]

log = logging.getLogger(__name__)

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

Clock = Callable[[], int]


@final
@dataclass(slots=True)
class ReceiveReport:
    """What :meth:`Board.receive` did with a batch."""

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



_UNSET: Any = object()


@final
class Board:
    """One joined board. Obtain it from :meth:`p2paid.Store.board`; do not construct it.

    Reads (:meth:`items`, :meth:`get`) first pick up whatever other processes
    stored. Writes return once the change is durable in the store.
    """

    def __init__(self, db: Database, row: BoardRow, *, clock: Clock = now_ms) -> None:
        self._db = db
        self._clock = clock
        self.keys: BoardKeys = derive_board_keys(row.secret)
        if self.keys.board_id != row.board_id:
            raise StorageError("a stored board's id does not match its secret")
        self.id = BoardId(row.board_id)
        self.name = row.name
        self.relays: tuple[str, ...] = row.relays
        self._author_key = AuthorKey(row.author_key)
        self.author = AuthorId(self._author_key.public)
        self._cipher = ChaCha20Poly1305(self.keys.content_key)
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
        self._rules = FeedRules(self._author_state, self._has_changes)

    def __repr__(self) -> str:
        return f"<Board {self.name!r} {self.id.hex()[:12]}>"

    # ------------------------------------------------------------------ identity

    @property
    def author_fingerprint(self) -> str:
        return fingerprint(self.author)

    def invite(self, relays: Iterable[str] | None = None) -> str:
        """The invite URI (board secret, name and relay hints): share it only with members."""
        hints = tuple(self.relays[-MAX_RELAY_HINTS:] if relays is None else relays)
        return Invite(self.keys.secret, self.name, hints).to_uri()

    # ------------------------------------------------------------------ loading

    @property
    def document(self) -> BoardDocument:
        """The board's document, loaded from the store on first use (and with any
        deferred changes applied: see :meth:`receive`)."""
        if self._doc is not None and self._doc.stale:
            self._doc = None  # it missed a change (see BoardDocument.add_changes)
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

    def flush(self) -> list[ChangeHeader]:
        """Apply changes that :meth:`receive` stored with ``defer_apply``."""
        if not self._deferred or self._doc is None:
            return []
        changes, self._deferred = self._deferred, []
        applied = self._apply_guarded(changes)
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
                # A stored change makes Automerge panic: refuse it, then load again
                # applying one change per call so that each culprit is found.
                log.error("board %s: %s", self.name, exc)
                self._careful = True
                if exc.culprit is not None:
                    self._purge([(exc.culprit, "automerge panicked applying it")])
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
            self._doc = None
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
        """Decrypt envelopes this store already verified (bad ones are logged and skipped)."""
        out = []
        for row in rows:
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
        if self._deferred:
            changes = [*self._deferred, *changes]
            self._deferred = []
        try:
            return self._apply(changes)
        except DocumentBrokenError as exc:
            log.error("board %s: %s; reloading", self.name, exc)
            self._doc = None
            self._careful = True
            if exc.culprit is not None:
                self._purge([(exc.culprit, "automerge panicked applying it")])
            self.load()  # now, one change per Automerge call
            return []

    # ------------------------------------------------------------------ replication

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
        for item in envelopes:
            if isinstance(item, Envelope):
                decoded.append(item)
                continue
            try:
                decoded.append(Envelope.decode(item))
            except EnvelopeError as exc:
                report.rejected.append(Rejection(None, exc))
        if self._doc is None:
            self._load()  # (deferred changes stay deferred: each author's order is kept)
        try:
            with self._db.write():
                self._catch_up()
                batch = list(self._held.values()) + decoded
                self._held.clear()
                result = ingest(self._db, self.id, batch, self._heads, self._open,
                                forked=self._forked)
                for acc in result.accepted:
                    env = acc.envelope
                    self._heads[env.author] = FeedHead(env.seq, env.hash)
                if result.forks:
                    self._heads = self._db.heads(self.id)
                if result.last_id:
                    self._seen_id = result.last_id
        except BaseException:
            self._rules.rollback()
            raise
        self._rules.commit()
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
        changes = [(a.header, a.change) for a in result.accepted if a.header and a.change]
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
            self._rules.forget(author)
            doc = self._doc
            if doc is not None and doc.applied_seq.get(author, 0) >= seq:
                rebuild = True
                snap = self._db.snapshot(self.id)
                if snap is not None and snap.vector.get(author, 0) >= seq:
                    self._db.delete_snapshot(self.id)
        if rebuild:
            self._doc = None
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

    # ------------------------------------------------------------------ reading

    def items(
        self,
        *,
        kind: ItemKind | str | None = None,
        status: str | None = None,
        category: Category | str | None = None,
    ) -> list[Item]:
        """Needs and offers, oldest first, optionally filtered.

        Args:
            status: ``open``, ``fulfilled``, ``withdrawn`` or ``expired``
                (``open`` excludes expired items).
        """
        self.refresh()
        now = self._clock()
        kind = None if kind is None else clean_enum(ItemKind, kind, "kind")
        category = None if category is None else clean_enum(Category, category, "category")
        if status is not None and status not in {*(s.value for s in Status), "expired"}:
            raise ValidationError("status must be one of: open, fulfilled, withdrawn, expired")
        return [
            item for item in self.document.items()
            if (kind is None or item.kind is kind)
            and (category is None or item.category is category)
            and (status is None or item.display_status(now) == status)
        ]

    def needs(self, **filters: Any) -> list[Item]:
        return self.items(kind=ItemKind.NEED, **filters)

    def offers(self, **filters: Any) -> list[Item]:
        return self.items(kind=ItemKind.OFFER, **filters)

    def get(self, item_id: str) -> Item:
        """The item whose id starts with ``item_id`` (at least 4 hex characters).

        Raises:
            NotFoundError: no item matches.
            AmbiguousIdError: several items match; give more characters.
        """
        prefix = item_id.strip().lower()
        if len(prefix) < 4:
            raise UsageError("give at least 4 characters of the item id")
        matches = [item for item in self.items() if item.id.startswith(prefix)]
        if not matches:
            raise NotFoundError(f"no need or offer with id {prefix!r} on board {self.name!r}")
        if len(matches) > 1:
            listed = ", ".join(m.id[:12] for m in matches[:5])
            raise AmbiguousIdError(f"id {prefix!r} matches {len(matches)} items ({listed}); "
                                   "give more characters")
        return matches[0]

    def my_claims(self) -> list[Claim]:
        self.refresh()
        return self.document.claims_by(self.author)

    def display_name(self, author: bytes | None = None) -> str:
        self.refresh()
        return self.document.display_name(self.author if author is None else author)

    @property
    def member_count(self) -> int:
        return len(self.document.authors)

    def members(self) -> list[Member]:
        """Every member with a section on this board, with the display name it shows
        and whether another member shows a name that looks the same (names are not
        verified; fingerprints are)."""
        self.refresh()
        return self.document.view.members()

    def me(self) -> Member:
        """The local member, as the others see it."""
        mine = self.author.hex()
        for member in self.members():
            if member.author == mine:
                return member
        return Member(mine, "")

    def export_automerge(self) -> bytes:
        """The raw saved Automerge document, readable by any Automerge implementation."""
        self.refresh()
        return self.document.save()

    # ------------------------------------------------------------------ writing

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
            self._doc = None
            raise
        finally:
            self._grouped = False

    def _write(self, edit: Callable[[SectionWriter], None]) -> Envelope | None:
        """Make one change durable as the next envelope of our feed (None: no change)."""
        self.document  # noqa: B018 - load, and apply what is deferred, before the lock
        changed = False
        try:
            with self._db.write():
                if not self._grouped:  # a group caught up once, under the same lock
                    self._catch_up()
                if self.author in self._forked:
                    raise UsageError(
                        f"your key on board {self.name!r} was used to sign two versions of "
                        "one change (was this data dir copied to another device?); other "
                        "members ignore your new posts: join the board again as a new member")
                doc = self.document
                head = self._heads.get(self.author, EMPTY_HEAD)
                written = doc.write(edit)
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
                    board_id=self.id, cipher=self._cipher, author_key=self._author_key,
                    seq=header.seq, prev=head.hash, change=change,
                )
                self._seen_id = self._db.insert_envelopes(
                    self.id, [(self.author, env.seq, env.hash, env.raw, header.hash)]
                )
        except BaseException:
            if changed:
                self._doc = None  # holds a change the store did not take: reload on next use
            raise
        self._heads[self.author] = FeedHead(env.seq, env.hash)
        self._rules.forget(self.author)
        self._since_snapshot += 1
        if self._since_snapshot >= SNAPSHOT_EVERY:
            self.save_snapshot()
        return env

    def set_display_name(self, name: str) -> None:
        """Publish the name other members see next to your needs, offers and claims."""
        clean = clean_text(name, "display name")
        self._write(lambda w: w.set_name(clean))

    def publish_relays(self, relays: Iterable[str]) -> None:
        """Publish relay addresses in your own section, as hints for other members."""
        hints = tuple(relays)
        self._write(lambda w: w.set_relays(hints))

    def add_relay(self, address: str) -> None:
        """Use a relay for this board: remember it, and publish it to the other members.

        Raises:
            InviteError: not a relay address.
        """
        text = str(RelayAddress.parse(address))
        if text in self.relays:
            return
        self.relays = (*self.relays, text)
        self._db.set_board_relays(self.id, self.relays)
        self.publish_relays(self.relays[-MAX_RELAY_HINTS:])

    def relays_in_use(self) -> list[str]:
        """The relays this board syncs through: its own (from its invite, added here,
        or accepted) and those you publish; each valid address once, in normal form.

        Relays that other members publish are not among them: they are only
        suggestions until accepted (:meth:`suggested_relays`, :meth:`accept_relay`).
        """
        self.refresh()
        self._reload_relays()
        return board_relays(self.relays, self.document.view.relays(self.author))

    def suggested_relays(self, *, rejected: bool = False) -> list[RelaySuggestion]:
        """Relays other members publish on this board that it does not use, each with
        the members who publish it (their names are not verified: compare
        fingerprints). Rejected ones only with ``rejected=True``."""
        in_use = set(self.relays_in_use())
        view = self.document.view
        hints = {a: view.relays(a) for a in self.document.authors if a != self.author}
        hints = {a: h for a, h in hints.items() if h}
        if not hints:
            return []
        members = {m.author: m for m in view.members()}
        found = relayplan.suggestions(
            self.id, self.name, [(members[a.hex()], h) for a, h in hints.items()],
            in_use, self._rejected_relays())
        return [s for s in found if rejected or not s.rejected]

    def accept_relay(self, address: str) -> str:
        """Sync this board through a relay that another member suggests. It becomes
        one of the board's own relays (so it also goes into invites made here), but
        is not published. Returns the address in normal form.

        Raises:
            InviteError: not a relay address.
            NotFoundError: no other member of this board suggests it.
        """
        text = str(RelayAddress.parse(address))
        if text in self.relays_in_use():
            return text
        if all(s.address != text for s in self.suggested_relays(rejected=True)):
            raise NotFoundError(f"no member of board {self.name!r} suggests relay {text}")
        self._set_rejected_relays(self._rejected_relays() - {text})
        self.relays = (*self.relays, text)
        self._db.set_board_relays(self.id, self.relays)
        return text

    def reject_relay(self, address: str) -> str:
        """Say that a relay another member suggests is not to be used: it is then left
        out of :meth:`suggested_relays` (it can still be accepted later).

        Raises:
            InviteError: not a relay address.
            NotFoundError: no other member of this board suggests it.
            UsageError: this board syncs through it (stop with :meth:`remove_relay`).
        """
        text = str(RelayAddress.parse(address))
        if text in self.relays_in_use():
            raise UsageError(f"board {self.name!r} syncs through {text}; "
                             "to stop, use 'p2paid relay remove'")
        if all(s.address != text for s in self.suggested_relays(rejected=True)):
            raise NotFoundError(f"no member of board {self.name!r} suggests relay {text}")
        self._set_rejected_relays(self._rejected_relays() | {text})
        return text

    def remove_relay(self, address: str) -> bool:
        """Stop syncing this board through a relay of its own (and stop publishing it,
        if you do). Returns False if the board did not use it.

        Raises:
            InviteError: not a relay address.
        """
        text = str(RelayAddress.parse(address))
        self.refresh()
        self._reload_relays()
        kept = tuple(r for r in self.relays if normal_address(r) != text)
        published = self.document.view.relays(self.author)
        unpublish = [r for r in published if normal_address(r) != text]
        if kept == self.relays and len(unpublish) == len(published):
            return False
        if kept != self.relays:
            self.relays = kept
            self._db.set_board_relays(self.id, kept)
        if len(unpublish) != len(published):
            self.publish_relays(unpublish)
        return True

    def _reload_relays(self) -> None:
        """The board's own relays as stored (another process may have changed them)."""
        for row in self._db.boards():
            if row.board_id == self.id:
                self.relays = row.relays

    def _rejected_relays(self) -> frozenset[str]:
        raw = self._db.get_meta(relayplan.REJECTED_META_PREFIX + self.id.hex())
        try:
            entries = json.loads(raw) if raw else []
        except ValueError:
            entries = []
        return frozenset(e for e in entries if isinstance(e, str))

    def _set_rejected_relays(self, addresses: Iterable[str]) -> None:
        self._db.set_meta(relayplan.REJECTED_META_PREFIX + self.id.hex(),
                          json.dumps(sorted(addresses)).encode())

    def post_need(self, title: str, **fields: Any) -> Item:
        """Post a need. Keyword fields as for :meth:`post`; expires in 14 days by default."""
        fields.setdefault("expires_in_days", DEFAULT_NEED_TTL_DAYS)
        return self.post(ItemKind.NEED, title, **fields)

    def post_offer(self, title: str, **fields: Any) -> Item:
        """Post an offer. Keyword fields as for :meth:`post`; no expiry by default."""
        return self.post(ItemKind.OFFER, title, **fields)

    def post(
        self,
        kind: ItemKind | str,
        title: str,
        *,
        details: str = "",
        category: Category | str = Category.OTHER,
        quantity: int | None = None,
        unit: str = "",
        location: str = "",
        urgency: Urgency | str = Urgency.NORMAL,
        expires_in_days: int | None = None,
    ) -> Item:
        """Post a need or an offer.

        Raises:
            ValidationError: a field is out of range (nothing is written).
        """
        kind = clean_enum(ItemKind, kind, "kind")
        fields = item_fields(
            kind, title, now=self._clock(), details=details, category=category,
            quantity=quantity, unit=unit, location=location, urgency=urgency,
            expires_in_days=expires_in_days,
        )
        item_id = new_item_id()
        self._write(lambda w: w.put_item(kind, item_id, fields))
        return self._own_item(kind, item_id)

    def _own_item(self, kind: ItemKind, item_id: str) -> Item:
        return self.document.section(self.author).items[kind][item_id]

    def _mine(self, item_id: str) -> Item:
        item = self.get(item_id)
        if item.author != self.author.hex():
            raise UsageError(
                f"{item.kind.value} {item.id[:8]} was posted by "
                f"{member_label(item.author, item.author_name, item.name_shared)}; "
                "only its author can change it"
            )
        return item

    def edit(
        self,
        item_id: str,
        *,
        title: str = _UNSET,
        details: str = _UNSET,
        category: Category | str = _UNSET,
        quantity: int | None = _UNSET,
        unit: str = _UNSET,
        location: str = _UNSET,
        urgency: Urgency | str = _UNSET,
        expires_in_days: int | None = _UNSET,
    ) -> Item:
        """Change fields of your own need or offer; leave out what stays the same.

        ``quantity=None`` removes the quantity; ``expires_in_days=None`` removes the expiry.
        """
        item = self._mine(item_id)
        now = self._clock()
        fields: dict[str, str | int | None] = {}
        if title is not _UNSET:
            fields["title"] = clean_text(title, "title", required=True)
        for name, value in (("details", details), ("unit", unit), ("location", location)):
            if value is not _UNSET:
                fields[name] = clean_text(value, name)
        if category is not _UNSET:
            fields["category"] = clean_enum(Category, category, "category").value
        if urgency is not _UNSET:
            fields["urgency"] = clean_enum(Urgency, urgency, "urgency").value
        if quantity is not _UNSET:
            fields["quantity"] = clean_quantity(quantity)
        if expires_in_days is not _UNSET:
            fields["expires"] = NEVER if expires_in_days is None else (
                now + clean_ttl_days(expires_in_days))
        if not fields:
            raise UsageError("nothing to change: give at least one field")
        fields["updated"] = now
        self._write(lambda w: w.update_item(item.kind, item.id, fields))
        return self._own_item(item.kind, item.id)

    def _set_status(self, item_id: str, status: Status) -> Item:
        item = self._mine(item_id)
        if item.status is status:
            raise UsageError(f"{item.kind.value} {item.id[:8]} is already {status.value}")
        fields: Mapping[str, str | int] = {"status": status.value, "updated": self._clock()}
        self._write(lambda w: w.update_item(item.kind, item.id, fields))
        return self._own_item(item.kind, item.id)

    def fulfil(self, item_id: str) -> Item:
        """Mark your own need or offer as fulfilled."""
        return self._set_status(item_id, Status.FULFILLED)

    def withdraw(self, item_id: str) -> Item:
        """Withdraw your own need or offer."""
        return self._set_status(item_id, Status.WITHDRAWN)

    def reopen(self, item_id: str) -> Item:
        """Open again a need or offer you had fulfilled or withdrawn."""
        return self._set_status(item_id, Status.OPEN)

    def claim(self, item_id: str, *, quantity: int | None = None, note: str = "") -> Claim:
        """Pledge to meet (part of) a need, or ask for an offer.

        Raises:
            UsageError: the item is your own or not open.
        """
        item = self.get(item_id)
        if item.author == self.author.hex():
            raise UsageError("you cannot claim your own need or offer")
        if item.display_status(self._clock()) != Status.OPEN.value:
            raise UsageError(f"{item.kind.value} {item.id[:8]} is {item.display_status()}, "
                             "not open")
        quantity = clean_quantity(quantity)
        still_open = item.open_quantity
        if quantity is not None and still_open is not None and quantity > still_open:
            unit = f" {item.unit}" if item.unit else ""
            raise UsageError(
                f"{item.kind.value} {item.id[:8]} is fully claimed ({item.quantity}{unit})"
                if still_open == 0 else
                f"only {still_open} of {item.quantity}{unit} of {item.kind.value} "
                f"{item.id[:8]} are still open; claim at most {still_open}")
        now = self._clock()
        claim_id = new_item_id()
        fields: dict[str, str | int | None] = {
            "kind": item.kind.value,
            "item_author": item.author,
            "item": item.id,
            "quantity": clean_quantity(quantity),
            "note": clean_text(note, "note"),
            "status": ClaimStatus.ACTIVE.value,
            "created": now,
        }
        self._write(lambda w: w.put_claim(claim_id, fields))
        return self.document.section(self.author).claims[claim_id]

    def unclaim(self, item_id: str) -> list[Claim]:
        """Cancel your active claims on an item.

        Raises:
            NotFoundError: you have no active claim on it.
        """
        item = self.get(item_id)
        mine = [c for c in item.claims if c.author == self.author.hex()]
        if not mine:
            raise NotFoundError(f"you have no active claim on {item.kind.value} {item.id[:8]}")
        fields: Mapping[str, str | int] = {
            "status": ClaimStatus.CANCELLED.value, "updated": self._clock(),
        }

        def cancel(w: SectionWriter) -> None:
            for c in mine:
                w.update_claim(c.id, fields)

        self._write(cancel)
        claims = self.document.section(self.author).claims
        return [claims[c.id] for c in mine]

