"""A hostile member against running nodes, over real TCP on 127.0.0.1 (issue 7).

The attacker is a member (it holds the invite and signs with its own author key)
that connects by hand and sends hand-built envelopes (``amcraft``). The nodes must
keep running, keep their honest link up and in sync, and converge.
"""

from __future__ import annotations

import os
from pathlib import Path

import trio
from amcraft import COUNTER, SET, CraftedFeed, CraftedOp, int_value, sleb
from node_helpers import HandPeer, board_state, make_member, start_node, titles, wait_until

import p2paid
from p2paid.core.identity import AuthorKey
from p2paid.core.wire import Envelopes
from p2paid.node.replica import StoreReplica

NOW = 1_900_000_000_000


async def test_a_running_node_keeps_serving_while_a_member_attacks(tmp_path: Path) -> None:
    """B connects as a member and sends, one batch each: a Counter value, an unknown
    value type, a start op of 2^32 - 2, a dependency on another member's change, and
    two versions of one seq. The victim node stays up; after each batch the honest
    peer's link (the same connection) still syncs both ways; the attacker's feed ends
    where every replica ends it, and the two honest nodes converge."""
    invite = make_member(tmp_path / "victim", None, "victim")
    make_member(tmp_path / "honest", invite, "honest")
    with p2paid.open_store(tmp_path / "attacker") as store:
        board = store.join(invite)
        feed = CraftedFeed(board.id, board.keys.content_key,
                           AuthorKey(board._author_key.private_bytes()))
    first = feed.seal(feed.chunk(feed.first()))
    attacks = {
        "counter": feed.chunk([CraftedOp(SET, (0, 1), "x", (COUNTER, sleb(5)))]),
        "type-10": feed.chunk([CraftedOp(SET, (0, 1), "x", (10, b"ab"))]),
        "start op": feed.chunk([CraftedOp(SET, (0, 1), "x", int_value(1))],
                               start_op=2**32 - 2),
        "cross dependency": feed.chunk([CraftedOp(SET, (0, 1), "x", int_value(1))],
                                       deps=[os.urandom(32)]),
    }
    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            victim = await start_node(nursery, tmp_path / "victim")
            honest = await start_node(nursery, tmp_path / "honest", peers=[victim.address])
            await honest.node.wait_for_peers(1)
            since = honest.node.peers()[0].connected_since
            peer = await HandPeer.connect(victim.address)
            with p2paid.open_store(tmp_path / "attacker") as store:
                await peer.start_session(StoreReplica(store))
                session = peer.session
                assert session is not None
                await peer.run_session(lambda: session.is_in_sync(board.id))
            batch = 100
            await peer.send(Envelopes(0, batch, (first,)))
            vb, hb = victim.node.board(), honest.node.board()
            await wait_until(lambda: feed.actor in hb.board.version_vector())
            for name, chunk in attacks.items():
                batch += 1
                await peer.send(Envelopes(0, batch, (feed.seal(chunk, advance=False),)))
                need = await vb.post_need(f"victim post after {name}")
                await wait_until(lambda n=need: n.id in {i.id for i in hb.items()})  # type: ignore[misc]
                offer = await hb.post_offer(f"honest post after {name}")
                await wait_until(lambda o=offer: o.id in {i.id for i in vb.items()})  # type: ignore[misc]
                assert honest.node.peers()[0].connected_since == since
                assert vb.board.version_vector()[feed.actor] == 1
            # and a fork: version 1 of seq 2 spreads to the honest node, then version 2
            # reaches the victim, which proves the fork and tells the honest node
            v1 = feed.seal(feed.chunk(feed.need_ops("1" * 32, "one", now=NOW)), advance=False)
            v2 = feed.seal(feed.chunk(feed.need_ops("2" * 32, "two", now=NOW)), advance=False)
            await peer.send(Envelopes(0, batch + 1, (v1,)))
            await wait_until(lambda: "one" in titles(hb))
            await peer.send(Envelopes(0, batch + 2, (v2,)))
            await wait_until(lambda: feed.actor in hb.board.forked)
            assert vb.board.forked == hb.board.forked == {feed.actor: 2}
            await wait_until(lambda: board_state(vb) == board_state(hb))
            assert not {"one", "two"} & titles(vb)
            assert honest.node.peers()[0].connected_since == since
            await peer.aclose()
            nursery.cancel_scope.cancel()


async def test_two_nodes_holding_two_versions_of_a_feed_converge(tmp_path: Path) -> None:
    """Node A holds version 1 of B's seq 1-2, node C version 2 of the same length, so
    their version vectors are equal. When they connect, the head tags in their vectors
    differ; each resends B's feed, each proves the fork, and both end B's feed before
    seq 2 and converge, while their own posts flow both ways."""
    invite = make_member(tmp_path / "a", None, "Ana")
    make_member(tmp_path / "c", invite, "Cy")
    with p2paid.open_store(tmp_path / "b") as store:
        board = store.join(invite)
        key = AuthorKey(board._author_key.private_bytes())
        feed = CraftedFeed(board.id, board.keys.content_key, key)
    first = feed.seal(feed.chunk(feed.first()))
    v1 = feed.seal(feed.chunk(feed.need_ops("1" * 32, "version one", now=NOW)), advance=False)
    v2 = feed.seal(feed.chunk(feed.need_ops("2" * 32, "version two", now=NOW)), advance=False)
    for name, version in (("a", v1), ("c", v2)):
        with p2paid.open_store(tmp_path / name) as store:
            report = store.board().receive([first, version])
            assert report.accepted == 2, report.rejected
            store.board().post_need(f"posted by {name}")
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            a = await start_node(nursery, tmp_path / "a")
            c = await start_node(nursery, tmp_path / "c", peers=[a.address])
            ab, cb = a.node.board(), c.node.board()
            await wait_until(lambda: feed.actor in ab.board.forked and
                             feed.actor in cb.board.forked)
            await wait_until(lambda: board_state(ab) == board_state(cb))
            for b in (ab, cb):
                assert {"posted by a", "posted by c"} <= titles(b)
                assert not {"version one", "version two"} & titles(b)
                assert b.board.version_vector()[feed.actor] == 1
            need = await ab.post_need("after the fork")
            await wait_until(lambda: need.id in {i.id for i in cb.items()})
            nursery.cancel_scope.cancel()
