"""Several live nodes in one process (and one in a subprocess) syncing over 127.0.0.1.

Each test starts its nodes with ``nursery.start`` on port 0 with mDNS off and
wraps everything in ``trio.fail_after``. Convergence means equal item JSON (read
at a fixed "now") and equal version vectors on every replica.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing
from node_helpers import (
    LOCALHOST,
    HandPeer,
    RunningNode,
    board_state,
    make_member,
    start_node,
    stored_envelopes,
    titles,
    wait_until,
)

import p2paid.core.connection
import p2paid.net.connection
import p2paid.net.peers
from p2paid.board.board import Board
from p2paid.board.model import BoardEvent, EventKind
from p2paid.board.store import open_store
from p2paid.core.replication import SyncSession
from p2paid.core.wire import Envelopes, Hello
from p2paid.node.asyncboard import AsyncBoard
from p2paid.node.replica import StoreReplica


def _has_title(board: AsyncBoard, title: str) -> bool:
    return title in titles(board)


def _ids(node: RunningNode) -> set[str]:
    return {p.node_id for p in node.node.peers()}


async def _converged(*boards: AsyncBoard | Board) -> None:
    """Wait until every board replica shows the same items and version vector."""
    def same() -> bool:
        states = [board_state(b) for b in boards]
        return all(s == states[0] for s in states)

    await wait_until(same, 0.02)


# ---------------------------------------------------------------------- topologies


async def test_line_topology_relays_through_the_middle_node(tmp_path: Path) -> None:
    """A - B - C: A's post reaches C and C's claim reaches A through B alone;
    A and C never connect to each other."""
    invite = make_member(tmp_path / "a", None, "alice")
    make_member(tmp_path / "b", invite, "bob")
    make_member(tmp_path / "c", invite, "carol")
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            a = await start_node(nursery, tmp_path / "a")
            b = await start_node(nursery, tmp_path / "b", peers=[a.address])
            c = await start_node(nursery, tmp_path / "c", peers=[b.address])
            await b.node.wait_for_peers(2)
            await a.node.wait_for_peers(1)
            await c.node.wait_for_peers(1)
            board_a, board_b, board_c = (n.node.board() for n in (a, b, c))

            need = await board_a.post_need("Drinking water", category="water", quantity=40,
                                           unit="litres")
            await wait_until(lambda: need.id in {i.id for i in board_c.items()})
            seen = board_c.get(need.id)
            assert seen.title == "Drinking water" and seen.author_name == "alice"

            await board_c.claim(need.id, quantity=10, note="from the river camp")
            await wait_until(lambda: bool(board_a.get(need.id).claims))
            (claim,) = board_a.get(need.id).claims
            assert (claim.author_name, claim.quantity) == ("carol", 10)
            assert board_a.get(need.id).claimed_quantity == 10

            await _converged(board_a, board_b, board_c)
            a_id, b_id, c_id = (n.node.node_id.hex() for n in (a, b, c))
            assert _ids(a) == {b_id}
            assert _ids(c) == {b_id}
            assert _ids(b) == {a_id, c_id}
            nursery.cancel_scope.cancel()


async def test_full_mesh_of_three_converges(tmp_path: Path) -> None:
    """Three nodes all connected: posts, claims, edits and a withdrawal from every
    node end with identical items and version vectors everywhere."""
    invite = make_member(tmp_path / "a", None, "alice")
    make_member(tmp_path / "b", invite, "bob")
    make_member(tmp_path / "c", invite, "carol")
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            a = await start_node(nursery, tmp_path / "a")
            b = await start_node(nursery, tmp_path / "b", peers=[a.address])
            c = await start_node(nursery, tmp_path / "c", peers=[a.address, b.address])
            for n in (a, b, c):
                await n.node.wait_for_peers(2)
            boards = [n.node.board() for n in (a, b, c)]

            posted = []
            for k, board in enumerate(boards):
                posted.append(await board.post_need(f"need {k}", quantity=k + 1))
                posted.append(await board.post_offer(f"offer {k}"))
            await _converged(*boards)
            assert len(boards[0].items()) == 6
            # Everyone claims the next member's need, concurrently.
            for k, board in enumerate(boards):
                await board.claim(posted[2 * ((k + 1) % 3)].id, quantity=1)
            await boards[0].edit(posted[0].id, title="need 0 (edited)")
            await boards[1].withdraw(posted[3].id)
            await _converged(*boards)

            items = {i.title: i for i in boards[2].items()}
            assert "need 0 (edited)" in items
            assert items["offer 1"].status.value == "withdrawn"
            assert all(len(items[f"need {k}"].claims) == 1 for k in (1, 2))
            assert len(items["need 0 (edited)"].claims) == 1
            vector = board_state(boards[0])[1]
            assert len(vector) == 3 and all(seq >= 3 for seq in vector.values())
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("how", ["restart", "stop-dialling"])
async def test_partition_and_heal(tmp_path: Path, how: str) -> None:
    """Two synced nodes are cut apart, both write while apart (and do not see each
    other's writes), then reconnect: both sides end with everything."""
    invite = make_member(tmp_path / "a", None, "alice")
    make_member(tmp_path / "b", invite, "bob")
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            a = await start_node(nursery, tmp_path / "a")
            b = await start_node(nursery, tmp_path / "b", peers=[a.address])
            board_a, board_b = a.node.board(), b.node.board()
            await board_a.post_need("before the cut")
            await wait_until(lambda: "before the cut" in titles(board_b))

            if how == "restart":
                await b.stop()
                with open_store(tmp_path / "b", create=False) as store:  # offline writes
                    store.board().post_offer("bob, offline 1")
                    store.board().post_offer("bob, offline 2")
            else:
                b.node.dialer.remove(*a.address)
                await board_b.post_offer("bob, apart 1")
                await board_b.post_offer("bob, apart 2")
            await wait_until(lambda: not a.node.peers())
            await board_a.post_need("alice, apart")
            await trio.sleep(0.5)
            assert not {t for t in titles(board_a) if t.startswith("bob")}
            if how == "restart":
                with open_store(tmp_path / "b", create=False) as store:
                    assert "alice, apart" not in titles(store.board())
            else:
                assert "alice, apart" not in titles(board_b)

            if how == "restart":
                b = await start_node(nursery, tmp_path / "b", peers=[a.address])
                board_b = b.node.board()
            else:
                b.node.connect(*a.address)
            await _converged(board_a, board_b)
            assert len(titles(board_a)) == 4
            nursery.cancel_scope.cancel()


async def test_need_added_by_the_cli_reaches_the_peer_within_a_second(tmp_path: Path) -> None:
    """A need written by another process (the CLI) on a running node's data dir is
    picked up by the node's store poll and pushed to its peer within about 1 s."""
    invite = make_member(tmp_path / "a", None, "alice")
    make_member(tmp_path / "b", invite, "bob")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            a = await start_node(nursery, tmp_path / "a")
            b = await start_node(nursery, tmp_path / "b", peers=[a.address])
            await b.node.wait_for_peers(1)
            board_b = b.node.board()
            proc = await trio.run_process(
                [sys.executable, "-m", "p2paid", "--data-dir", str(tmp_path / "a"),
                 "need", "add", "Insulin, cold chain", "--urgency", "critical", "--json"],
                capture_stdout=True, capture_stderr=True, check=False)
            written = time.monotonic()
            assert proc.returncode == 0, proc.stderr.decode()
            item_id = json.loads(proc.stdout)["id"]
            await wait_until(lambda: item_id in {i.id for i in board_b.items()})
            latency = time.monotonic() - written
            assert latency < 1.0, f"the CLI's need took {latency:.2f} s to reach the peer"
            assert board_b.get(item_id).urgency.value == "critical"
            nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------- events


async def test_events_report_remote_and_local_changes(tmp_path: Path) -> None:
    """A subscriber on B sees A's post (with A's display name, local=False), A's claim
    on B's offer, and B's own post and claim (local=True)."""
    invite = make_member(tmp_path / "a", None, "alice")
    make_member(tmp_path / "b", invite, "bob")
    events: list[BoardEvent] = []
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            a = await start_node(nursery, tmp_path / "a")
            b = await start_node(nursery, tmp_path / "b", peers=[a.address])
            await b.node.wait_for_peers(1)
            board_a, board_b = a.node.board(), b.node.board()

            async def subscribe(task_status: trio.TaskStatus[None]) -> None:
                task_status.started()
                async for event in board_b.events():
                    events.append(event)

            await nursery.start(subscribe)
            await trio.testing.wait_all_tasks_blocked()  # the subscriber is registered

            def has(kind: EventKind, local: bool, title: str) -> bool:
                return any(e.kind is kind and e.local is local and e.item is not None
                           and e.item.title == title for e in events)

            need = await board_a.post_need("Blankets", quantity=20)
            await wait_until(lambda: has(EventKind.ITEM_ADDED, False, "Blankets"))
            added = next(e for e in events if e.kind is EventKind.ITEM_ADDED)
            assert added.author_name == "alice"
            assert added.author == board_a.board.author.hex()

            offer = await board_b.post_offer("Van on Tuesdays")
            await wait_until(lambda: has(EventKind.ITEM_ADDED, True, "Van on Tuesdays"))

            await wait_until(lambda: offer.id in {i.id for i in board_a.items()})
            await board_a.claim(offer.id, note="moving day")
            await wait_until(lambda: has(EventKind.CLAIM_ADDED, False, "Van on Tuesdays"))
            claim_event = next(e for e in events if e.kind is EventKind.CLAIM_ADDED)
            assert claim_event.author_name == "alice"
            assert claim_event.claim is not None and claim_event.claim.note == "moving day"

            await board_b.claim(need.id, quantity=5)
            await wait_until(lambda: has(EventKind.CLAIM_ADDED, True, "Blankets"))
            mine = [e for e in events if e.kind is EventKind.CLAIM_ADDED and e.local]
            assert mine[0].author_name == "bob" and mine[0].claim is not None
            assert mine[0].claim.quantity == 5
            nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------- board set and dedupe


async def test_joining_a_board_while_connected_resyncs_peers(tmp_path: Path) -> None:
    """A and B share one board; B then creates a second and a third. A joins the
    second through its running node and the third through the CLI (another
    process): each time the peers reconnect and A receives B's posts on it."""
    invite = make_member(tmp_path / "a", None, "alice")
    make_member(tmp_path / "b", invite, "bob")
    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            a = await start_node(nursery, tmp_path / "a")
            b = await start_node(nursery, tmp_path / "b", peers=[a.address])
            await a.node.wait_for_peers(1)
            second = await b.node.create_board("Second", display_name="bob")
            await second.post_need("on the second board")
            third = await b.node.create_board("Third", display_name="bob")
            await third.post_need("on the third board")

            joined = await a.node.join(second.invite(), display_name="alice")
            await wait_until(lambda: "on the second board" in titles(joined), 0.05)
            assert "Second" in {bd.name for bd in a.node.boards()}

            proc = await trio.run_process(
                [sys.executable, "-m", "p2paid", "--data-dir", str(tmp_path / "a"),
                 "board", "join", third.invite()],
                capture_stdout=True, capture_stderr=True, check=False)
            assert proc.returncode == 0, proc.stderr.decode()
            await wait_until(lambda: "Third" in {bd.name for bd in a.node.boards()}, 0.05)
            await wait_until(lambda: "on the third board" in titles(a.node.board("Third")),
                             0.05)
            # Both directions: A's post on the third board reaches B.
            await a.node.board("Third").post_offer("alice on the third board")
            await wait_until(lambda: "alice on the third board" in titles(third))
            nursery.cancel_scope.cancel()


async def test_repeated_board_joins_each_resync_promptly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A joins five of B's boards one after the other while connected. Each join
    closes the connection on purpose (the Hello must list the new board); the redial
    must not pay an ever-growing failure backoff for it: every board's posts arrive
    within 1.5 s of the join (BACKOFF_START is patched to 0.25 s to keep this short;
    a doubling backoff would reach 2-6 s by the fifth join)."""
    monkeypatch.setattr(p2paid.net.peers, "BACKOFF_START", 0.25)
    make_member(tmp_path / "a", None, "alice")
    invites = []
    with open_store(tmp_path / "b") as store:
        for k in range(5):
            board = store.create_board(f"board {k}", display_name="bob")
            board.post_need(f"need on board {k}")
            invites.append(board.invite())
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            a = await start_node(nursery, tmp_path / "a")
            b = await start_node(nursery, tmp_path / "b", peers=[a.address])
            await a.node.wait_for_peers(1)
            took = []
            for k, invite in enumerate(invites):
                started = trio.current_time()
                joined = await a.node.join(invite)
                with trio.move_on_after(10):
                    await wait_until(partial(_has_title, joined, f"need on board {k}"), 0.02)
                took.append(round(trio.current_time() - started, 2))
            assert max(took) < 1.5, f"seconds from join to first sync, per join: {took}"
            assert len(b.node.peers()) == 1
            nursery.cancel_scope.cancel()


async def test_simultaneous_dials_leave_exactly_one_connection(tmp_path: Path) -> None:
    """A dials B while B dials A: both end with one peer, on the same TCP connection
    (one side sees it outbound, the other inbound), and it stays put."""
    invite = make_member(tmp_path / "a", None, "alice")
    make_member(tmp_path / "b", invite, "bob")
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            a = await start_node(nursery, tmp_path / "a")
            b = await start_node(nursery, tmp_path / "b")
            a.node.connect(*b.address)
            b.node.connect(*a.address)

            def settled() -> bool:
                pa, pb = a.node.peers(), b.node.peers()
                return (len(pa) == 1 and len(pb) == 1
                        and {pa[0].direction, pb[0].direction} == {"in", "out"})

            await wait_until(settled, 0.02)
            first = (a.node.peers()[0].connected_since, b.node.peers()[0].connected_since)
            await trio.sleep(3)  # past the first dial backoff: no flapping, no second link
            assert settled()
            assert (a.node.peers()[0].connected_since,
                    b.node.peers()[0].connected_since) == first
            await a.node.board().post_need("over the one connection")
            await wait_until(lambda: "over the one connection" in titles(b.node.board()))
            nursery.cancel_scope.cancel()


async def test_wait_in_sync_waits_for_a_new_peer_to_hold_everything(tmp_path: Path) -> None:
    """Node.wait_in_sync() ("until every connected peer holds everything we hold")
    must not return while a connected peer has not even said hello (it holds none of
    our 50 needs); it returns once the peer has them all."""
    invite = make_member(tmp_path / "a", None, "alice")
    with open_store(tmp_path / "a") as store:
        for k in range(50):
            store.board().post_need(f"need {k}")
    with open_store(tmp_path / "b") as store:
        store.join(invite)  # no display name: B holds nothing of its own
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            a = await start_node(nursery, tmp_path / "a")
            with open_store(tmp_path / "b") as store:
                peer = await HandPeer.connect(a.address)
                await a.node.wait_for_peers(1)
                with trio.move_on_after(0.5) as waited:
                    await a.node.wait_in_sync()
                assert waited.cancelled_caught, (
                    f"wait_in_sync returned while the peer held {len(store.board().items())}"
                    " of 50 needs")
                await peer.start_session(StoreReplica(store))
                async with trio.open_nursery() as inner:
                    inner.start_soon(peer.run_session, lambda: False)
                    await a.node.wait_in_sync()
                    assert len(store.board().items()) == 50
                    inner.cancel_scope.cancel()
                await peer.aclose()
            nursery.cancel_scope.cancel()


async def test_hello_arriving_with_the_last_handshake_message_is_processed(
    tmp_path: Path,
) -> None:
    """A dialler that sends its Hello in the same TCP segment as the third handshake
    message (any fast initiator may) and is already in sync must still receive the
    node's next post live, without having to send anything else first."""
    make_member(tmp_path / "a", None, "alice")
    shutil.copytree(tmp_path / "a", tmp_path / "copy")  # same envelopes: digests equal
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            a = await start_node(nursery, tmp_path / "a")
            with open_store(tmp_path / "copy") as store:
                peer = await HandPeer.connect(a.address, replica=StoreReplica(store))
                await peer.wait_for(Hello)
                assert [type(m) for m in peer.sent] == [Hello]  # in sync: nothing more to say
                await a.node.board().post_need("pushed live")
                with trio.fail_after(3):
                    batch = await peer.wait_for(Envelopes)
                assert len(batch.envelopes) == 1
                await peer.aclose()
            nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------- SIGKILL mid-sync

#: Runs one node (argv: data_dir, host, port of the peer to dial) until killed.
NODE_SCRIPT = textwrap.dedent(
    """
    import sys, trio
    from p2paid.node.node import open_node

    async def main() -> None:
        peer = (sys.argv[2], int(sys.argv[3]))
        async with open_node(sys.argv[1], listen=None, mdns=False, peers=[peer]):
            print("running", flush=True)
            await trio.sleep_forever()

    try:
        trio.run(main)
    except KeyboardInterrupt:
        pass
    """
)


async def _run_command_argv(data_dir: Path, peer: tuple[str, int]) -> list[str]:
    """``p2paid run`` when the CLI has it (with the flags we need), else NODE_SCRIPT."""
    proc = await trio.run_process([sys.executable, "-m", "p2paid", "run", "--help"],
                                  capture_stdout=True, capture_stderr=True, check=False)
    help_text = proc.stdout.decode()
    if proc.returncode != 0 or not all(flag in help_text for flag in ("--no-mdns", "--peer")):
        return [sys.executable, "-c", NODE_SCRIPT, str(data_dir), *map(str, peer)]
    if "--no-listen" in help_text:
        listen = ["--no-listen"]
    else:
        with socket.socket() as s:
            s.bind((LOCALHOST, 0))
            listen = ["--listen", f"{LOCALHOST}:{s.getsockname()[1]}"]
    return [sys.executable, "-m", "p2paid", "--data-dir", str(data_dir), "run", *listen,
            "--no-mdns", "--peer", f"{peer[0]}:{peer[1]}"]


def _count_envelopes(data_dir: Path) -> int:
    """Envelopes committed in a store, read by a separate read-only connection."""
    try:
        con = sqlite3.connect(f"file:{data_dir / 'p2paid.sqlite3'}?mode=ro", uri=True,
                              timeout=5)
        try:
            return int(con.execute("SELECT COUNT(*) FROM envelopes").fetchone()[0])
        finally:
            con.close()
    except sqlite3.OperationalError:
        return 0


TEMPLATE_NEEDS = 2500


@pytest.fixture(scope="module")
def needs_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, bytes]:
    """A data dir whose board holds TEMPLATE_NEEDS needs by alice (made once)."""
    data_dir = tmp_path_factory.mktemp("template") / "a"
    invite = make_member(data_dir, None, "alice")
    with open_store(data_dir) as store:
        board = store.board()
        for k in range(TEMPLATE_NEEDS):
            board.post_need(f"need {k}", quantity=k % 50 + 1, location="north camp")
        return data_dir, invite, board.id


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [0.25, 0.85], ids=["early", "after-a-snapshot"])
async def test_sigkill_mid_sync_loses_nothing_confirmed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kill_at: float,
    needs_template: tuple[Path, str, bytes],
) -> None:
    """Node B (a subprocess) is SIGKILLed while receiving thousands of needs from A.
    Killed early, and again after B saved its first snapshot (every 2,000 changes).
    A fresh store on B's data dir is then sound and holds a consistent prefix that
    includes every envelope a reader saw committed before the kill; restarted, B
    converges with A and still holds every envelope it had at the kill, unchanged."""
    template, invite, board_id = needs_template
    shutil.copytree(template, tmp_path / "a")
    total = TEMPLATE_NEEDS + 1  # + alice's display name
    make_member(tmp_path / "b", invite, "bob")
    total += 1  # + bob's display name
    # A sends in small batches, so B spends a while receiving (and can be killed meanwhile).
    monkeypatch.setattr(p2paid.core.connection, "SyncSession",
                        partial(SyncSession, batch_bytes=8 * 1024))
    log = tmp_path / "b.log"
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            a = await start_node(nursery, tmp_path / "a")
            argv = await _run_command_argv(tmp_path / "b", a.address)
            with log.open("wb") as err:
                proc = await trio.lowlevel.open_process(argv, stdout=subprocess.DEVNULL,
                                                        stderr=err)
                try:
                    seen = 0
                    while seen < total * kill_at:
                        await trio.sleep(0.005)
                        seen = _count_envelopes(tmp_path / "b")
                    proc.kill()  # SIGKILL
                finally:
                    proc.kill()
                    await proc.wait()
            assert proc.returncode == -signal.SIGKILL

            at_kill = stored_envelopes(tmp_path / "b", board_id)
            assert seen <= len(at_kill) < total, (
                f"B held {len(at_kill)} of {total} at the kill (read {seen} before it)")
            with open_store(tmp_path / "b", create=False) as store:
                assert store._db.integrity_check() == []
                b_board = store.board()
                vector = b_board.version_vector()
                # What is held is a contiguous prefix of each feed, and the document
                # shows exactly the needs it holds.
                assert sum(vector.values()) == len(at_kill)
                assert len(b_board.items()) == vector[a.node.board().board.author] - 1
                if kill_at > 0.8:  # B had saved a snapshot before the kill; reopen used it
                    assert store._db.snapshot(board_id) is not None

            with log.open("ab") as err:
                proc = await trio.lowlevel.open_process(argv, stdout=subprocess.DEVNULL,
                                                        stderr=err)
                try:
                    await wait_until(lambda: _count_envelopes(tmp_path / "b") >= total, 0.05)
                    await a.node.wait_in_sync()
                finally:
                    proc.send_signal(signal.SIGINT)
                    with trio.move_on_after(10):
                        await proc.wait()
                    if proc.returncode is None:
                        proc.kill()
                        await proc.wait()
            assert proc.returncode == 0, f"B exited with {proc.returncode} on SIGINT"
            after = stored_envelopes(tmp_path / "b", board_id)
            assert len(after) == total
            assert all(after[key] == raw for key, raw in at_kill.items())
            with open_store(tmp_path / "b", create=False) as store:
                assert board_state(store.board()) == board_state(a.node.board())
            nursery.cancel_scope.cancel()
    assert "Traceback" not in log.read_text(errors="replace"), log.read_text(errors="replace")


async def test_bulk_work_left_by_a_connection_that_ended_is_applied(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """B stores a bulk sync whose Automerge work is deferred until the link falls
    quiet; the connection ends first (here: the link never falls quiet long enough).
    The node still applies all of it, in steps, without another sync."""
    monkeypatch.setattr(p2paid.net.connection, "IDLE_FLUSH_DELAY", 3600.0)
    invite = make_member(tmp_path / "a", None, "a")
    make_member(tmp_path / "b", invite, "b")
    with open_store(tmp_path / "a") as store:
        board = store.board()
        for i in range(300):
            board.post_need(f"need {i}")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            a = await start_node(nursery, tmp_path / "a")
            b = await start_node(nursery, tmp_path / "b", listen=False)
            b.node.connect(*a.address)
            await wait_until(lambda: b.node.replica.stats["received"] >= 301)
            assert b.node.replica.has_deferred  # stored, not applied yet
            b.node.dialer.remove(*a.address)  # the connection ends
            await wait_until(lambda: not b.node.replica.has_deferred)  # (reading would apply)
            assert len(b.node.board().items()) == 300
            nursery.cancel_scope.cancel()
