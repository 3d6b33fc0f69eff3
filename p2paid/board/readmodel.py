"""The validated, cached view of every member's section, and the events it yields.

Reading a section costs O(its entries) Automerge calls, so a section is read
once and then kept current entry by entry: a local write says what it touched,
and a remote change's ops say which objects they targeted
(:mod:`p2paid.automerge.chunk`), which an index of object counters maps back to
entries. Each refreshed entry is compared with its cached value; differences
become :class:`~p2paid.board.model.BoardEvent` values when events are tracked.

Sections are addressed by object id, never by root key (``document`` explains why).

Every Automerge read goes through :func:`read_safely`: a value that makes the
binding panic (a type it cannot convert) is one invalid entry, never a crash of
the reader. Remote changes are checked (:mod:`p2paid.automerge.rules`) so that this should
not happen; this is the second line of defence.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Set
from dataclasses import dataclass, field, replace
from typing import Any, Final, TypeVar, final

from automerge.core import Document, ObjType

from p2paid.automerge.chunk import ACTION_MAKE_MAP, Op, uleb_bytes
from p2paid.board.model import (
    BoardEvent,
    Claim,
    ClaimStatus,
    EventKind,
    Item,
    ItemKind,
    Member,
    clean_text,
)
from p2paid.core.text import name_key
from p2paid.errors import ValidationError

__all__ = [
    "CLAIMS",
    "COLLECTIONS",
    "PROFILE",
    "ReadModel",
    "Section",
    "read_safely",
    "section_object_id",
]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

COLLECTIONS: Final = {ItemKind.NEED: "needs", ItemKind.OFFER: "offers"}
CLAIMS: Final = "claims"
PROFILE: Final = "profile"
_KINDS: Final = {coll: kind for kind, coll in COLLECTIONS.items()}
#: Above this many changes of one author in one batch, re-read its section whole
#: instead of decoding every change.
_FULL_READ_CHANGES: Final = 200

Entry = Item | Claim
EntryKey = tuple[str, str]  # (collection, id)


def section_object_id(author: bytes, start_op: int) -> bytes:
    """Automerge's external object id for op ``start_op@author``.

    Layout: ``0x10 (version 1, kind id) || uLEB(len(actor)) || actor ||
    uLEB(actor index hint = 0) || uLEB(counter)``; the index is a hint that
    Automerge corrects by the actor bytes.
    """
    return b"\x10" + uleb_bytes(len(author)) + author + uleb_bytes(0) + uleb_bytes(start_op)


class UnreadableError(Exception):
    """Automerge could not give a value (it raised, or its binding panicked)."""


def read_safely(read: Callable[[], _T]) -> _T:
    """Run one Automerge read; any failure, a Rust panic included, becomes
    :class:`UnreadableError` (the caller treats the entry as invalid).

    pyo3's PanicException derives from BaseException; the panic happens while
    converting a value to Python, after Automerge released the document, so the
    document stays usable.
    """
    try:
        return read()
    except Exception as exc:  # automerge raises a bare Exception for an unknown object id
        raise UnreadableError(str(exc)) from exc
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
            raise
        log.error("automerge could not read a value (%s); it is left out", exc)
        raise UnreadableError(str(exc)) from exc


def object_counter(obj_id: bytes) -> int:
    """The op counter of an external object id (its last uLEB)."""
    result = shift = 0
    pos = len(obj_id) - 1
    while pos > 0 and obj_id[pos - 1] & 0x80:
        pos -= 1
    for byte in obj_id[pos:]:
        result |= (byte & 0x7F) << shift
        shift += 7
    return result


@dataclass(slots=True)
class Section:
    """What one author's section holds, validated, with an index of its objects."""

    name: str = ""
    relays: tuple[str, ...] = ()
    items: dict[ItemKind, dict[str, Item]] = field(
        default_factory=lambda: {kind: {} for kind in ItemKind}
    )
    claims: dict[str, Claim] = field(default_factory=dict)
    #: op counter of each collection map -> its name
    collections: dict[int, str] = field(default_factory=dict)
    #: op counter of each entry map -> (collection, id)
    entries: dict[int, EntryKey] = field(default_factory=dict)

    def get(self, key: EntryKey) -> Entry | None:
        coll, entry_id = key
        kind = _KINDS.get(coll)
        return self.claims.get(entry_id) if kind is None else self.items[kind].get(entry_id)

    def all_entries(self) -> dict[EntryKey, Entry]:
        out: dict[EntryKey, Entry] = {
            (COLLECTIONS[kind], i): item for kind, by_id in self.items.items()
            for i, item in by_id.items()
        }
        out.update(((CLAIMS, i), c) for i, c in self.claims.items())
        return out


