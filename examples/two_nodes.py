"""Two nodes syncing a board in one script, over TCP on 127.0.0.1.

Run:  python examples/two_nodes.py [--listen HOST:PORT] [--mdns]

Amina's node creates a board and posts a need; Bo's node joins with the invite,
connects to Amina's, sees the need, and claims part of it; Amina's node sees the
claim arrive as an event. Each node has its own data dir (here: temporary).

Skipped on purpose: mDNS by default (both nodes are told the other's address;
``--mdns`` turns it on), relays, persistence across runs, error handling beyond the
defaults.
"""

from __future__ import annotations

import argparse
import tempfile

import trio

import p2paid
from p2paid.net.tcp import parse_address


async def main(listen: tuple[str, int], mdns: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with p2paid.open_node(f"{tmp}/amina", listen=listen, mdns=mdns) as amina:
            board = await amina.create_board("Riverside mutual aid", display_name="Amina")
            need = await board.post_need("Drinking water", category="water", quantity=40,
                                         unit="litres", location="north camp", urgency="high")
            print(f"Amina posted: {need.title} ({need.quantity} {need.unit})")

            async with p2paid.open_node(f"{tmp}/bo", listen=None, mdns=mdns,
                                        peers=[amina.listen_address]) as bo:
                bo_board = await bo.join(board.invite(), display_name="Bo")
                with trio.fail_after(10):
                    while not bo_board.items():
                        await bo.wait_changed()
                print("Bo sees:", [item.title for item in bo_board.items()])

                async with trio.open_nursery() as nursery:
                    async def watch() -> None:
                        async for event in board.events():
                            print("Amina's node:", event)
                            nursery.cancel_scope.cancel()

                    nursery.start_soon(watch)
                    await trio.sleep(0.1)  # let the watcher subscribe
                    await bo_board.claim(need.id, quantity=10, note="from the well")

                item = board.get(need.id)
                print(f"{item.title}: {item.claimed_quantity} of {item.quantity} claimed")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT",
                        help="where Amina's node accepts peers (default 127.0.0.1:0, "
                             "port 0 = any free port)")
    parser.add_argument("--mdns", action=argparse.BooleanOptionalAction, default=False,
                        help="local-network discovery by mDNS (default: off)")
    args = parser.parse_args()
    trio.run(main, parse_address(args.listen), args.mdns)
