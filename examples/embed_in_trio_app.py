"""Embedding a p2paid node in an existing trio application.

Run:  python examples/embed_in_trio_app.py [--listen HOST:PORT] [--mdns]

The application already has a nursery and tasks of its own (here: a fake
"dispatch desk" that prints a summary every few seconds). The node is one more
resource it opens with ``async with``: it runs its own tasks in its own nursery,
and leaving the block shuts it down cleanly (connections closed, store closed).
The app's shutdown is the usual trio one: cancel the nursery. Here the app stops
itself after a few seconds, and Ctrl-C (or SIGTERM) stops it the same way, cleanly,
with exit status 0. An error of the node (a port in use, say) comes out of
``open_node`` as itself, not in an ``ExceptionGroup``: one line, exit status 1.

Patterns shown:
  * ``open_node`` as an async context manager next to the app's own work;
  * reading the board from app code (``items()`` is synchronous and cheap);
  * posting from app code (``await board.post_need``, durable on return);
  * a task that reacts to board events;
  * a signal handler task that cancels the app's nursery.

Skipped on purpose: configuration files, a real UI, multiple boards, mDNS by
default (``--mdns`` turns it on).
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
from collections.abc import AsyncIterator

import trio

import p2paid
from p2paid.net.tcp import parse_address


async def dispatch_desk(board: p2paid.AsyncBoard) -> None:
    """The app's own task: a periodic summary of what is still needed."""
    while True:
        needs = board.items(kind="need", status="open")
        print(f"[desk] {len(needs)} open need(s): "
              + ", ".join(f"{n.title} ({n.claimed_quantity}/{n.quantity or '?'})" for n in needs))
        await trio.sleep(2)


async def log_events(board: p2paid.AsyncBoard) -> None:
    async for event in board.events():
        print(f"[board] {event}")


async def stop_on_signal(signals: AsyncIterator[int], scope: trio.CancelScope) -> None:
    """Cancel the app at the first Ctrl-C or SIGTERM."""
    async for _ in signals:
        print("[app] stopping")
        scope.cancel()
        return


async def main(listen: tuple[str, int], mdns: bool) -> None:
    with tempfile.TemporaryDirectory() as data_dir, \
            trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        # The application's own nursery, and the node inside it (nested on purpose).
        async with trio.open_nursery() as app:
            app.start_soon(stop_on_signal, signals, app.cancel_scope)
            async with p2paid.open_node(data_dir, listen=listen, mdns=mdns) as node:
                board = await node.create_board("Shelter north", display_name="Desk")
                app.start_soon(dispatch_desk, board)
                app.start_soon(log_events, board)
                await trio.sleep(0.1)
                await board.post_need("Blankets", category="shelter", quantity=30, unit="pcs")
                await board.post_need("Baby formula", category="food", quantity=12,
                                      urgency="critical")
                await trio.sleep(5)  # the app keeps running; peers may connect meanwhile
                app.cancel_scope.cancel()  # the app decides to stop
        print("node closed; the store holds everything that was confirmed")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT",
                        help="where the node accepts peers (default 127.0.0.1:0, port 0 = "
                             "any free port)")
    parser.add_argument("--mdns", action=argparse.BooleanOptionalAction, default=False,
                        help="local-network discovery by mDNS (default: off)")
    args = parser.parse_args()
    try:
        trio.run(main, parse_address(args.listen), args.mdns)
    except p2paid.P2paidError as exc:
        sys.exit(f"embed_in_trio_app: {exc}")  # one line, exit status 1
    except KeyboardInterrupt:  # Ctrl-C before trio was running
        sys.exit(130)
