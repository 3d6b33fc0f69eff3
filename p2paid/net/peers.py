"""Dialling peers: one task per target, reconnecting with backoff and jitter.

A target is an address from the configuration, from mDNS, or a relay. Once a
target has been reached, its node id is known, and it is not dialled while a
connection to that node exists in either direction.

Nothing that goes wrong with one target stops the node: an address the resolver
cannot encode, an unreachable host, or an unexpected error in a connection is
logged (once per kind of failure, not on every retry) and retried with backoff.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, final

import trio

from p2paid.net.connection import RESYNC_REASON, Connection, run_connection
from p2paid.net.tcp import DIAL_TIMEOUT, dial, format_address

if TYPE_CHECKING:
    from p2paid.node.node import Node

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
    source: str  #: "configured", "mdns", "relay"
    node_id: bytes | None = None  #: expected (pinned) or learned node id
    pinned: bool = False  #: refuse any other node id (relays)
    to_relay: bool = False
    #: boards to offer (relays); None offers every joined board
    boards: frozenset[bytes] | None = None
    #: every address to try, best first (mDNS announces several); default: host
    addresses: tuple[str, ...] = ()
    #: relay access token sent in our Hello (relays only)
    token: bytes | None = field(default=None, repr=False)
    #: the last failure logged, so that a target failing the same way stays quiet
    last_failure: str | None = None
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)


@final
class Dialer:
    """Keeps one reconnecting task per target."""

    def __init__(self, node: Node, nursery: trio.Nursery) -> None:
        self._node = node
        self._nursery = nursery
        self.targets: dict[tuple[str, int], DialTarget] = {}

    def add(self, target: DialTarget) -> None:
        key = (target.host, target.port)
        if key in self.targets:
            return
        self.targets[key] = target
        self._nursery.start_soon(self._run, target)

    def get(self, host: str, port: int) -> DialTarget | None:
        return self.targets.get((host, port))

    def remove(self, host: str, port: int) -> None:
        target = self.targets.pop((host, port), None)
        if target is not None:
            target.cancel_scope.cancel()

    async def _run(self, target: DialTarget) -> None:
        with target.cancel_scope:
            backoff = BACKOFF_START
            while True:
                if target.node_id is not None and self._node.is_connected(target.node_id):
                    await self._node.wait_disconnected(target.node_id)
                started = time.monotonic()
                try:
                    conn = await self._attempt(target)
                except Exception as exc:  # a bug or a surprise: never let it stop the node
                    _failed(target, f"{type(exc).__name__}: {exc}", exc)
                    conn = None
                if conn is not None and conn.session is not None:
                    # It was up: a deliberate close (new boards to announce) redials at
                    # once; any other end starts the backoff afresh.
                    if _is_resync(conn.close_reason):
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
                _failed(target, f"cannot reach {address}: {exc}")
                continue
            conn = await self._connect(target, stream, address)
            if conn is not None and conn.session is not None and conn.session.greeted:
                target.last_failure = None
            elif conn is not None and conn.close_reason and target.to_relay:
                _failed(target, f"relay {address} closed the connection: "
                                f"{conn.close_reason}")
            return conn
        return None

    async def _connect(self, target: DialTarget, stream: trio.SocketStream,
                       address: str) -> Connection | None:
        conn = await run_connection(
            self._node, stream, address=address, initiator=True,
            expected_remote=target.node_id if target.pinned else None,
            to_relay=target.to_relay,
            boards=None if target.boards is None else sorted(target.boards),
            token=target.token,
        )
        if conn is not None and conn.remote_id and not target.pinned:
            target.node_id = conn.remote_id
        return conn


def _failed(target: DialTarget, what: str, exc: BaseException | None = None) -> None:
    """Log a failure of ``target`` once: the same failure again is only debug output."""
    if what == target.last_failure:
        log.debug("%s (again)", what)
        return
    target.last_failure = what
    if exc is not None:
        log.error("dialling %s failed unexpectedly; retrying with backoff: %s",
                  target.address, what, exc_info=exc)
    elif target.source == "mdns":
        log.debug("%s", what)
    else:
        log.warning("%s; retrying with backoff", what)


def _is_resync(reason: str | None) -> bool:
    return reason is not None and reason.endswith(RESYNC_REASON)
