"""Issue 9, a newcomer's first hour, in the library: reachability log lines, the
progress of a big sync, live syncs recorded in the store, events a subscriber
lost, and relays known by their Hello. Real nodes and relays on 127.0.0.1."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest
import trio
from node_helpers import make_member, start_node, wait_until
from relay_helpers import start_relay

import p2paid
from p2paid import EventsLostError
from p2paid.board.model import BoardEvent
from p2paid.cli.eventlog import Burst
from p2paid.net.reach import CONNECTED, UNREACHABLE, Reachability
from p2paid.node.syncprogress import SyncProgress
from p2paid.node.syncrecord import SyncRecorder


def _messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level]


def test_an_outage_is_logged_once_per_kind_and_once_when_it_ends(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="p2paid")
    reach = Reachability("peer 10.0.0.5:7446")
    for _ in range(5):
        reach.failed("connection refused")
    reach.failed("timed out")
    reach.failed("connection refused")
    assert reach.state == UNREACHABLE and reach.attempts == 7
    assert reach.last_error == "connection refused"
    assert _messages(caplog, logging.WARNING) == [
        "cannot reach peer 10.0.0.5:7446 (connection refused); retrying with backoff",
        "cannot reach peer 10.0.0.5:7446 (timed out); retrying with backoff"]
    reach.reached()
    reach.reached()
    assert _messages(caplog, logging.INFO) == [
        "reached peer 10.0.0.5:7446 again after 7 failed attempts"]
    assert reach.state == CONNECTED and reach.attempts == 0 and reach.last_error is None
    caplog.clear()
    reach.lost()
    reach.failed("connection refused")  # a new outage is told again
    assert _messages(caplog, logging.WARNING) == [
        "cannot reach peer 10.0.0.5:7446 (connection refused); retrying with backoff"]


def test_targets_found_by_mdns_stay_quiet(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="p2paid")
    reach = Reachability("peer 192.168.1.9:7446", quiet=True)
    reach.failed("connection refused")
    reach.reached()
    assert not [r for r in caplog.records if r.levelno >= logging.INFO]
    assert reach.state == CONNECTED


class Clock:
    """Seconds that a test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_big_sync_logs_start_progress_and_end_and_a_small_one_a_line() -> None:
    clock = Clock()
    progress = SyncProgress(interval=5.0, clock=clock)
    board, conn, other = b"B" * 32, object(), object()
    assert progress.received(board, conn, "P", 3, 0) == "3 new envelopes from P"
    assert progress.received(board, conn, "P", 0, 0) is None
    assert progress.received(board, conn, "P", 2000, 48_000) == (
        "receiving ~50,000 envelopes from P")
    clock.now += 1
    assert progress.received(board, conn, "P", 2000, 46_000) is None  # not yet
    clock.now += 4
    assert progress.received(board, conn, "P", 8000, 38_000) == (
        "12,000 of ~50,000 envelopes received from P (2,400/s)")
    assert progress.received(board, other, "Q", 1, 0) == "1 new envelope from Q"
    clock.now += 7.5
    assert progress.received(board, conn, "P", 38_000, 0) == (
        "50,000 envelopes received from P in 12.5 s")
    assert progress.received(board, conn, "P", 1, 0) == "1 new envelope from P"
    progress.received(board, conn, "P", 10, 10)
    progress.forget(conn)  # the connection ended mid-way: the next one starts afresh
    assert progress.received(board, conn, "P", 10, 0) == "10 new envelopes from P"


def test_live_syncs_are_written_at_most_once_an_interval_per_board(tmp_path: Path) -> None:
    clock = Clock()
    with p2paid.open_store(tmp_path / "d") as store:
        a, b = store.create_board("A").id, store.create_board("B").id
        recorder = SyncRecorder(store, interval=5.0, clock=clock)
        recorder.synced(a, "peer")
        first = store.last_syncs()[a]
        assert first[1] == "peer"
        clock.now += 1
        recorder.synced(a, "relay")  # too soon: kept for later
        recorder.synced(b, "relay")  # another board: written now
        assert store.last_syncs()[a] == first
        assert store.last_syncs()[b][1] == "relay"
        recorder.flush()
        assert store.last_syncs()[a] == first
        clock.now += 5
        recorder.flush()
        assert store.last_syncs()[a][1] == "relay"
        clock.now += 1
        recorder.synced(a, "peer")
        recorder.flush(everything=True)  # as the node does when it stops
        assert store.last_syncs()[a][1] == "peer"


