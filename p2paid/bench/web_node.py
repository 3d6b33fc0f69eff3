"""Benchmark child: a node serving one board to phones until its stdin closes.

``python -m p2paid.bench.web_node DATA_DIR``. It serves its board to peers on
127.0.0.1 and the web interface (:func:`~p2paid.web.serve_web`, with room for a
bench's phones in its :class:`~p2paid.web.limits.WebLimits`), prints both ports,
then takes commands on stdin: ``stall`` (``on``: start a 1 ms trio ticker and
:class:`~p2paid.bench.sync_receiver._LongestSteps`; off: print the longest gaps
and steps since) and ``peers`` (print how many peers are connected). At the end it
prints its replica's stats.
"""

from __future__ import annotations

import json
import sys
from functools import partial

import trio

from p2paid.bench.child import rss_mib, say
from p2paid.bench.sync_receiver import _LongestSteps, _ticker
from p2paid.node.node import Node, open_node
from p2paid.web import serve_web
from p2paid.web.limits import WebLimits
from p2paid.web.webstore import WebStore

__all__ = ["LIMITS", "main"]

#: The defaults, but a bench's phones may pair at once from one address.
LIMITS = WebLimits(pairing_per_minute=60_000, pairing_burst=1000)


async def _serve(data_dir: str) -> None:
    async with open_node(data_dir, listen=("127.0.0.1", 0), mdns=False) as node, \
            trio.open_nursery() as nursery:
        with WebStore(data_dir) as web:
            host, port = await nursery.start(partial(serve_web, node, "127.0.0.1", 0, web=web,
                                                     limits=LIMITS))
            assert node.listen_address is not None
            say({"port": node.listen_address[1], "web": f"http://{host}:{port}",
                 "rss_mib": rss_mib()})
            await _commands(node)
            nursery.cancel_scope.cancel()
    say({"stats": node.replica.stats, "peers": len(node.peers())})


async def _commands(node: Node) -> None:
    steps = _LongestSteps()
    gaps: list[float] = []
    ticker: trio.CancelScope | None = None
    async with trio.open_nursery() as nursery:
        while True:
            line = await trio.to_thread.run_sync(sys.stdin.readline)
            if not line:
                break
            cmd = json.loads(line)
            if cmd["op"] == "peers":
                say({"peers": len(node.peers())})
            elif cmd["op"] == "stall" and cmd["on"]:
                gaps.clear()
                steps.longest.clear()
                ticker = trio.CancelScope()
                nursery.start_soon(_tick, ticker, gaps)
                trio.lowlevel.add_instrument(steps)
            elif cmd["op"] == "stall" and ticker is not None:
                ticker.cancel()
                trio.lowlevel.remove_instrument(steps)
                say({"stall_s": max(gaps, default=0.0), "stalls_s": sorted(gaps)[-5:],
                     "ticks": len(gaps), "longest_steps_s": steps.top(3)})
                ticker = None
        if ticker is not None:
            ticker.cancel()


async def _tick(scope: trio.CancelScope, gaps: list[float]) -> None:
    with scope:
        await _ticker(gaps)


def main(argv: list[str]) -> None:
    (data_dir,) = argv
    trio.run(_serve, data_dir)


if __name__ == "__main__":
    main(sys.argv[1:])
