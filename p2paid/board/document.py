"""One board's Automerge document: ownership-aware apply, section writes, typed reads.

Theory of operation
-------------------
Every member writes only inside its own *section*, a map created by the first op
of its first change at root key ``author.hex()``. Readers never look a section up
through the root key (another member could write a conflicting root key and win);
they address it by object id ``(start_op of the author's seq-1 change, author)``,
which Automerge's ``get``/``keys`` accept directly.

Every change depends only on its author's previous change (SPEC 5), so each
author's changes form a feed of their own. Remote changes arrive already checked
(signature, chain, ownership, :mod:`p2paid.automerge.rules`) as ``(ChangeHeader, bytes)``, in
each author's seq order; whatever is ready is applied in one call, because each
apply call costs O(document size). Local changes are made in a small document that
holds only that local author's own changes (forked from this one on first use), so
that they depend on nothing but the author's previous change, and then applied here.
A node may write as several local authors on one board (its own member and each
paired device, :mod:`p2paid.board.devices`): each has an own document of its own.

Reads are validated with :mod:`p2paid.board.model` and cached per author; the cache of
an author is dropped whenever a change of that author is applied.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, final

from automerge.core import ROOT, Document, Message, ObjType, ScalarType, SyncState

from p2paid.automerge.chunk import ChangeHeader, uleb_bytes
from p2paid.automerge.rules import AuthorState
from p2paid.board.model import BoardEvent, Claim, Item, ItemKind
from p2paid.board.readmodel import (
    CLAIMS,
    COLLECTIONS,
    PROFILE,
    ReadModel,
    Section,
    UnreadableError,
    object_counter,
    read_safely,
    section_object_id,
)
from p2paid.errors import LocalProtocolError, NotFoundError, StorageError

__all__ = [
    "BoardDocument",
    "DocumentBrokenError",
    "SectionWriter",
    "new_item_id",
    "section_object_id",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 1

Value = str | int | None


def new_item_id() -> str:
    """A random 128-bit id as 32 lowercase hex characters."""
    return os.urandom(16).hex()


class DocumentBrokenError(LocalProtocolError):
    """Automerge panicked while applying: the in-memory document must be reloaded.

    ``culprit`` is the change being applied when it happened, when known.
    """

    def __init__(self, message: str, culprit: ChangeHeader | None = None) -> None:
        super().__init__(message)
        self.culprit = culprit


def _local_header(change: Any) -> ChangeHeader:
    """The header of a change we just made, from Automerge's own fields (no parsing)."""
    start_op = int(change.start_op)
    return ChangeHeader(
        hash=bytes(change.hash), deps=tuple(bytes(d) for d in change.deps),
        actor=bytes(change.actor_id), seq=int(change.seq), start_op=start_op, time=0,
        other_actors=(), op_count=int(change.max_op) - start_op + 1,
    )


def receive_changes(doc: Document, changes: list[bytes]) -> bool:
    """Give Automerge changes in one call (a sync message carrying only changes).

    Returns:
        False if Automerge refused them (it then keeps the document unchanged).

    Raises:
        DocumentBrokenError: Automerge panicked; the document is in an unknown state.
    """
    try:
        message = Message.decode(sync_message_with_changes(changes))
        doc.receive_sync_message(SyncState(), message)
    except Exception:
        return False
    except BaseException as exc:  # pyo3's PanicException derives from BaseException
        if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
            raise
        raise DocumentBrokenError(f"automerge panicked: {exc}") from exc
    return True


def sync_message_with_changes(changes: Iterable[bytes]) -> bytes:
    """An Automerge sync message (type 0x42) carrying only changes (no heads, need, have)."""
    body = [b"\x42", b"\x00", b"\x00", b"\x00"]
    items = list(changes)
    body.append(uleb_bytes(len(items)))
    for change in items:
        body.append(uleb_bytes(len(change)))
        body.append(change)
    return b"".join(body)


