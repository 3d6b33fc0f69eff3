"""Benchmark child: light relay clients that record when each envelope arrives.

``python -m p2paid.bench.relay_readers RELAY_ADDRESS BOARD_HEX COUNT``. ``COUNT`` clients
connect to the relay for one board, each through the library's own connection driver
(:func:`~p2paid.net.connection.run_connection`) over a replica that keeps only seqs and
arrival times, from 127.0.N.1 (then 127.1.N.1, ...) addresses, four per address (a relay
caps connections and handshakes per address). Once all are connected it prints ``ready``;
the next line on stdin prints every reader's arrivals, the one after that ends it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from typing import final

import trio

from p2paid.bench.child import say
from p2paid.core.codes import Role
from p2paid.core.feed import FeedHead
from p2paid.core.identity import NodeKey
from p2paid.core.relayaddr import RelayAddress
from p2paid.core.replication import BoardAccess, Received, Replica, SyncEvent
from p2paid.core.wire import Hello, Message
from p2paid.net.connection import Connection, run_connection

__all__ = ["main"]


@final
class _Reader:
    """A replica that holds nothing but which seqs arrived, and when."""

    role = Role.NODE

    def __init__(self, board: bytes) -> None:
        self.board = board
        self.feed: dict[bytes, set[int]] = {}
        self.arrivals: dict[int, float] = {}

    def boards(self) -> Sequence[BoardAccess]:
        return [BoardAccess(self.board, None)]

    def accepts(self, board_id: bytes) -> tuple[str, str] | None:
        return None

    def vector(self, board_id: bytes) -> Mapping[bytes, int]:
        return {a: max(s) for a, s in self.feed.items()}

    def heads(self, board_id: bytes) -> Mapping[bytes, FeedHead]:
        # (a reader keeps no hashes: its vector never proves a fork)
        return {a: FeedHead(max(s), bytes(32)) for a, s in self.feed.items()}

    def hash_at(self, board_id: bytes, author: bytes, seq: int) -> bytes | None:
        return None

    def forked(self, board_id: bytes) -> Mapping[bytes, int]:
        return {}

    def fork_evidence(self, board_id: bytes, author: bytes) -> tuple[bytes, bytes] | None:
        return None

    def record_fork(self, board_id: bytes, first: bytes, second: bytes) -> bool:
        return False

    def read(self, board_id: bytes, author: bytes, after: int, max_bytes: int) -> list[bytes]:
        return []

    def receive(self, board_id: bytes, envelopes: Sequence[bytes]) -> Received:
        now = time.perf_counter()
        for raw in envelopes:
            author, seq = raw[33:65], int.from_bytes(raw[65:73], "big")
            self.feed.setdefault(author, set()).add(seq)
            self.arrivals[seq] = now
        return Received(len(envelopes))


@final
class _ReaderHost:
    """The :class:`~p2paid.net.connection.ConnectionHost` of one reader: no policy."""

    def __init__(self, reader: _Reader) -> None:
        self.node_key = NodeKey.generate()
        self.reader = reader

    def replica_for(self, conn: Connection) -> Replica:
        return self.reader

    def on_hello(self, conn: Connection, hello: Hello) -> list[Message] | None:
        return []

    def register(self, conn: Connection) -> bool:
        return True

    def unregister(self, conn: Connection) -> None:
        pass

    def after_receive(self, conn: Connection) -> None:
        pass

    def on_sync_event(self, conn: Connection, event: SyncEvent) -> None:
        pass


async def _client(address: RelayAddress, reader: _Reader, ready: list[int], local: str) -> None:
    stream = await trio.open_tcp_stream(address.host, address.port, local_address=local)

    async def connected(_: Connection) -> None:
        ready.append(1)

    await run_connection(_ReaderHost(reader), stream, address=str(address), initiator=True,
                         expected_remote=address.key, to_relay=True, on_connected=connected)


async def _run(address_text: str, board_hex: str, count: str) -> None:
    address = RelayAddress.parse(address_text)
    readers = [_Reader(bytes.fromhex(board_hex)) for _ in range(int(count))]
    ready: list[int] = []
    async with trio.open_nursery() as nursery:
        for i, reader in enumerate(readers):
            n = 10 + i // 4  # beyond 245 addresses (980 readers): 127.1.x.1, ...
            nursery.start_soon(_client, address, reader, ready, f"127.{n // 256}.{n % 256}.1")
        while len(ready) < len(readers):
            await trio.sleep(0.05)
        say({"ready": len(ready)})
        await trio.to_thread.run_sync(sys.stdin.readline)
        say({"arrivals": [r.arrivals for r in readers]})
        await trio.to_thread.run_sync(sys.stdin.readline)
        nursery.cancel_scope.cancel()


def main(argv: list[str]) -> None:
    address, board_hex, count = argv
    trio.run(_run, address, board_hex, count)


if __name__ == "__main__":
    main(sys.argv[1:])
