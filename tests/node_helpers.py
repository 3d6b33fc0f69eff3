"""Helpers for the multi-node and hostile-peer tests: run nodes, compare boards, and
drive a peer by hand over a real TCP stream.

Every address is 127.0.0.1 and every listener is on port 0. Long-running helpers
start through ``nursery.start`` so a test only proceeds once a node is listening.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from peer_helpers import PeerClosed, StreamPeer

from p2paid.board.board import Board
from p2paid.board.store import open_store
from p2paid.core.envelope import Envelope
from p2paid.core.identity import NodeKey
from p2paid.core.replication import Replica
from p2paid.core.wire import Message
from p2paid.node.asyncboard import AsyncBoard
from p2paid.node.node import Node, open_node

__all__ = [
    "LOCALHOST",
    "HandPeer",
    "PeerClosed",
    "RunningNode",
    "board_state",
    "make_member",
    "rss_bytes",
    "start_node",
    "stored_envelopes",
    "titles",
    "wait_raw_closed",
    "wait_until",
]

LOCALHOST = "127.0.0.1"
#: A fixed "now" so that item JSON (which includes "expired") compares across nodes.
FIXED_NOW = 2_000_000_000_000


@dataclass
class RunningNode:
    """A node running in a test's nursery until :meth:`stop`."""

    node: Node
    data_dir: Path
    _scope: trio.CancelScope
    _done: trio.Event

    @property
    def address(self) -> tuple[str, int]:
        assert self.node.listen_address is not None
        return self.node.listen_address

    async def stop(self) -> None:
        """Leave the node's ``async with`` (closes its connections and its store)."""
        self._scope.cancel()
        await self._done.wait()


async def _run_node(
    data_dir: Path,
    kwargs: dict[str, Any],
    task_status: trio.TaskStatus[RunningNode] = trio.TASK_STATUS_IGNORED,
) -> None:
    done = trio.Event()
    try:
        with trio.CancelScope() as scope:
            async with open_node(data_dir, **kwargs) as node:
                task_status.started(RunningNode(node, data_dir, scope, done))
                await trio.sleep_forever()
    finally:
        done.set()


async def start_node(
    nursery: trio.Nursery,
    data_dir: Path,
    *,
    peers: Iterable[tuple[str, int]] = (),
    listen: bool = True,
    **kwargs: Any,
) -> RunningNode:
    """Start a node on 127.0.0.1, port 0, mDNS off; returns once it is listening."""
    options: dict[str, Any] = {
        "listen": (LOCALHOST, 0) if listen else None,
        "mdns": False,
        "peers": list(peers),
        **kwargs,
    }
    running: RunningNode = await nursery.start(_run_node, data_dir, options)
    return running


async def wait_until(predicate: Callable[[], bool], interval: float = 0.01) -> None:
    """Poll ``predicate`` until it holds (callers wrap this in ``fail_after``)."""
    while not predicate():
        await trio.sleep(interval)


def board_state(board: Board | AsyncBoard) -> tuple[str, dict[str, int]]:
    """(items as canonical JSON, version vector as hex) of one replica of a board."""
    inner = board.board if isinstance(board, AsyncBoard) else board
    items = json.dumps([i.to_json(FIXED_NOW) for i in inner.items()], sort_keys=True)
    vector = {a.hex(): s for a, s in inner.version_vector().items()}
    return items, vector


def make_member(data_dir: Path, invite: str | None, name: str, board: str = "Aid") -> str:
    """Prepare a data dir offline: create ``board`` (invite None) or join it; returns
    the invite. Done before the node starts, so no reconnect is needed."""
    with open_store(data_dir) as store:
        if invite is None:
            return store.create_board(board, display_name=name).invite()
        store.join(invite, display_name=name)
        return invite


def titles(board: Board | AsyncBoard) -> set[str]:
    return {i.title for i in board.items()}


def stored_envelopes(data_dir: Path, board_id: bytes) -> dict[tuple[bytes, int], bytes]:
    """``(author, seq) -> raw envelope`` as a freshly opened store sees them."""
    with open_store(data_dir, create=False) as store:
        out = {}
        for raw in store._db.envelopes(board_id):
            env = Envelope.decode(raw)
            out[(env.author, env.seq)] = raw
        return out


def rss_bytes() -> int:
    """Resident set size of this process (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")  # pragma: no cover


# ---------------------------------------------------------------------- a peer by hand


class HandPeer(StreamPeer):
    """One connection to a node, driven by the test: the attacker's (or a scripted
    honest peer's) side, using the library's own connection
    (:class:`~peer_helpers.StreamPeer`)."""

    @classmethod
    async def connect(
        cls,
        address: tuple[str, int],
        key: NodeKey | None = None,
        *,
        replica: Replica | None = None,
        with_last_message: Callable[[HandPeer], list[Message]] | None = None,
    ) -> HandPeer:
        """Dial and complete the Noise handshake as initiator.

        Args:
            replica: start a sync session over it at once (its Hello in the same write,
                one TCP segment, as the third handshake message).
            with_last_message: messages to send in that same write; called once the
                handshake hash is known.
        """
        return await cls.open(address, key, replica=replica,
                              with_last_message=with_last_message)


async def wait_raw_closed(stream: trio.SocketStream) -> bytes:
    """Read until the node closes a raw TCP stream; returns everything it sent."""
    got = bytearray()
    while True:
        try:
            data = await stream.receive_some(65536)
        except trio.BrokenResourceError:
            return bytes(got)
        if not data:
            return bytes(got)
        got += data
