"""A bot that watches a board and matches new offers to open needs.

Run:  python examples/matchmaker_bot.py DATA_DIR [--peer HOST:PORT ...]
          [--listen HOST:PORT] [--no-mdns]

The bot is an ordinary node: it syncs like any other, on the LAN by mDNS or with
the peers given (``--no-mdns`` keeps it out of the local network's discovery).
Whenever an offer is posted or changed, it lists the open needs
of the same category that are not yet fully claimed, most urgent first; whenever
a need is posted, it lists the open offers that could meet it. It only prints: a
human decides and claims. Use a data dir that has joined the board
(``p2paid --data-dir DIR board join INVITE``), and no other node runs on.

Ctrl-C (or SIGTERM) stops it cleanly, with exit status 0. A mistake (a data dir
with no board, one a node already runs on, a port in use) is one line on stderr
and exit status 1: ``open_node`` raises a single error as itself, so an ordinary
``except p2paid.P2paidError`` catches it.

Skipped on purpose: fuzzy matching of titles or places, notifications beyond
stdout, acting on matches.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import AsyncIterator

import trio

import p2paid
from p2paid.board.model import member_label
from p2paid.net.tcp import parse_address

URGENCY_ORDER = {"critical": 0, "high": 1, "normal": 2, "low": 3}


def open_needs(board: p2paid.AsyncBoard, category: str) -> list[p2paid.Item]:
    needs = board.items(kind="need", status="open", category=category)
    unmet = [n for n in needs if n.quantity is None or n.claimed_quantity < n.quantity]
    return sorted(unmet, key=lambda n: (URGENCY_ORDER[n.urgency.value], n.created))


def describe(item: p2paid.Item) -> str:
    amount = f" {item.quantity} {item.unit}".rstrip() if item.quantity else ""
    place = f" @ {item.location}" if item.location else ""
    # Names are not verified: the label carries the author's key fingerprint.
    who = member_label(item.author, item.author_name, item.name_shared)
    return f"{item.id[:8]} {item.title}{amount}{place} ({who})"


async def watch(board: p2paid.AsyncBoard) -> None:
    async for event in board.events():
        item = event.item
        if item is None or event.kind not in (p2paid.EventKind.ITEM_ADDED,
                                              p2paid.EventKind.ITEM_CHANGED):
            continue
        if item.status is not p2paid.Status.OPEN:
            continue
        if item.kind is p2paid.ItemKind.OFFER:
            matches = open_needs(board, item.category.value)
            if matches:
                print(f"[{board.name}] offer {describe(item)} could meet:")
                for need in matches[:5]:
                    print(f"    need  {describe(need)} [{need.urgency.value}]")
        else:
            offers = board.items(kind="offer", status="open", category=item.category.value)
            if offers:
                print(f"[{board.name}] need {describe(item)} [{item.urgency.value}] "
                      "could be met by:")
                for offer in offers[:5]:
                    print(f"    offer {describe(offer)}")


async def stop_on_signal(signals: AsyncIterator[int], scope: trio.CancelScope) -> None:
    """Cancel ``scope`` at the first signal (Ctrl-C, SIGTERM): a clean stop."""
    async for _ in signals:
        scope.cancel()
        return


async def main(data_dir: str, peers: list[tuple[str, int]], listen: tuple[str, int],
               mdns: bool) -> None:
    # Signals are received from the start, so Ctrl-C while the node starts is a clean
    # stop too (not a KeyboardInterrupt somewhere inside).
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with p2paid.open_node(data_dir, listen=listen, peers=peers, mdns=mdns) as node:
            boards = node.boards()
            if not boards:
                raise p2paid.UsageError(f"{data_dir} has joined no board: run 'p2paid "
                                        f"--data-dir {data_dir} board join INVITE' first")
            print(f"matchmaker watching {', '.join(b.name for b in boards)}; Ctrl-C to stop")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stop_on_signal, signals, nursery.cancel_scope)
                for board in boards:
                    nursery.start_soon(watch, board)
    print("matchmaker stopped", file=sys.stderr)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", help="a data dir that has joined the board(s) to watch")
    parser.add_argument("--peer", action="append", default=[], metavar="HOST:PORT",
                        help="keep a connection to this peer (repeatable; port defaults "
                             "to 7446)")
    parser.add_argument("--listen", default="0.0.0.0:0", metavar="HOST:PORT",
                        help="where the bot accepts peers (default 0.0.0.0:0, port 0 = "
                             "any free port)")
    parser.add_argument("--mdns", action=argparse.BooleanOptionalAction, default=True,
                        help="find peers on the local network by mDNS (default: on)")
    args = parser.parse_args()
    try:
        trio.run(main, args.data_dir, [parse_address(p, 7446) for p in args.peer],
                 parse_address(args.listen), args.mdns)
    except p2paid.P2paidError as exc:
        sys.exit(f"matchmaker: {exc}")  # one line, exit status 1
    except KeyboardInterrupt:  # Ctrl-C before trio was running
        sys.exit(130)
