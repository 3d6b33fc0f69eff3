"""Benchmark child: a node that serves one board until its stdin closes.

``python -m p2paid.bench.sync_node DATA_DIR PEER_PORT|- idle|live``. It prints its port
and memory, then takes commands on stdin: ``post`` (``n`` needs, ``gap`` seconds apart
or ``concurrency`` at once; prints when each was posted), ``post_ids`` (``n`` needs
``gap`` seconds apart; prints each one's item id and wall-clock time as it returned)
and ``rss`` (after ``idle`` seconds). With ``live`` it prints every remote item event
with its arrival time. At the end it prints its replica's stats.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import trio

from p2paid.bench.child import rss_mib, say
from p2paid.node.asyncboard import AsyncBoard
from p2paid.node.node import open_node

__all__ = ["main"]


async def _serve(data_dir: str, peer: str, live: bool) -> None:
    peers = [("127.0.0.1", int(peer))] if peer != "-" else []
    async with open_node(data_dir, listen=("127.0.0.1", 0), mdns=False, peers=peers) as node:
        board = node.boards()[0]
        assert node.listen_address is not None
        say({"port": node.listen_address[1], "rss_mib": rss_mib()})
        async with trio.open_nursery() as nursery:
            if live:
                nursery.start_soon(_print_events, board)
            nursery.start_soon(_commands, board, nursery.cancel_scope)
        say({"stats": node.replica.stats, "peers": len(node.peers())})


async def _print_events(board: AsyncBoard) -> None:
    async for event in board.events():
        if event.item is not None and not event.local:
            say({"event": event.item.title, "t": time.perf_counter()})


async def _commands(board: AsyncBoard, done: trio.CancelScope) -> None:
    while True:
        line = await trio.to_thread.run_sync(sys.stdin.readline)
        if not line:
            done.cancel()
            return
        cmd = json.loads(line)
        if cmd["op"] == "post":
            say({"posted": await _post(board, cmd)})
        elif cmd["op"] == "post_ids":
            say({"posted_ids": await _post_ids(board, cmd)})
        elif cmd["op"] == "rss":
            await trio.sleep(cmd.get("idle", 0))
            say({"rss_mib": rss_mib()})


async def _post(board: AsyncBoard, cmd: dict[str, Any]) -> dict[str, float]:
    """Post ``cmd["n"]`` needs; when each was posted (perf_counter)."""
    stamps: dict[str, float] = {}

    async def one(i: int) -> None:
        title = f"live {cmd['tag']} {i}"
        stamps[title] = time.perf_counter()
        await board.post_need(title, category="water", quantity=5, unit="litres")

    if cmd["concurrency"] == 1:
        for i in range(cmd["n"]):
            await one(i)
            await trio.sleep(cmd["gap"])
        return stamps
    limit = trio.CapacityLimiter(cmd["concurrency"])

    async def limited(i: int) -> None:
        async with limit:
            await one(i)

    async with trio.open_nursery() as nursery:
        for i in range(cmd["n"]):
            nursery.start_soon(limited, i)
    return stamps


async def _post_ids(board: AsyncBoard, cmd: dict[str, Any]) -> list[tuple[str, float]]:
    """Post ``cmd["n"]`` needs ``gap`` seconds apart; each one's item id and when its
    post returned (``time.time()``, to compare with another process's clock)."""
    posted = []
    for i in range(cmd["n"]):
        item = await board.post_need(f"live {cmd['tag']} {i}", category="water", quantity=5,
                                     unit="litres")
        posted.append((item.id, time.time()))
        await trio.sleep(cmd["gap"])
    return posted


def main(argv: list[str]) -> None:
    data_dir, peer, mode = argv
    trio.run(_serve, data_dir, peer, mode == "live")


if __name__ == "__main__":
    main(sys.argv[1:])