async def test_a_subscriber_that_falls_behind_is_told_how_many_events_it_lost(
        tmp_path: Path) -> None:
    """A subscriber with a buffer of 10 that stops reading while 30 needs are posted
    gets the 10 that fit, then EventsLostError with a count of 20; a new subscription
    gets what follows."""
    make_member(tmp_path / "a", None, "amina")
    got: list[BoardEvent] = []
    lost: list[int] = []
    first, go = trio.Event(), trio.Event()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            node = (await start_node(nursery, tmp_path / "a", listen=False)).node
            board = node.board()

            async def slow_reader() -> None:
                try:
                    async for event in board.events(buffer=10):
                        got.append(event)
                        if len(got) == 1:
                            first.set()
                            await go.wait()
                except EventsLostError as exc:
                    lost.append(exc.count)

            nursery.start_soon(slow_reader)
            await trio.sleep(0)  # (the reader subscribes)
            with board.subscribe() as later:
                await board.post_need("first")
                await first.wait()
                for n in range(30):
                    await board.post_need(f"need {n}")
                go.set()
                await wait_until(lambda: bool(lost))
                assert lost == [20]
                assert [e.item.title for e in got if e.item] == [
                    "first", *(f"need {n}" for n in range(10))]
                # The default buffer held every one of them for the other subscriber.
                titles = [e.item.title for e in await later.next_batch() if e.item]
                assert titles[0] == "first" and len(titles) == 31
                with board.subscribe(buffer=10) as again:
                    await board.post_need("after")
                    assert [e.item.title for e in await again.next_batch() if e.item] == [
                        "after"]
            nursery.cancel_scope.cancel()


def test_a_burst_is_one_line_per_origin_and_a_handful_one_line_each(
        tmp_path: Path) -> None:
    with p2paid.open_store(tmp_path / "d") as store:
        board = store.create_board("Camp", display_name="Amina")
        board.track_events()
        for n in range(3):
            board.post_need(f"need {n}")
        few = Burst()
        few.add(board.take_events())
        lines = few.lines("Camp")
        assert len(lines) == 3
        for n, line in enumerate(lines):
            assert re.fullmatch(rf"Camp: Amina \(\S+\) posted need 'need {n}'", line), line
        with board.group():
            for n in range(7):
                board.post_need(f"more {n}")
            board.post_offer("van")
        many = Burst()
        events = board.take_events()
        many.add(events[:4])
        many.add(events[4:])
        assert many.lines("Camp") == ["Camp: made here 7 new needs and 1 new offer "
                                      "(by 1 member)"]


async def test_a_relay_is_known_by_its_hello_and_its_syncs_are_recorded(
        tmp_path: Path) -> None:
    """A node that syncs through a relay shows the relay as ``kind == "relay"`` among
    its peers (from the relay's Hello), as a connected relay target, and the store
    keeps the board's last sync as through a relay once the node has stopped."""
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            relay = await start_relay(nursery, tmp_path / "relay")
            make_member(tmp_path / "a", None, "amina")
            with p2paid.open_store(tmp_path / "a") as store:
                store.add_relay(relay.address)
                board_id = store.board().id
            a = await start_node(nursery, tmp_path / "a", listen=False)
            await wait_until(lambda: any(p.kind == "relay" for p in a.node.peers()))
            [peer] = a.node.peers()
            assert peer.node_id == relay.key.hex()
            await a.node.wait_in_sync()  # the relay holds the board: uploaded, not synced
            await a.stop()
            # Again: now the relay and the node are in sync as soon as they meet.
            a = await start_node(nursery, tmp_path / "a", listen=False)
            await wait_until(lambda: board_id in a.node.last_sync)
            targets: Any = a.node.status()["targets"]
            [target] = targets
            assert (target["kind"], target["state"]) == ("relay", "connected")
            await a.stop()
            nursery.cancel_scope.cancel()
    with p2paid.open_store(tmp_path / "a") as store:
        assert store.last_syncs()[board_id][1] == "relay"
