"""The rules a member's change must pass before it is applied (``protocol/SPEC.md`` 5).

:func:`p2paid.automerge.chunk.parse_change` checks that a change is well formed; this module
checks that it is one an honest member of a board can make, so that Automerge never
sees a change that could make it panic, corrupt the document or strand other members:

* **Own feed only.** The change at ``seq = 1`` has no dependencies and starts at op 1;
  the change at ``seq = s > 1`` depends on exactly the author's change ``s - 1`` and
  starts at that change's max op + 1. Members never depend on each other, so one
  member's fork or bad change touches only that member's feed.
* **Map ops of the schema only.** Make a map, put an int or a string, delete a
  value. Nothing else: no counters (they crash the binding), no lists or text, no
  unknown value types (they panic on read).
* **Ops on the author's own objects, with exact predecessors.** The first op of the
  first change creates the author's section at root key ``author.hex()``; no other
  op touches the root. Every other op targets a map the author created; its pred
  is exactly the op it overwrites (the value the author's own history shows at that
  key) and nothing else; maps are never overwritten or deleted.

Theory of operation: :class:`FeedRules` keeps, per author, the state these checks
need (:class:`AuthorState`: feed head, max op, the author's maps and the visible op
at each of their keys). :meth:`FeedRules.check` validates one change against it and
records the change's effect in a journal, so that a batch whose storing fails can be
undone (:meth:`FeedRules.rollback`). State for an author with history is built on
demand by the caller's loader (from the document) and dropped with
:meth:`FeedRules.forget` when the caller cannot vouch for it any more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, final

from p2paid.automerge.chunk import (
    ACTION_DEL,
    ACTION_MAKE_MAP,
    ACTION_SET,
    VALUE_INT,
    VALUE_NULL,
    VALUE_STR,
    ChangeHeader,
    parse_change,
)
from p2paid.core.envelope import Envelope
from p2paid.errors import ChangeMismatchError, DependencyError, ForbiddenOpError, OwnershipError

__all__ = [
    "MAX_KEY_CHARS",
    "MAX_OP_COUNTER",
    "AuthorState",
    "FeedRules",
    "check_change",
    "check_header",
]

#: Highest op counter a change may reach. Automerge's counters overflow a u32 in
#: places (a change at 2^32 - 2 aborted every later write); this leaves a wide margin.
MAX_OP_COUNTER: Final = 2**31 - 1
#: Longest map key (the schema's keys are field names and 32-hex ids).
MAX_KEY_CHARS: Final = 64
_ALLOWED_VALUES: Final = {
    ACTION_MAKE_MAP: frozenset({VALUE_NULL}),
    ACTION_SET: frozenset({VALUE_INT, VALUE_STR}),
    ACTION_DEL: frozenset({VALUE_NULL}),
}
_ACTION_NAMES: Final = {ACTION_MAKE_MAP: "make a map", ACTION_SET: "put", ACTION_DEL: "delete"}


@final
@dataclass(slots=True)
class AuthorState:
    """What the rules need to know of one author's feed."""

    seq: int = 0
    last_hash: bytes = b""
    max_op: int = 0
    #: counters of every map the author created (its section included)
    maps: set[int] = field(default_factory=set)
    #: ``(map counter, key) -> counter`` of the op visible there
    slots: dict[tuple[int, str], int] = field(default_factory=dict)


Loader = Callable[[bytes], AuthorState]