@final
class ReadModel:
    """Cached sections of one document.

    Args:
        doc: the Automerge document (read only here), or a function giving the
            document to read one author's section from (a local author's own
            changes may live in a document of their own: see BoardDocument.write).
        start_ops: ``author -> start_op`` of each section, kept current by the caller.
        local_authors: authors whose changes are made on this node (their events are
            ``local``), kept current by the caller.
    """

    def __init__(self, doc: Document | Callable[[bytes], Document],
                 start_ops: Mapping[bytes, int], local_authors: Set[bytes] = frozenset()
                 ) -> None:
        if isinstance(doc, Document):
            only = doc

            def the_document(_author: bytes) -> Document:
                return only

            self._doc_of: Callable[[bytes], Document] = the_document
        else:
            self._doc_of = doc
        #: changes by these authors count as local (made here, or by another process here)
        self.local_authors = local_authors
        self._start_ops = start_ops
        self._cache: dict[bytes, Section] = {}
        #: name_key of each cached section's display name, and how many cached sections
        #: show each key (complete whenever every section is cached)
        self._name_keys: dict[bytes, str] = {}
        self._name_counts: Counter[str] = Counter()
        #: when True, every section is cached and changes produce events
        self.tracking = False
        self.events: list[BoardEvent] = []

    # -------------------------------------------------------------- public reads

    def section(self, author: bytes) -> Section:
        cached = self._cache.get(author)
        if cached is None:
            cached = self._read_section(author)
            self._cache_put(author, cached)
        return cached

    def name_shared(self, author: bytes) -> bool:
        """Whether another member's display name looks like this author's (valid
        once every section is cached: when tracking, or after :meth:`items`)."""
        key = self._name_keys.get(author)
        return key is not None and self._name_counts[key] > 1

    def members(self) -> list[Member]:
        """Every author with a section, with its display name."""
        authors = list(self._start_ops)
        sections = [self.section(author) for author in authors]
        return [Member(a.hex(), sec.name, self.name_shared(a))
                for a, sec in zip(authors, sections, strict=True)]

    def _cache_put(self, author: bytes, sec: Section) -> None:
        self._cache_drop(author)
        self._cache[author] = sec
        key = name_key(sec.name)
        if key:
            self._name_keys[author] = key
            self._name_counts[key] += 1

    def _cache_drop(self, author: bytes) -> None:
        self._cache.pop(author, None)
        key = self._name_keys.pop(author, None)
        if key is not None:
            self._name_counts[key] -= 1
            if not self._name_counts[key]:
                del self._name_counts[key]

    def relays(self, author: bytes) -> tuple[str, ...]:
        """The relay hints an author published (read alone: no need for the whole section)."""
        cached = self._cache.get(author)
        if cached is not None:
            return cached.relays
        obj = self._section_obj(author)
        doc = self._doc_of(author)
        try:
            profile = None if obj is None else read_safely(lambda: doc.get(obj, PROFILE))
            value = None if profile is None else read_safely(
                lambda: doc.get(profile[1], "relays"))
        except UnreadableError:
            return ()
        if value is None or isinstance(value[0], ObjType) or not isinstance(value[0][1], str):
            return ()
        return tuple(r for r in value[0][1].split("\n") if r)[:8]

    def track(self) -> None:
        """Cache every section now and report changes as events from here on."""
        for author in list(self._start_ops):
            self.section(author)
        self.tracking = True

    def items(self) -> list[Item]:
        """Every valid need and offer, oldest first, with its active claims attached."""
        authors = list(self._start_ops)
        sections = [self.section(author) for author in authors]
        shared = {a.hex() for a in authors if self.name_shared(a)}
        claims: defaultdict[tuple[str, str], list[Claim]] = defaultdict(list)
        for sec in sections:
            for claim in sec.claims.values():
                if claim.status is ClaimStatus.ACTIVE:
                    if claim.author in shared:
                        claim = replace(claim, name_shared=True)
                    claims[(claim.item_author, claim.item_id)].append(claim)
        out: list[Item] = []
        for sec in sections:
            for by_id in sec.items.values():
                for item in by_id.values():
                    on_item = claims.get((item.author, item.id))
                    if on_item or item.author in shared:
                        on_item = sorted(on_item or (), key=lambda c: (c.created, c.id))
                        item = replace(item, claims=tuple(on_item),
                                       name_shared=item.author in shared)
                    out.append(item)
        out.sort(key=lambda i: (i.created, i.id))
        return out

    # -------------------------------------------------------------- keeping current

    def local_write(self, author: bytes, touched: Iterable[EntryKey], full: bool) -> None:
        """A local write touched these entries (``full``: the profile or structure)."""
        self._refresh(author, None if full else set(touched), new_author=False, local=True)

    def remote_changes(self, author: bytes, ops: list[list[Op]] | None, new_author: bool) -> None:
        """Changes of ``author`` were applied; ``ops`` are their decoded ops (None: unknown)."""
        sec = self._cache.get(author)
        if sec is None:
            if self.tracking and new_author:
                self._refresh(author, None, new_author=True, local=author in self.local_authors)
            return
        if not self.tracking:
            self._cache_drop(author)  # re-read lazily
            return
        touched = None if ops is None else self._touched(author, sec, ops)
        self._refresh(author, touched, new_author=False, local=author in self.local_authors)

    def wants_ops(self, author: bytes, changes: int) -> bool:
        """Whether decoding ``changes`` changes of ``author`` is worth it."""
        return self.tracking and author in self._cache and changes <= _FULL_READ_CHANGES

    def _touched(self, author: bytes, sec: Section, ops: list[list[Op]]) -> set[EntryKey] | None:
        """Entries the ops touched, or None when the section's structure changed."""
        section_ctr = self._start_ops.get(author)
        created: dict[int, EntryKey] = {}
        touched: set[EntryKey] = set()
        for change_ops in ops:
            for op in change_ops:
                if op.obj is None:
                    continue  # root keys are never read
                ctr = op.obj[1]
                if ctr == section_ctr:
                    return None
                coll = sec.collections.get(ctr)
                if coll == PROFILE:
                    return None
                if coll is not None and op.key is not None:
                    touched.add((coll, op.key))
                    if op.action == ACTION_MAKE_MAP:
                        created[op.counter] = (coll, op.key)
                elif ctr in sec.entries:
                    touched.add(sec.entries[ctr])
                elif ctr in created:
                    touched.add(created[ctr])
        return touched

    def _refresh(
        self, author: bytes, touched: set[EntryKey] | None, *, new_author: bool, local: bool
    ) -> None:
        old = Section() if new_author else self._cache.get(author)
        if old is None:
            return
        if touched is None:
            new = self._read_section(author)
            self._cache_put(author, new)
            if self.tracking:
                self._diff(author, old.all_entries(), new.all_entries(), new, local)
                if old.name != new.name and not new_author:
                    self.events.append(BoardEvent(EventKind.MEMBER_RENAMED, author.hex(),
                                                  new.name, local=local,
                                                  name_shared=self.name_shared(author)))
            return
        before = {key: old.get(key) for key in touched}
        obj = self._section_obj(author)
        for key in touched:
            self._read_entry(old, author, obj, key)
        if self.tracking:
            after = {key: old.get(key) for key in touched}
            self._diff(author, before, after, old, local)

    def _diff(
        self, author: bytes, before: Mapping[EntryKey, Entry | None],
        after: Mapping[EntryKey, Entry | None], sec: Section, local: bool,
    ) -> None:
        def when(key: EntryKey) -> tuple[int, EntryKey]:
            entry = after.get(key) or before.get(key)
            return (entry.updated if entry is not None else 0), key

        for key in sorted(set(before) | set(after), key=when):  # in the order they happened
            old, new = before.get(key), after.get(key)
            if old == new:
                continue
            kind = _event_kind(old, new)
            item = new if isinstance(new, Item) else old if isinstance(old, Item) else None
            claim = new if isinstance(new, Claim) else old if isinstance(old, Claim) else None
            if claim is not None:
                item = self._claimed_item(claim)
            self.events.append(BoardEvent(kind, author.hex(), sec.name, item=item,
                                          claim=claim, previous=old, local=local,
                                          name_shared=self.name_shared(author)))

    def _claimed_item(self, claim: Claim) -> Item | None:
        try:
            author = bytes.fromhex(claim.item_author)
        except ValueError:
            return None
        sec = self._cache.get(author)
        if sec is None:
            return None
        for by_id in sec.items.values():
            if claim.item_id in by_id:
                return by_id[claim.item_id]
        return None

    # -------------------------------------------------------------- Automerge reads

    def _section_obj(self, author: bytes) -> bytes | None:
        start_op = self._start_ops.get(author)
        return None if start_op is None else section_object_id(author, start_op)

    def _read_map(self, obj: bytes, doc: Document, *, whole: bool = False) -> dict[str, Any]:
        """A map's keys and values; a value that cannot be read is left out, or, with
        ``whole`` (an entry: one need, offer or claim), makes the map unreadable."""
        keys = read_safely(lambda: doc.keys(obj))
        values: list[Any]
        try:
            values = read_safely(lambda: doc.values(obj))
        except UnreadableError:
            if whole:
                raise
            values = []
            for key in keys:  # find the unreadable one(s); keep the rest
                try:
                    values.append(read_safely(functools.partial(doc.get, obj, key)))
                except UnreadableError:
                    values.append(None)
        return {
            key: (got[0][1] if not isinstance(got[0], ObjType) else (got[0], got[1]))
            for key, got in zip(keys, values, strict=True) if got is not None
        }

    def _read_section(self, author: bytes) -> Section:
        sec = Section()
        obj = self._section_obj(author)
        if obj is None:
            return sec
        doc = self._doc_of(author)
        try:
            if read_safely(lambda: doc.object_type(obj)) != ObjType.Map:
                return sec
            fields = self._read_map(obj, doc)
        except UnreadableError:
            return sec
        children: dict[str, bytes] = {}
        for coll in (*COLLECTIONS.values(), CLAIMS, PROFILE):
            entry = fields.get(coll)
            if isinstance(entry, tuple) and entry[0] == ObjType.Map:
                children[coll] = entry[1]
                sec.collections[object_counter(entry[1])] = coll
        try:
            profile = (self._read_map(children[PROFILE], doc, whole=True)
                       if PROFILE in children else {})
        except UnreadableError:
            profile = {}
        try:
            sec.name = clean_text(profile.get("name", ""), "display name")
        except ValidationError:
            sec.name = ""
        relays = profile.get("relays")
        if isinstance(relays, str):
            sec.relays = tuple(r for r in relays.split("\n") if r)[:8]
        author_hex = author.hex()
        for coll, child in children.items():
            if coll == PROFILE:
                continue
            try:
                entries = self._read_map(child, doc)
            except UnreadableError:
                continue
            for entry_id, value in entries.items():
                self._store_entry(sec, author_hex, (coll, entry_id), value, doc)
        return sec

    def _read_entry(self, sec: Section, author: bytes, obj: bytes | None, key: EntryKey) -> None:
        coll, entry_id = key
        value = None
        doc = self._doc_of(author)
        if obj is not None:
            try:
                child = read_safely(lambda: doc.get(obj, coll))
                if child is not None and child[0] == ObjType.Map:
                    sec.collections[object_counter(child[1])] = coll
                    value = read_safely(lambda: doc.get(child[1], entry_id))
            except UnreadableError:
                value = None
        self._store_entry(sec, author.hex(), key, value, doc)

    def _store_entry(self, sec: Section, author_hex: str, key: EntryKey, value: Any,
                     doc: Document) -> None:
        """Validate one entry into ``sec``; a malformed or missing one is left out."""
        coll, entry_id = key
        kind = _KINDS.get(coll)
        target: dict[str, Any] = sec.claims if kind is None else sec.items[kind]
        target.pop(entry_id, None)
        if not (isinstance(value, tuple) and value[0] == ObjType.Map):
            return
        sec.entries[object_counter(value[1])] = key
        try:
            fields = self._read_map(value[1], doc, whole=True)
        except UnreadableError:
            return  # one invalid entry: not shown
        try:
            if kind is None:
                target[entry_id] = Claim.from_fields(entry_id, author_hex, sec.name, fields)
            else:
                target[entry_id] = Item.from_fields(kind, entry_id, author_hex, sec.name, fields)
        except ValidationError:
            return  # a malformed entry is not shown


def _event_kind(old: Entry | None, new: Entry | None) -> EventKind:
    entry = new if new is not None else old
    if isinstance(entry, Claim):
        if old is None:
            return EventKind.CLAIM_ADDED
        return EventKind.CLAIM_REMOVED if new is None else EventKind.CLAIM_CHANGED
    if old is None:
        return EventKind.ITEM_ADDED
    return EventKind.ITEM_REMOVED if new is None else EventKind.ITEM_CHANGED