@final
class SectionWriter:
    """Ops on the local author's own section, inside one Automerge transaction."""

    def __init__(self, tx: Any, section: bytes) -> None:
        self._tx = tx
        self.section = section
        #: ``(collection, id)`` of every entry written; collection "profile" has id "".
        self.touched: list[tuple[str, str]] = []

    def _child(self, key: str) -> bytes:
        got = self._tx.get(self.section, key)
        if got is None or got[0] != ObjType.Map:
            return bytes(self._tx.put_object(self.section, key, ObjType.Map))
        return bytes(got[1])

    def _put_fields(self, obj: bytes, fields: Mapping[str, Value], *, fresh: bool = False) -> None:
        """Write fields; None or "" removes a key (a fresh map just leaves it out:
        every put costs tens of microseconds, and readers default empty text)."""
        for key, value in fields.items():
            if value is None or value == "":
                if not fresh and self._tx.get(obj, key) is not None:
                    self._tx.delete(obj, key)
            elif isinstance(value, bool):
                raise LocalProtocolError("booleans are not part of the schema")
            elif isinstance(value, int):
                self._tx.put(obj, key, ScalarType.Int, value)
            else:
                self._tx.put(obj, key, ScalarType.Str, value)

    def _put_entry(self, collection: str, entry_id: str, fields: Mapping[str, Value]) -> None:
        obj = bytes(self._tx.put_object(self._child(collection), entry_id, ObjType.Map))
        self._put_fields(obj, fields, fresh=True)
        self.touched.append((collection, entry_id))

    def _update_entry(self, collection: str, entry_id: str, fields: Mapping[str, Value]) -> None:
        got = self._tx.get(self._child(collection), entry_id)
        if got is None or got[0] != ObjType.Map:
            raise NotFoundError(f"no {collection[:-1]} {entry_id} of yours")
        self._put_fields(bytes(got[1]), fields)
        self.touched.append((collection, entry_id))

    def set_name(self, name: str) -> None:
        self._put_fields(self._child(PROFILE), {"name": name})
        self.touched.append((PROFILE, ""))

    def set_relays(self, relays: Iterable[str]) -> None:
        self._put_fields(self._child(PROFILE), {"relays": "\n".join(relays) or None})
        self.touched.append((PROFILE, ""))

    def put_item(self, kind: ItemKind, item_id: str, fields: Mapping[str, Value]) -> None:
        self._put_entry(COLLECTIONS[kind], item_id, fields)

    def update_item(self, kind: ItemKind, item_id: str, fields: Mapping[str, Value]) -> None:
        self._update_entry(COLLECTIONS[kind], item_id, fields)

    def put_claim(self, claim_id: str, fields: Mapping[str, Value]) -> None:
        self._put_entry(CLAIMS, claim_id, fields)

    def update_claim(self, claim_id: str, fields: Mapping[str, Value]) -> None:
        self._update_entry(CLAIMS, claim_id, fields)