@final
class FeedRules:
    """Validates changes, author by author, and remembers their effect.

    Args:
        load: builds the state of an author that already has changes (called once
            per author, when its next change arrives); authors without history start
            empty without calling it.
        has_history: tells whether an author already has changes here.
    """

    def __init__(self, load: Loader, has_history: Callable[[bytes], bool]) -> None:
        self._load = load
        self._has_history = has_history
        self._states: dict[bytes, AuthorState] = {}
        #: states adopted but not built yet (see :meth:`adopt`)
        self._unbuilt: dict[bytes, Callable[[], AuthorState]] = {}
        #: authors whose state :meth:`adopt` set since the last commit
        self._adopted: list[bytes] = []
        #: undo records of the open batch: (state, seq, last_hash, max_op, maps added,
        #: slots before)
        self._journal: list[tuple[AuthorState, int, bytes, int, list[int],
                                  dict[tuple[int, str], int | None]]] = []

    def forget(self, author: bytes) -> None:
        """Drop what is known of ``author`` (it is loaded again when next needed)."""
        self._states.pop(author, None)
        self._unbuilt.pop(author, None)

    def adopt(self, author: bytes, state: AuthorState | Callable[[], AuthorState]) -> None:
        """Take ``state`` as what is known of ``author`` (checked elsewhere: a checkpoint's
        changes, say), or a function building it when first needed; a rollback forgets
        it again."""
        self._states.pop(author, None)
        self._unbuilt.pop(author, None)
        if isinstance(state, AuthorState):
            self._states[author] = state
        else:
            self._unbuilt[author] = state
        self._adopted.append(author)

    def state(self, author: bytes) -> AuthorState:
        state = self._states.get(author)
        if state is None:
            build = self._unbuilt.pop(author, None)
            if build is not None:
                state = build()
            else:
                state = self._load(author) if self._has_history(author) else AuthorState()
            self._states[author] = state
        return state

    # -------------------------------------------------------------- batches

    def commit(self) -> None:
        """Keep everything checked since the last commit or rollback."""
        self._journal.clear()
        self._adopted.clear()

    def rollback(self) -> None:
        """Undo the effect of every change checked since the last commit."""
        for state, seq, last_hash, max_op, added, before in reversed(self._journal):
            state.seq, state.last_hash, state.max_op = seq, last_hash, max_op
            state.maps.difference_update(added)
            for key, old in before.items():
                if old is None:
                    state.slots.pop(key, None)
                else:
                    state.slots[key] = old
        self._journal.clear()
        for author in self._adopted:
            self._states.pop(author, None)
            self._unbuilt.pop(author, None)
        self._adopted.clear()

    # -------------------------------------------------------------- the check

    def check(self, header: ChangeHeader) -> None:
        """Check one change of ``header.actor`` (already known to be the envelope's
        actor and seq, with no other actors) and record its effect.

        Raises:
            DependencyError: its dependencies or op counters break the own-feed rule.
            ForbiddenOpError: an op is not one the board schema allows.
        """
        state = self.state(header.actor)
        _check_feed(state, header)
        added: list[int] = []
        before: dict[tuple[int, str], int | None] = {}
        maps = state.maps
        slots = state.slots
        try:
            for index, op in enumerate(header.ops):
                counter = op.counter
                if op.insert:
                    raise ForbiddenOpError(f"op {counter} inserts into a list")
                allowed = _ALLOWED_VALUES.get(op.action)
                if allowed is None:
                    raise ForbiddenOpError(
                        f"op {counter} has action {op.action} (only make map, put, delete)")
                if op.value_type not in allowed:
                    raise ForbiddenOpError(
                        f"op {counter} ({_ACTION_NAMES[op.action]}) has a value of type "
                        f"{op.value_type}, which the board schema does not use")
                if op.obj is None:
                    if not (header.seq == 1 and index == 0 and op.action == ACTION_MAKE_MAP
                            and op.key == header.actor.hex() and not op.preds):
                        raise ForbiddenOpError(
                            f"op {counter} writes the root map (only a member's first op "
                            "creates its section there)")
                    maps.add(counter)
                    added.append(counter)
                    continue
                if op.obj[0] != 0 or op.obj[1] not in maps:
                    raise ForbiddenOpError(f"op {counter} targets an object its author did "
                                           "not create")
                key = op.key
                if not 0 < len(key) <= MAX_KEY_CHARS:
                    raise ForbiddenOpError(f"op {counter} has an empty or overlong key")
                slot = (op.obj[1], key)
                current = slots.get(slot)
                expected = () if current is None else ((0, current),)
                if op.preds != expected:
                    raise ForbiddenOpError(
                        f"op {counter} names predecessors {list(op.preds)} where its "
                        f"author's history has {list(expected)}")
                if current is not None and current in maps:
                    raise ForbiddenOpError(f"op {counter} overwrites or deletes a map")
                if slot not in before:
                    before[slot] = current
                if op.action == ACTION_DEL:
                    if current is None:
                        raise ForbiddenOpError(f"op {counter} deletes a key that has no value")
                    del slots[slot]
                else:
                    slots[slot] = counter
                    if op.action == ACTION_MAKE_MAP:
                        maps.add(counter)
                        added.append(counter)
        except ForbiddenOpError:
            # Undo this change's partial effect; earlier changes of the batch stay.
            maps.difference_update(added)
            for slot, old in before.items():
                if old is None:
                    slots.pop(slot, None)
                else:
                    slots[slot] = old
            raise
        self._journal.append((state, state.seq, state.last_hash, state.max_op, added, before))
        state.seq = header.seq
        state.last_hash = header.hash
        state.max_op = header.max_op


def _check_feed(state: AuthorState, header: ChangeHeader) -> None:
    """The own-feed rule: deps and start op follow from the author's previous change."""
    if header.seq != state.seq + 1:
        raise DependencyError(f"change seq {header.seq} does not follow seq {state.seq}")
    expected_deps = () if header.seq == 1 else (state.last_hash,)
    if header.deps != expected_deps:
        raise DependencyError(
            f"change seq {header.seq} must depend on exactly its author's previous change"
            if header.seq > 1 else "a member's first change must have no dependencies")
    if header.start_op != state.max_op + 1:
        raise DependencyError(
            f"change seq {header.seq} starts at op {header.start_op}; its author's previous "
            f"change ends at op {state.max_op}")
    if header.op_count == 0:
        raise DependencyError(f"change seq {header.seq} has no ops")
    if header.max_op > MAX_OP_COUNTER:
        raise DependencyError(f"change seq {header.seq} reaches op {header.max_op}, "
                              f"beyond {MAX_OP_COUNTER}")


def check_change(envelope: Envelope, change: bytes) -> ChangeHeader:
    """Check a decrypted change against its envelope and the ownership rule.

    Raises:
        ChangeMismatchError: malformed, or its actor or seq differ from the envelope's.
        OwnershipError: its actor table names another member (it would touch their objects).
    """
    return check_header(envelope, parse_change(change))


def check_header(envelope: Envelope, header: ChangeHeader) -> ChangeHeader:
    """:func:`check_change` on an already parsed header."""
    if header.actor != envelope.author:
        raise ChangeMismatchError("change actor differs from the envelope's author")
    if header.seq != envelope.seq:
        raise ChangeMismatchError(
            f"change seq {header.seq} differs from the envelope's seq {envelope.seq}"
        )
    if header.other_actors:
        raise OwnershipError(
            f"change seq {envelope.seq} references {len(header.other_actors)} other member(s)"
        )
    return header
