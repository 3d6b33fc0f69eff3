"""Dialling peers: one task per target, reconnecting with backoff and jitter.

A target is an address from the configuration, from mDNS, or a relay. Once a
target has been reached, its node id is known, and it is not dialled while a
connection to that node exists in either direction. The :class:`Dialer` is a
service (``await nursery.start(dialer.serve)``) that starts each target's task with
``nursery.start``; its host is any :class:`~p2paid.net.interfaces.DialHost`, and mDNS
feeds it through the :class:`~p2paid.net.interfaces.DialTargets` it implements.

Nothing that goes wrong with one target stops the node: an address the resolver
cannot encode, an unreachable host, or an unexpected error in a connection is
logged (once per kind of failure in an outage, not on every retry, and once when
the target is reached again: :mod:`p2paid.net.reach`) and retried with backoff.
:meth:`Dialer.states` says which configured peers and relays are connected.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Final, final

import trio

from p2paid.core.codes import CloseReason, DialSource
from p2paid.net.connection import Connection, run_connection
from p2paid.net.interfaces import ConnectionOptions, DialHost
from p2paid.net.reach import Reachability, TargetState, dial_error_text
from p2paid.net.tcp import DIAL_TIMEOUT, dial, format_address

__all__ = ["DialTarget", "Dialer"]

log = logging.getLogger("p2paid.net")

BACKOFF_START: Final = 1.0
BACKOFF_MAX: Final = 60.0
#: A connection that lasted this long resets the backoff.
STABLE_AFTER: Final = 30.0
#: Per-address timeout when a target has several addresses to try.
ALTERNATIVE_TIMEOUT: Final = 3.0


@final
@dataclass(slots=True, eq=False)
class DialTarget:
    host: str
    port: int
    source: DialSource
    node_id: bytes | None = None  #: expected (pinned) or learned node id
    pinned: bool = False  #: refuse any other node id (relays)
    to_relay: bool = False
    #: boards to offer (relays); None offers every joined board
    boards: frozenset[bytes] | None = None
    #: every address to try, best first (mDNS announces several); default: host
    addresses: tuple[str, ...] = ()
    #: relay access token sent in our Hello (relays only)
    token: bytes | None = field(default=None, repr=False)
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    #: whether it can be reached; logs each kind of failure once per outage
    reach: Reachability = field(init=False)

    def __post_init__(self) -> None:
        self.source = DialSource(self.source)  # (the same member, if given its string)
        self.reach = Reachability(f"{self.kind} {self.address}",
                                  quiet=self.source is DialSource.MDNS)

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)

    @property
    def kind(self) -> str:
        """``relay`` or ``peer``."""
        return "relay" if self.to_relay else "peer"

    def state(self) -> TargetState:
        return self.reach.snapshot(self.kind, self.address)


@final
class Dialer:
    """Keeps one reconnecting task per target, once :meth:`serve` runs.

    Args:
        host: the node that dials.
        options: how its connections are driven.
    """

    def __init__(self, host: DialHost, options: ConnectionOptions | None = None) -> None:
        self._host = host
        self._options = options
        self.targets: dict[tuple[str, int], DialTarget] = {}
        self._live: dict[Connection, DialTarget] = {}  # our connections, and to what
        self._added, self._to_start = trio.open_memory_channel[DialTarget](math.inf)

    def add(self, target: DialTarget) -> None:
        """Dial ``target`` (again and again) until it is removed."""
        key = (target.host, target.port)
        if key in self.targets:
            return
        self.targets[key] = target
        self._added.send_nowait(target)

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Run every target's task (each started with ``nursery.start``) until cancelled."""
        async with trio.open_nursery() as nursery:
            task_status.started()
            async for target in self._to_start:
                await nursery.start(self._run, target)

    def greeted(self, conn: Connection) -> None:
        """The peer of ``conn`` answered with its Hello (the host calls this): if we
        dialled it, the target is reached."""
        target = self._live.get(conn)
        if target is not None:
            target.reach.reached()

    def states(self) -> list[TargetState]:
        """Each configured peer and relay (not those mDNS found): connected or not."""
        return [t.state() for t in self.targets.values() if t.source is not DialSource.MDNS]

    def get(self, host: str, port: int) -> DialTarget | None:
        return self.targets.get((host, port))

    def remove(self, host: str, port: int) -> None:
        target = self.targets.pop((host, port), None)
        if target is not None:
            target.cancel_scope.cancel()

    async def _run(self, target: DialTarget,
                   task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        with target.cancel_scope:  # (cancelled already if removed before it started)
            backoff = BACKOFF_START
            while True:
                if target.node_id is not None and self._host.is_connected(target.node_id):
                    target.reach.reached()  # (it dialled us)
                    await self._host.wait_disconnected(target.node_id)
                    target.reach.lost()
                started = time.monotonic()
                try:
                    conn = await self._attempt(target)
                except Exception as exc:  # a bug or a surprise: never let it stop the node
                    target.reach.failed(f"{type(exc).__name__}: {exc}", exc)
                    conn = None
                if conn is not None and conn.session is not None:
                    # It was up: a deliberate close (new boards to announce) redials at
                    # once; any other end starts the backoff afresh.
                    if _is_resync(conn):
                        continue
                    if time.monotonic() - started > STABLE_AFTER:
                        backoff = BACKOFF_START
                await trio.sleep(backoff * random.uniform(0.5, 1.5))
                backoff = min(backoff * 2, BACKOFF_MAX)

    async def _attempt(self, target: DialTarget) -> Connection | None:
        hosts = target.addresses or (target.host,)
        timeout = DIAL_TIMEOUT if len(hosts) == 1 else ALTERNATIVE_TIMEOUT
        for host in hosts:
            address = format_address(host, target.port)
            try:
                stream = await dial(host, target.port, timeout=timeout)
            except (OSError, UnicodeError, ValueError) as exc:  # trio's resolver: all three
                at = "" if address == target.address else f" at {address}"
                target.reach.failed(f"{dial_error_text(exc)}{at}")
                continue
            conn = await self._connect(target, stream, address)
            target.reach.lost()
            if conn is None:
                target.reach.failed("the handshake failed")
            elif conn.close_reason and target.to_relay and not (
                    conn.session is not None and conn.session.greeted):
                target.reach.failed(f"it closed the connection: {conn.close_reason}")
            return conn
        return None

    async def _connect(self, target: DialTarget, stream: trio.SocketStream,
                       address: str) -> Connection | None:
        live: list[Connection] = []

        async def on_connected(conn: Connection) -> None:
            live.append(conn)
            self._live[conn] = target

        try:
            conn = await run_connection(
                self._host, stream, address=address, initiator=True,
                expected_remote=target.node_id if target.pinned else None,
                to_relay=target.to_relay,
                boards=None if target.boards is None else sorted(target.boards),
                token=target.token, options=self._options, on_connected=on_connected,
            )
        finally:
            for done in live:
                self._live.pop(done, None)
        if conn is not None and conn.remote_id and not target.pinned:
            target.node_id = conn.remote_id
        return conn


def _is_resync(conn: Connection) -> bool:
    """Ended only to announce a changed set of boards (by us or by the peer)."""
    return (conn.close_reason == CloseReason.BOARDS_CHANGED
            or CloseReason.parse(conn.core.peer_close_reason) is CloseReason.BOARDS_CHANGED)
