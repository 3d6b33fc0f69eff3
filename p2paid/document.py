"""One board's Automerge document: ownership-aware apply, section writes, typed reads.

Theory of operation
-------------------
Every member writes only inside its own *section*, a map created by the first op
of its first change at root key ``author.hex()``. Readers never look a section up
through the root key (another member could write a conflicting root key and win);
they address it by object id ``(start_op of the author's seq-1 change, author)``,
which Automerge's ``get``/``keys`` accept directly.

Remote changes arrive already verified (signature, chain, ownership) as
``(ChangeHeader, bytes)``. This module releases them in causal order: a change is
applied only once every dependency is applied, so Automerge never has to queue
one and the set of applied hashes is exactly known. Whatever is ready is applied
in one call, because each apply call costs O(document size).

Reads are validated with :mod:`p2paid.model` and cached per author; the cache of
an author is dropped whenever a change of that author is applied.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, final

from automerge.core import ROOT, Document, Message, ObjType, ScalarType, SyncState

from .changeops import decode_ops
from .changes import ChangeHeader, uleb_bytes
from .errors import ChangeMismatchError, LocalProtocolError, NotFoundError
from .model import BoardEvent, Claim, Item, ItemKind
from .readmodel import CLAIMS, COLLECTIONS, PROFILE, ReadModel, Section, section_object_id

__all__ = [
    "BoardDocument",
    "DocumentBrokenError",
    "SectionWriter",
    "new_item_id",
    "section_object_id",
]

SCHEMA_VERSION: Final = 1
#: Most changes held waiting for a dependency; beyond it the oldest are dropped from
#: memory (they stay in the store and are retried when the board is next opened).
MAX_PENDING: Final = 200_000

Value = str | int | None


def new_item_id() -> str:
    """A random 128-bit id as 32 lowercase hex characters."""
    return os.urandom(16).hex()


def _seq_key(author: bytes, seq: int) -> bytes:
    """Waiting-list key for "the author's change ``seq`` is applied"."""
    return b"seq:" + author + seq.to_bytes(8, "big")


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
    """The Automerge document of one board, as seen by one local author.

    Args:
        author: the local author key (Automerge actor id of local changes).
        doc: a loaded document (from a snapshot), or None for an empty one.
        applied: hashes of every change ``doc`` holds.
        vector: ``author -> highest seq`` that ``doc`` holds.
        sections: ``author -> start_op`` of each known section's creating op.
        max_ops: ``author -> max_op`` of the author's newest change in ``doc``.
    """

    def __init__(
        self,
        author: bytes,
        doc: Document | None = None,
        applied: Iterable[bytes] = (),
        vector: Mapping[bytes, int] | None = None,
        sections: Mapping[bytes, int] | None = None,
        max_ops: Mapping[bytes, int] | None = None,
    ) -> None:
        self.author = author
        self._doc = doc if doc is not None else Document(actor_id=author)
        if doc is not None:
            self._doc.set_actor(author)
        self._applied: set[bytes] = set(applied)
        self._pending: dict[bytes, tuple[ChangeHeader, bytes]] = {}
        self._waiting: defaultdict[bytes, list[bytes]] = defaultdict(list)
        self.start_ops: dict[bytes, int] = dict(sections or {})
        self.applied_seq: dict[bytes, int] = dict(vector or {})
        self.max_ops: dict[bytes, int] = dict(max_ops or {})
        self.view = ReadModel(self._doc, self.start_ops, author)
        self._heads = self._current_heads()
        self._refused: list[tuple[ChangeHeader, str]] = []
        self._bad_seq: set[tuple[bytes, int]] = set()
        #: apply one change per Automerge call (after a panic, to find the culprit)
        self.careful = False

    # ------------------------------------------------------------------ applying

    @property
    def automerge(self) -> Document:
        """The underlying automerge-py core document (read it; do not write to it)."""
        return self._doc

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    def add_changes(self, changes: Iterable[tuple[ChangeHeader, bytes]]) -> list[ChangeHeader]:
        """Apply every change whose dependencies are met; hold the rest.

        A change is ready once every hash in its deps is applied and its author's
        previous seq is applied (Automerge panics on a seq gap). Changes that
        Automerge refuses are left out and listed by :meth:`take_refused`.

        Returns:
            The headers of all changes applied by this call (including held ones
            that became ready), in the causal order they were applied.
        """
        ready: list[tuple[ChangeHeader, bytes]] = []
        ready_hashes: set[bytes] = set()
        ready_seq: dict[bytes, int] = {}
        ready_max: dict[bytes, int] = {}
        queue = list(changes)
        queue.reverse()
        applied = self._applied
        while queue:
            header, data = queue.pop()
            h = header.hash
            if h in applied or h in ready_hashes:
                continue
            missing = next((d for d in header.deps if d not in applied and d not in ready_hashes),
                           None)
            if missing is None and ready_seq.get(
                    header.actor, self.applied_seq.get(header.actor, 0)) != header.seq - 1:
                missing = _seq_key(header.actor, header.seq - 1)
            if missing is not None:
                if h not in self._pending:
                    self._hold(header, data, missing)
                continue
            self._pending.pop(h, None)
            if header.start_op <= ready_max.get(header.actor,
                                                 self.max_ops.get(header.actor, 0)):
                # Reusing op ids breaks every later save/load of the document.
                self._refused.append((header, "it reuses op ids of its author"))
                self._bad_seq.add((header.actor, header.seq))
                continue
            ready.append((header, data))
            ready_hashes.add(h)
            ready_seq[header.actor] = header.seq
            ready_max[header.actor] = header.max_op
            for key in (h, _seq_key(header.actor, header.seq)):
                for waiter in reversed(self._waiting.pop(key, ())):
                    held = self._pending.pop(waiter, None)
                    if held is not None:
                        queue.append(held)
        if not ready:
            return []
        return self._apply_ready(ready)

    def take_refused(self) -> list[tuple[ChangeHeader, str]]:
        """Changes Automerge refused to apply since the last call, with the reason."""
        refused, self._refused = self._refused, []
        return refused

    def _hold(self, header: ChangeHeader, data: bytes, missing: bytes) -> None:
        if len(self._pending) >= MAX_PENDING:
            oldest = next(iter(self._pending))
            del self._pending[oldest]
        self._pending[header.hash] = (header, data)
        self._waiting[missing].append(header.hash)

    def _receive(self, changes: list[bytes]) -> bool:
        """Feed changes to Automerge in one call; False if it refused (it then keeps
        the document unchanged). A Rust panic leaves the document in an unknown
        state, so it is raised as :class:`DocumentBrokenError`."""
        try:
            message = Message.decode(sync_message_with_changes(changes))
            self._doc.receive_sync_message(SyncState(), message)
        except Exception:
            return False
        except BaseException as exc:  # pyo3's PanicException derives from BaseException
            if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
                raise
            raise DocumentBrokenError(f"automerge panicked: {exc}") from exc
        return True

    def _expected_heads(self, ready: list[tuple[ChangeHeader, bytes]]) -> set[bytes]:
        heads = set(self._heads)
        for header, _ in ready:
            heads.difference_update(header.deps)
            heads.add(header.hash)
        return heads

    def _apply_ready(self, ready: list[tuple[ChangeHeader, bytes]]) -> list[ChangeHeader]:
        good = self._apply_checked(ready, set())
        for header, _ in good:
            self._note_applied(header)
        self._heads = self._current_heads()
        self._update_view(good)
        return [header for header, _ in good]

    def _apply_checked(
        self, ready: list[tuple[ChangeHeader, bytes]], bad: set[bytes]
    ) -> list[tuple[ChangeHeader, bytes]]:
        """Apply a causally ordered list; on refusal, bisect to find the culprits.

        Automerge takes or refuses a whole sync message (it keeps the document
        unchanged when it refuses), and says nothing: the heads tell. Halving a
        refused batch finds each culprit in O(log n) calls, each O(document).
        ``bad`` collects refused hashes so that dependents are refused too.
        """
        ready = [(h, d) for h, d in ready if not self._depends_on_bad(h, bad)]
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
                header = ready[0][0]
                bad.add(header.hash)
                self._bad_seq.add((header.actor, header.seq))
                self._refused.append((header, "automerge cannot apply it"))
                return []
        half = len(ready) // 2
        first = self._apply_checked(ready[:half], bad)
        return first + self._apply_checked(ready[half:], bad)

    def _depends_on_bad(self, header: ChangeHeader, bad: set[bytes]) -> bool:
        if bad.intersection(header.deps) or (header.actor, header.seq - 1) in self._bad_seq:
            bad.add(header.hash)
            self._bad_seq.add((header.actor, header.seq))
            self._refused.append((header, "depends on a change that was refused"))
            return True
        return False

    def _current_heads(self) -> set[bytes]:
        return {bytes(h) for h in self._doc.get_heads()}

    def _update_view(self, ready: list[tuple[ChangeHeader, bytes]]) -> None:
        by_author: dict[bytes, list[bytes]] = {}
        new_authors: set[bytes] = set()
        for header, data in ready:
            by_author.setdefault(header.actor, []).append(data)
            if header.seq == 1:
                new_authors.add(header.actor)
        for author, changes in by_author.items():
            ops = None
            if author not in new_authors and self.view.wants_ops(author, len(changes)):
                try:
                    ops = [decode_ops(data) for data in changes]
                except ChangeMismatchError:
                    ops = None  # re-read the section whole
            self.view.remote_changes(author, ops, author in new_authors)

    def _note_applied(self, header: ChangeHeader) -> None:
        self._applied.add(header.hash)
        self.applied_seq[header.actor] = header.seq
        self.max_ops[header.actor] = header.max_op
        if header.seq == 1:
            self.start_ops.setdefault(header.actor, header.start_op)

    # ------------------------------------------------------------------ writing

    def write(self, edit: Callable[[SectionWriter], None]) -> tuple[ChangeHeader, bytes] | None:
        """Run ``edit`` in one transaction on the local author's section.

        The first write also creates the section, as the first op of the
        author's first change (the ownership rule depends on it).

        Returns:
            The new change's header and bytes, or None if ``edit`` changed nothing
            (e.g. it wrote values equal to the current ones).

        Raises:
            Whatever ``edit`` raises (the transaction is rolled back).
        """
        before = self.applied_seq.get(self.author, 0)
        with self._doc.transaction() as tx:
            section = self._section_id()
            if section is None:
                section = bytes(tx.put_object(ROOT, self.author.hex(), ObjType.Map))
                tx.put(section, "v", ScalarType.Int, SCHEMA_VERSION)
            writer = SectionWriter(tx, section)
            edit(writer)
        change = self._doc.get_last_local_change()
        if change is None or change.seq == before:
            return None
        header = _local_header(change)
        self._note_applied(header)
        self._heads = {header.hash}
        full = header.seq == 1 or any(coll == PROFILE for coll, _ in writer.touched)
        self.view.local_write(self.author, writer.touched, full)
        return header, bytes(change.bytes)

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
        """The whole document in Automerge's saved format."""
        return bytes(self._doc.save())

    def heads(self) -> list[bytes]:
        return sorted(bytes(h) for h in self._doc.get_heads())


