"""Which relays a node syncs through, and which are only suggested by members.

A relay a node dials learns the node's IP address and node key and receives every
envelope of the boards synced through it, so a node uses only relays that its
user chose (``protocol/SPEC.md`` section 14.1):

* **configured**: the node's own configuration (``p2paid relay add``), for every
  board or for some;
* **the board's own**: from its invite, added here (``board invite --relay``,
  ``relay add --board``) or accepted from a suggestion (``relay accept``);
* **published by the local member**: its own section's ``profile.relays``, its own
  choice.

Relays that *other* members publish in their sections are **suggestions**: shown
with who suggests them, used only once the user accepts them. Otherwise any member
could make every node dial a host of its choosing.

Pure functions over addresses; no I/O.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, final

from p2paid.board.model import Member
from p2paid.core.relayaddr import RelayAddress
from p2paid.errors import P2paidError

__all__ = [
    "REJECTED_META_PREFIX",
    "RelaySuggestion",
    "RelayTarget",
    "board_relays",
    "configured_for",
    "normal_address",
    "plan_relays",
    "relay_changes",
    "relay_targets",
    "suggestions",
]

#: Store meta key (followed by the board id in hex) of the relays a user rejected.
REJECTED_META_PREFIX: Final = "relays-rejected:"


@final
@dataclass(frozen=True, slots=True)
class RelaySuggestion:
    """A relay that other members of a board publish, which this node does not use."""

    address: str  #: in normal form
    board_id: bytes
    board_name: str
    #: the members who publish it (their display names are not verified: see fingerprints)
    suggested_by: tuple[Member, ...]
    #: the user said not to use it (``relay reject``); it can still be accepted
    rejected: bool = False

    def to_json(self) -> dict[str, object]:
        return {"relay": self.address, "board": self.board_id.hex(),
                "board_name": self.board_name, "rejected": self.rejected,
                "suggested_by": [m.to_json() for m in self.suggested_by]}


def normal_address(text: str) -> str | None:
    """``text`` as a relay address in normal form, or None if it is not one."""
    try:
        return str(RelayAddress.parse(text))
    except (P2paidError, ValueError):
        return None


def _normal(texts: Iterable[str]) -> list[str]:
    found: dict[str, None] = {}
    for text in texts:
        address = normal_address(text)
        if address is not None:
            found[address] = None
    return list(found)


def board_relays(own: Iterable[str], published_by_me: Iterable[str]) -> list[str]:
    """The relays a board syncs through: its own, then those the local member
    publishes; each valid address once, in normal form."""
    return _normal([*own, *published_by_me])


def suggestions(
    board_id: bytes, board_name: str, published: Sequence[tuple[Member, Sequence[str]]],
    in_use: Collection[str], rejected: Collection[str],
) -> list[RelaySuggestion]:
    """Relays other members publish on a board that it does not use, each once with
    every member who publishes it, in the order they were first seen.

    Args:
        published: ``(member, relay hints)`` of every member other than the local one.
        in_use: addresses (normal form) the board syncs through already.
        rejected: addresses (normal form) the user rejected on this board.
    """
    by: dict[str, list[Member]] = {}
    for member, hints in published:
        for address in _normal(hints):
            if address not in in_use:
                by.setdefault(address, []).append(member)
    return [RelaySuggestion(address, board_id, board_name, tuple(members),
                            rejected=address in rejected)
            for address, members in by.items()]


def plan_relays(
    configured: Mapping[str, Collection[bytes] | None], boards: Mapping[bytes, Iterable[str]]
) -> dict[str, frozenset[bytes]]:
    """Which boards to sync through which relay.

    Args:
        configured: the node's relays, ``address -> board ids`` (None: every board).
        boards: ``board id -> relays it syncs through`` (:func:`board_relays`).

    Returns:
        ``address -> board ids``, for every relay with at least one board.
    """
    plan: dict[str, set[bytes]] = {}
    for text, only in configured.items():
        address = normal_address(text)
        if address is not None:
            plan.setdefault(address, set()).update(
                b for b in boards if only is None or b in only)
    for board_id, relays in boards.items():
        for address in _normal(relays):
            plan.setdefault(address, set()).add(board_id)
    return {a: frozenset(ids) for a, ids in plan.items() if ids}


def configured_for(configured: Mapping[str, Collection[bytes] | None], board_id: bytes
                   ) -> set[str]:
    """The configured relays (normal form) that apply to ``board_id``."""
    return {a for a in _normal(t for t, only in configured.items()
                               if only is None or board_id in only)}


@final
@dataclass(frozen=True, slots=True)
class RelayTarget:
    """One relay to dial: its address (key and token included) and the boards to sync
    through it."""

    address: RelayAddress
    boards: frozenset[bytes]

    @property
    def endpoint(self) -> tuple[str, int]:
        return self.address.host, self.address.port


def relay_targets(plan: Mapping[str, frozenset[bytes]]) -> dict[tuple[str, int], RelayTarget]:
    """One target per relay host and port, from :func:`plan_relays`: the boards of every
    address naming it, and its token if any of them carries one. Addresses that do not
    parse are left out (they are never fatal)."""
    wanted: dict[tuple[str, int], RelayTarget] = {}
    for text, board_ids in plan.items():
        try:
            address = RelayAddress.parse(text)
        except P2paidError:
            continue
        known = wanted.get((address.host, address.port))
        if known is not None and known.address.key == address.key:
            address = known.address.with_token(known.address.token or address.token)
            board_ids = known.boards | board_ids
        target = RelayTarget(address, board_ids)
        wanted[target.endpoint] = target
    return wanted


def relay_changes(dialing: Mapping[tuple[str, int], RelayTarget],
                  wanted: Mapping[tuple[str, int], RelayTarget]
                  ) -> tuple[list[RelayTarget], list[RelayTarget]]:
    """``(stop, start)``: the relays dialled now that are no longer wanted as they are
    (another key, token or set of boards: those are redialled), and those to dial."""
    stop = [t for endpoint, t in dialing.items() if wanted.get(endpoint) != t]
    start = [t for endpoint, t in wanted.items() if dialing.get(endpoint) != t]
    return stop, start