@final
class BoardDocument:
    """The Automerge document of one board, written by one or more local authors.

    Args:
        author: the node's own local author (the default author of :meth:`write`).
        doc: a loaded document (from a snapshot), or None for an empty one.
        last_hashes: ``author -> hash`` of the newest change ``doc`` holds of each author.
        vector: ``author -> highest seq`` that ``doc`` holds.
        sections: ``author -> start_op`` of each known section's creating op.
        max_ops: ``author -> max_op`` of the author's newest change in ``doc``.
    """

    def __init__(
        self,
        author: bytes,
        doc: Document | None = None,
        last_hashes: Mapping[bytes, bytes] | None = None,
        vector: Mapping[bytes, int] | None = None,
        sections: Mapping[bytes, int] | None = None,
        max_ops: Mapping[bytes, int] | None = None,
    ) -> None:
        self.author = author
        self._doc = doc if doc is not None else Document(actor_id=author)
        if doc is not None:
            self._doc.set_actor(author)
        #: each local author's own changes only, for making new ones (see write)
        self._own: dict[bytes, Document] = {}
        #: authors whose changes are made on this node (events call them local)
        self.local_authors: set[bytes] = {author}
        #: local changes made in ``_own`` that ``_doc`` does not hold yet
        self._unmerged: list[tuple[ChangeHeader, bytes]] = []
        self.last_hashes: dict[bytes, bytes] = dict(last_hashes or {})
        self.start_ops: dict[bytes, int] = dict(sections or {})
        self.applied_seq: dict[bytes, int] = dict(vector or {})
        self.max_ops: dict[bytes, int] = dict(max_ops or {})
        self.view = ReadModel(self._read_from, self.start_ops, self.local_authors)
        self._heads = self._current_heads()
        self._refused: list[tuple[ChangeHeader, str]] = []
        self._bad_seq: set[tuple[bytes, int]] = set()
        #: apply one change per Automerge call (after a panic, to find the culprit)
        self.careful = False
        #: a change came out of order (a bug): the board reloads the document
        self.stale = False

    # ------------------------------------------------------------------ applying

    @property
    def automerge(self) -> Document:
        """The underlying automerge-py core document (read it; do not write to it)."""
        self.merge_local()
        return self._doc

    def _read_from(self, author: bytes) -> Document:
        """The document that holds ``author``'s section as it is now."""
        return self._own.get(author, self._doc)

    def merge_local(self) -> None:
        """Give the board's document the local changes made since the last merge, in
        one call (each call costs O(document), more on a document loaded from a save).

        Raises:
            DocumentBrokenError: Automerge would not take them (a bug).
        """
        if not self._unmerged:
            return
        pending, self._unmerged = self._unmerged, []
        expected = self._expected_heads(pending)
        try:
            ok = self._receive([data for _, data in pending])
        except DocumentBrokenError:
            self._own.clear()
            raise
        heads = self._current_heads()
        if not ok or heads != expected:
            self._own.clear()
            raise DocumentBrokenError("the board's document refused a local change")
        self._heads = heads

    @property
    def pending_count(self) -> int:
        """Changes held for a missing dependency: always 0 now (each change depends only
        on its author's previous one, and arrives after it)."""
        return 0

    def add_changes(self, changes: Iterable[tuple[ChangeHeader, bytes]]) -> list[ChangeHeader]:
        """Apply changes, each after its author's previous one.

        Changes come in each author's seq order (the store holds only contiguous
        feeds); one whose author's previous change is neither applied nor earlier in
        the batch, or that reuses its author's op ids, is refused (listed by
        :meth:`take_refused`), as is every change Automerge refuses.

        Returns:
            The headers of all changes applied by this call, in the order applied.
        """
        self.merge_local()
        ready: list[tuple[ChangeHeader, bytes]] = []
        seqs: dict[bytes, int] = {}
        max_ops: dict[bytes, int] = {}
        for header, data in changes:
            actor = header.actor
            seq = seqs.get(actor, self.applied_seq.get(actor, 0))
            if header.seq <= seq:
                continue  # already applied
            if header.seq != seq + 1:
                # Not the sender's doing (the store holds contiguous feeds): a bug here.
                # Never refuse it (that would delete it); the next load applies it.
                log.error("change %d of %s came before change %d; left for the next load",
                          header.seq, header.actor.hex()[:12], seq + 1)
                self.stale = True
                continue
            if header.start_op <= max_ops.get(actor, self.max_ops.get(actor, 0)):
                # Reusing op ids breaks every later save/load of the document.
                self._refuse(header, "it reuses op ids of its author")
                continue
            ready.append((header, data))
            seqs[actor] = header.seq
            max_ops[actor] = header.max_op
        if not ready:
            return []
        return self._apply_ready(ready)

    def is_empty(self) -> bool:
        """Whether this document holds no change (applied or waiting to merge)."""
        return not self.applied_seq and not self._unmerged

    def adopt(self, document: Document, feeds: Sequence[tuple[bytes, int, bytes, int]]
              ) -> bool:
        """Take ``document`` as this board's document if this one holds no change yet:
        it holds exactly the feeds ``(author, seq, last_hash, max_op)``, changes
        ``1..seq`` of each author, the last with hash ``last_hash`` and op ``max_op``
        its last (checked: checkpoints' content), so Automerge need not apply them
        again. Returns whether it was taken.

        (Automerge's first ten or so changes to a loaded document take about 1.5 ms
        each, then 0.03 ms; a ``fork_at`` copy would take 0.15 s at 10,000 changes.)
        """
        if not self.is_empty() or not feeds:
            return False
        document.set_actor(self.author)
        self._doc = document
        self._own.clear()
        for author, seq, last_hash, max_op in feeds:
            self.last_hashes[author] = last_hash
            self.applied_seq[author] = seq
            self.max_ops[author] = max_op
            self.start_ops.setdefault(author, 1)
        self._heads = self._current_heads()
        for author, *_ in feeds:
            self.view.remote_changes(author, None, True)
        return True

    def _refuse(self, header: ChangeHeader, reason: str) -> None:
        if (header.actor, header.seq) not in self._bad_seq:
            self._refused.append((header, reason))
            self._bad_seq.add((header.actor, header.seq))

    def take_refused(self) -> list[tuple[ChangeHeader, str]]:
        """Changes Automerge refused to apply since the last call, with the reason."""
        refused, self._refused = self._refused, []
        return refused

    def _receive(self, changes: list[bytes]) -> bool:
        """Feed changes to Automerge in one call; False if it refused (it then keeps
        the document unchanged). A Rust panic leaves the document in an unknown
        state, so it is raised as :class:`DocumentBrokenError`."""
        return receive_changes(self._doc, changes)

    def _expected_heads(self, ready: list[tuple[ChangeHeader, bytes]]) -> set[bytes]:
        heads = set(self._heads)
        for header, _ in ready:
            heads.difference_update(header.deps)
            heads.add(header.hash)
        return heads

    def _apply_ready(self, ready: list[tuple[ChangeHeader, bytes]]) -> list[ChangeHeader]:
        good = self._apply_checked(ready)
        for header, _ in good:
            self._note_applied(header)
        self._heads = self._current_heads()
        self._update_view(good)
        return [header for header, _ in good]

    def _apply_checked(
        self, ready: list[tuple[ChangeHeader, bytes]]
    ) -> list[tuple[ChangeHeader, bytes]]:
        """Apply a list in each author's seq order; on refusal, bisect to find the culprits.

        Automerge takes or refuses a whole sync message (it keeps the document
        unchanged when it refuses), and says nothing: the heads tell. Halving a
        refused batch finds each culprit in O(log n) calls, each O(document).
        A change after a refused one of the same author is refused too.
        """
        ready = [(h, d) for h, d in ready if not self._follows_bad(h)]
        if not ready:
            return []
        expected = self._expected_heads(ready)
        before = self._heads
        if not self.careful or len(ready) == 1:
            try:
                ok = self._receive([data for _, data in ready])
            except DocumentBrokenError as exc:
                raise DocumentBrokenError(
                    str(exc), culprit=ready[0][0] if len(ready) == 1 else None) from exc
            heads = self._current_heads()
            if ok and heads == expected:
                self._heads = heads
                return ready
            if heads != before:
                raise DocumentBrokenError("automerge applied part of a refused batch")
            if len(ready) == 1:
                self._refuse(ready[0][0], "automerge cannot apply it")
                return []
        half = len(ready) // 2
        first = self._apply_checked(ready[:half])
        return first + self._apply_checked(ready[half:])

    def _follows_bad(self, header: ChangeHeader) -> bool:
        if (header.actor, header.seq - 1) in self._bad_seq:
            self._refuse(header, "it follows a change that was refused")
            return True
        return False

    def _current_heads(self) -> set[bytes]:
        return {bytes(h) for h in self._doc.get_heads()}

    def _update_view(self, ready: list[tuple[ChangeHeader, bytes]]) -> None:
        by_author: dict[bytes, list[ChangeHeader]] = {}
        new_authors: set[bytes] = set()
        for header, _ in ready:
            by_author.setdefault(header.actor, []).append(header)
            if header.seq == 1:
                new_authors.add(header.actor)
        for author, headers in by_author.items():
            ops = None
            if author not in new_authors and self.view.wants_ops(author, len(headers)):
                ops = [list(h.ops) for h in headers]
            self.view.remote_changes(author, ops, author in new_authors)

    def _note_applied(self, header: ChangeHeader, *, local: bool = False) -> None:
        actor = header.actor
        self.last_hashes[actor] = header.hash
        self.applied_seq[actor] = header.seq
        self.max_ops[actor] = header.max_op
        if header.seq == 1:
            self.start_ops.setdefault(actor, header.start_op)
        if not local:
            # arrived from elsewhere (another process, a restored backup): fork again
            self._own.pop(actor, None)

    def author_state(self, author: bytes) -> AuthorState:
        """What :mod:`p2paid.automerge.rules` needs to know of ``author``, read from this document
        (every map of the author's section and the op visible at each of its keys)."""
        self.merge_local()
        state = AuthorState(self.applied_seq.get(author, 0), self.last_hashes.get(author, b""),
                            self.max_ops.get(author, 0))
        start = self.start_ops.get(author)
        if start is None:
            return state
        state.maps.add(start)
        todo = [section_object_id(author, start)]
        doc = self._doc
        while todo:
            obj = todo.pop()
            ctr = object_counter(obj)
            try:
                keys = read_safely(functools.partial(doc.keys, obj))
            except UnreadableError:
                continue
            for key in keys:
                try:
                    got = read_safely(functools.partial(doc.get, obj, key))
                except UnreadableError:
                    got = None  # the author's later ops on it are refused
                if got is None:
                    continue
                value, op_id = got[0], bytes(got[1])
                op_ctr = object_counter(op_id)
                state.slots[(ctr, key)] = op_ctr
                if value == ObjType.Map:
                    state.maps.add(op_ctr)
                    todo.append(op_id)
        return state

    # ------------------------------------------------------------------ writing

    def _own_document(self, author: bytes) -> Document:
        """A local author's changes alone: new ones then depend only on the
        author's previous change and start after its max op."""
        own = self._own.get(author)
        if own is None:
            head = self.last_hashes.get(author)
            if head is not None:
                self.merge_local()  # (the head is then in the board's document)
            # (fork_at exists in automerge-py 0.2.0.dev4 but not in its type stubs)
            own = (Document(actor_id=author) if head is None
                   else self._doc.fork_at([head]))  # type: ignore[attr-defined]
            own.set_actor(author)
            self._own[author] = own
        return own

    def write(self, edit: Callable[[SectionWriter], None], author: bytes | None = None
              ) -> tuple[ChangeHeader, bytes] | None:
        """Run ``edit`` in one transaction on a local author's section (by default
        :attr:`author`'s; another one becomes one of :attr:`local_authors`).

        The first write also creates the section, as the first op of the
        author's first change (the ownership rule depends on it).

        Returns:
            The new change's header and bytes, or None if ``edit`` changed nothing
            (e.g. it wrote values equal to the current ones).

        Raises:
            Whatever ``edit`` raises (the transaction is rolled back).
            DocumentBrokenError: Automerge would not take the change (a bug).
        """
        author = self.author if author is None else author
        self.local_authors.add(author)
        before = self.applied_seq.get(author, 0)
        own = self._own_document(author)
        with own.transaction() as tx:
            section = self._section_id(author)
            if section is None:
                section = bytes(tx.put_object(ROOT, author.hex(), ObjType.Map))
                tx.put(section, "v", ScalarType.Int, SCHEMA_VERSION)
            writer = SectionWriter(tx, section)
            edit(writer)
        change = own.get_last_local_change()
        if change is None or change.seq == before:
            return None
        header = _local_header(change)
        data = bytes(change.bytes)
        # The board's document gets it later, with others (merge_local): a post then
        # costs the same on a board of 10 items as on one of 10,000.
        self._unmerged.append((header, data))
        self._note_applied(header, local=True)
        full = header.seq == 1 or any(coll == PROFILE for coll, _ in writer.touched)
        self.view.local_write(author, writer.touched, full)
        return header, data

    def _section_id(self, author: bytes | None = None) -> bytes | None:
        author = self.author if author is None else author
        start_op = self.start_ops.get(author)
        return None if start_op is None else section_object_id(author, start_op)

    # ------------------------------------------------------------------ reading

    @property
    def authors(self) -> list[bytes]:
        """Every author whose section this document holds."""
        return list(self.start_ops)

    def section(self, author: bytes) -> Section:
        """The validated content of one author's section (empty if none or malformed)."""
        return self.view.section(author)

    def display_name(self, author: bytes) -> str:
        return self.view.section(author).name

    def items(self) -> list[Item]:
        """Every valid need and offer, with the active claims on each attached."""
        return self.view.items()

    def claims_by(self, author: bytes) -> list[Claim]:
        return list(self.view.section(author).claims.values())

    def track_events(self) -> None:
        """From now on, record a :class:`BoardEvent` for everything that changes."""
        self.view.track()

    def take_events(self) -> list[BoardEvent]:
        """The events recorded since the last call."""
        events, self.view.events = self.view.events, []
        return events

    # ------------------------------------------------------------------ persistence

    def save(self) -> bytes:
        """The whole document in Automerge's saved format.

        Raises:
            StorageError: Automerge cannot save it (it holds a change it should have
                refused; the board still works, but has no snapshot or export).
        """
        self.merge_local()
        try:
            return bytes(read_safely(self._doc.save))
        except UnreadableError as exc:
            raise StorageError(f"the board's document cannot be saved: {exc}") from exc

    def heads(self) -> list[bytes]:
        self.merge_local()
        return sorted(bytes(h) for h in self._doc.get_heads())


