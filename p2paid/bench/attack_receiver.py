"""Benchmark child: an honest member catching up during an attack, timed from its start.

``python -m p2paid.bench.attack_receiver DATA_DIR PEER_PORT|relay TOTAL TIMEOUT``: a node
with an empty board dials the peer at ``PEER_PORT`` (or its relays), and prints how long
it took until ``TOTAL`` changes were applied (None if not within ``TIMEOUT`` seconds).
"""

from __future__ import annotations

import sys
import time

import trio

from p2paid.bench.child import say
from p2paid.node.node import open_node

__all__ = ["main"]


async def _receive(data_dir: str, peer: str, total: int, timeout: float) -> None:
    t0 = time.perf_counter()
    peers = [] if peer == "relay" else [("127.0.0.1", int(peer))]
    async with open_node(data_dir, listen=None, mdns=False, peers=peers) as node:
        board = node.boards()[0]
        with trio.move_on_after(timeout):
            while board.board.applied_count < total:
                await node.wait_changed()
        done = board.board.applied_count >= total
        say({"applied_s": time.perf_counter() - t0 if done else None,
             "applied": board.board.applied_count})


def main(argv: list[str]) -> None:
    data_dir, peer, total, timeout = argv
    trio.run(_receive, data_dir, peer, int(total), float(timeout))


if __name__ == "__main__":
    main(sys.argv[1:])
