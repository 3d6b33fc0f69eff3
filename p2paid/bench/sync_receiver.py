"""Benchmark child: the receiving side of an initial sync, timed from dialling.

``python -m p2paid.bench.sync_receiver DATA_DIR PORT TOTAL AUTHOR_HEX ITEM_ID stall|-``.
It waits for a line on stdin, dials the node at ``PORT``, waits until ``TOTAL`` changes
are applied and reads one item back, then prints the times and its replica's stats.
With ``stall``, a trio task sleeps 1 ms in a loop meanwhile, and the longest gaps
between its wake-ups are printed: how long the event loop could not run (the
receiver's ``receive`` and ``flush`` calls are timed too, to say what stalled it).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import trio

from p2paid.bench.child import say
from p2paid.board.readmodel import section_object_id
from p2paid.node.node import open_node

__all__ = ["main"]

_P = ParamSpec("_P")
_R = TypeVar("_R")
TICK = 0.001


def _timed(calls: list[float], fn: Callable[_P, _R]) -> Callable[_P, _R]:
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            calls.append(time.perf_counter() - t)
    return wrapper


class _LongestSteps(trio.abc.Instrument):
    """The longest run of each task between two of its checkpoints."""

    def __init__(self) -> None:
        self.longest: dict[str, float] = {}
        self._started: trio.lowlevel.Task | None = None
        self._at = 0.0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._started, self._at = task, time.perf_counter()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is not self._started:
            return  # (its step began before the instrument was added)
        took = time.perf_counter() - self._at
        name = task.name.rsplit(".", 1)[-1]
        if took > self.longest.get(name, 0.0):
            self.longest[name] = took

    def top(self, n: int) -> list[tuple[str, float]]:
        return sorted(self.longest.items(), key=lambda kv: -kv[1])[:n]


async def _ticker(gaps: list[float]) -> None:
    """How much later than asked each 1 ms sleep ended."""
    last = time.perf_counter()
    while True:
        await trio.sleep(TICK)
        now = time.perf_counter()
        gaps.append(now - last - TICK)
        last = now


async def _receive(data_dir: str, port: str, total: str, author_hex: str, item_id: str,
                   stall: str) -> None:
    async with open_node(data_dir, listen=None, mdns=False) as node, \
            trio.open_nursery() as nursery:
        board = node.boards()[0]
        board.board.load()
        gaps: list[float] = []
        receives: list[float] = []
        flushes: list[float] = []
        replica: Any = node.replica  # (instrumented: its methods are wrapped)
        replica.receive = _timed(receives, node.replica.receive)
        replica.flush = _timed(flushes, node.replica.flush)
        sys.stdin.readline()
        t0 = time.perf_counter()
        steps = _LongestSteps()
        if stall == "stall":
            nursery.start_soon(_ticker, gaps)
            trio.lowlevel.add_instrument(steps)
        node.connect("127.0.0.1", int(port))
        first = None
        while board.board.applied_count < int(total):
            await node.wait_changed()
            if first is None and node.replica.stats["received"]:
                first = time.perf_counter() - t0
        applied = time.perf_counter() - t0
        if stall == "stall":
            trio.lowlevel.remove_instrument(steps)
        nursery.cancel_scope.cancel()
        doc = board.board.load()
        am = doc.automerge
        author = bytes.fromhex(author_hex)
        section = section_object_id(author, doc.start_ops[author])
        needs = am.get(section, "needs")[1]  # type: ignore[index]  # (a tuple, untyped)
        title = am.get(am.get(needs, item_id)[1], "title")[0][1]  # type: ignore[index]
        readable = time.perf_counter() - t0
        say({"applied_s": applied, "readable_s": readable, "first_s": first, "title": title,
             "stats": node.replica.stats, "bytes_in": sum(p.bytes_in for p in node.peers()),
             "stall_s": max(gaps, default=0.0), "stalls_s": sorted(gaps)[-5:],
             "receive_calls_s": receives, "flush_calls_s": flushes,
             "longest_steps_s": steps.top(3)})


def main(argv: list[str]) -> None:
    data_dir, port, total, author_hex, item_id, stall = argv
    trio.run(_receive, data_dir, port, total, author_hex, item_id, stall)


if __name__ == "__main__":
    main(sys.argv[1:])
