"""What a ``SyncConnection`` (:mod:`p2paid.core.connection`) hands its driver: frozen
dataclasses, as h11's and wsproto's events are, and the :data:`PAUSED` sentinel.

Besides these, the connection passes on the session's own
:class:`~p2paid.core.replication.SyncEvent` (linked, in-sync, received, refused, fork).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, final

from p2paid.core.replication import SyncEvent
from p2paid.core.wire import Hello, Message

__all__ = [
    "PAUSED",
    "Authenticated",
    "BatchReceived",
    "ConnectionEnded",
    "ConnectionEvent",
    "HelloReceived",
    "Paused",
    "RawMessage",
    "Throttled",
]


@final
@dataclass(frozen=True, slots=True)
class Authenticated:
    """The handshake is done: admit the peer (:meth:`SyncConnection.start`) or close."""

    remote_id: bytes  #: the peer's node id
    handshake_hash: bytes  #: the channel binding


@final
@dataclass(frozen=True, slots=True)
class RawMessage:
    """A message received before any session started (a plain secure channel)."""

    message: Message


@final
@dataclass(frozen=True, slots=True)
class HelloReceived:
    """The peer's Hello: answer :meth:`SyncConnection.accept_hello` or close."""

    hello: Hello


@final
@dataclass(frozen=True, slots=True)
class BatchReceived:
    """An Envelopes batch to receive; report with :meth:`SyncConnection.batch_done`.

    The envelopes are per author in seq order, so contiguous slices of them may be
    received one after the other.
    """

    token: int
    board_id: bytes
    envelopes: tuple[bytes, ...]


@final
@dataclass(frozen=True, slots=True)
class Throttled:
    """The peer sends faster than ``rate`` bytes/s: reading slows down (once told)."""

    rate: int


@final
@dataclass(frozen=True, slots=True)
class ConnectionEnded:
    """The exchange is over; ``reason`` says why (None: the peer hung up)."""

    reason: str | None


class Paused:
    """The type of :data:`PAUSED` (there is one instance)."""

    def __repr__(self) -> str:
        return "PAUSED"


#: Returned by :meth:`SyncConnection.next_event` while an event awaits the host's answer.
PAUSED: Final = Paused()
ConnectionEvent = (Authenticated | RawMessage | HelloReceived | BatchReceived | SyncEvent
                   | Throttled | ConnectionEnded)
