"""What the network shell asks of the node or relay above it, and how it is told to run.

The shell never names a ``Node`` or a ``Relay``: a connection's driver takes a
:class:`ConnectionHost` and :class:`ConnectionOptions`, the dialler a :class:`DialHost`,
and mDNS any :class:`DialTargets` (the dialler is one). Policy (admission, duplicates,
known peers, tokens, whom to tell about new envelopes) is the host's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol, final

from p2paid.core.identity import NodeKey
from p2paid.core.replication import Replica, SyncEvent
from p2paid.core.wire import Hello, Message

if TYPE_CHECKING:
    from p2paid.net.connection import Connection
    from p2paid.net.peers import DialTarget

__all__ = [
    "RECEIVE_SLICE",
    "ConnectionHost",
    "ConnectionOptions",
    "DeferredWork",
    "DialHost",
    "DialTargets",
]

#: Envelopes per ``replica.receive`` call: about 15 ms of verifying, checking and
#: storing on a small machine, so the event loop runs at least that often.
RECEIVE_SLICE: Final = 256


class ConnectionHost(Protocol):
    """What a connection needs from the node or relay that runs it."""

    @property
    def node_key(self) -> NodeKey: ...

    def replica_for(self, conn: Connection) -> Replica:
        """The replica a connection's session works on (a relay tells it who uploads)."""
        ...

    def on_hello(self, conn: Connection, hello: Hello) -> list[Message] | None:
        """The peer's Hello, before the session sees it: messages to send first, or None
        (with ``conn.close_reason`` set) to close the connection, e.g. a relay that
        requires an access token."""
        ...

    def register(self, conn: Connection) -> bool:
        """Admit an authenticated connection; False to close it (duplicate, self, full),
        with ``conn.close_reason`` set."""
        ...

    def unregister(self, conn: Connection) -> None: ...

    def after_receive(self, conn: Connection) -> None:
        """The replica may have gained envelopes from ``conn``: tell the others."""
        ...

    def on_sync_event(self, conn: Connection, event: SyncEvent) -> None: ...


class DeferredWork(Protocol):
    """Work a host puts off while envelopes stream in (a node applies big batches to
    Automerge in one go), done in bounded steps once a link falls quiet."""

    def has_deferred(self) -> bool: ...

    def flush_deferred(self) -> bool:
        """Do a bounded part of the work; True while more remains."""
        ...


@final
@dataclass(frozen=True, slots=True)
class ConnectionOptions:
    """How a host's connections are driven."""

    #: bytes/s a peer may send (a relay's per-client upload limit), or None
    rate_limit: int | None = None
    #: the host's deferred work, done when a link falls quiet
    deferred: DeferredWork | None = None
    #: envelopes per ``replica.receive`` call; None: a batch in one call (a relay: its
    #: quotas refuse a batch whole, and it only verifies and stores)
    receive_slice: int | None = RECEIVE_SLICE
    #: call ``replica.receive`` in a worker thread (a replica whose store blocks on the
    #: network, such as a relay cluster's PostgreSQL); it must then be thread-safe
    receive_in_thread: bool = False


class DialHost(ConnectionHost, Protocol):
    """What a :class:`Dialer` needs of the node it dials for."""

    def is_connected(self, node_id: bytes) -> bool: ...

    async def wait_disconnected(self, node_id: bytes) -> None: ...


class DialTargets(Protocol):
    """Where dial targets go (mDNS adds and removes what it finds)."""

    def add(self, target: DialTarget) -> None: ...

    def remove(self, host: str, port: int) -> None: ...
