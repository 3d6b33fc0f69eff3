"""The trio driver (``p2paid.net.connection``) over real sockets on 127.0.0.1: batches go
to the replica in slices, a host's deferred work runs in steps once the link is
quiet, and the connection's timers run on trio's clock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from peer_helpers import StreamPeer
from replication_helpers import FeedWriter, MemoryReplica, board_keys

import p2paid.core.connection as core
from p2paid.core.codes import CloseReason
from p2paid.core.identity import NodeKey
from p2paid.core.replication import Received, Replica, SyncEvent, SyncSession
from p2paid.core.wire import Hello, Message, Ping
from p2paid.net.connection import Connection, receive_in_slices, run_connection
from p2paid.net.interfaces import RECEIVE_SLICE, ConnectionOptions
from p2paid.node.replica import DEFER_APPLY_FROM

BOARD = board_keys(30)
LOCALHOST = "127.0.0.1"


class Host:
    """A ConnectionHost with no policy over one MemoryReplica."""

    def __init__(self, replica: MemoryReplica) -> None:
        self.node_key = NodeKey.generate()
        self.replica = replica
        self.conns: list[Connection] = []

    def replica_for(self, conn: Connection) -> Replica:
        return self.replica

    def on_hello(self, conn: Connection, hello: Hello) -> list[Message] | None:
        return []

    def register(self, conn: Connection) -> bool:
        self.conns.append(conn)
        return True

    def unregister(self, conn: Connection) -> None:
        pass

    def after_receive(self, conn: Connection) -> None:
        pass

    def on_sync_event(self, conn: Connection, event: SyncEvent) -> None:
        pass


class Deferred:
    """Deferred work of three steps, counted."""

    def __init__(self) -> None:
        self.left = 0
        self.steps = 0

    def has_deferred(self) -> bool:
        return self.left > 0

    def flush_deferred(self) -> bool:
        self.steps += 1
        self.left -= 1
        return self.left > 0


@asynccontextmanager
async def serving(host: Host, options: ConnectionOptions | None = None
                  ) -> AsyncIterator[tuple[str, int]]:
    """Accept connections on 127.0.0.1 and drive each with run_connection."""
    (listener,) = await trio.open_tcp_listeners(0, host=LOCALHOST)

    async def accept(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            nursery.start_soon(serve, await listener.accept())

    async def serve(stream: trio.SocketStream) -> None:
        await run_connection(host, stream, address="peer", initiator=False, options=options)

    async with trio.open_nursery() as nursery:
        await nursery.start(accept)
        yield LOCALHOST, listener.socket.getsockname()[1]
        nursery.cancel_scope.cancel()


def member(envelopes: int = 0) -> MemoryReplica:
    replica = MemoryReplica("node")
    replica.add_board(BOARD)
    if envelopes:
        replica.write(BOARD.board_id, FeedWriter(BOARD).many(envelopes))
    replica.take_changed()
    return replica


async def wait(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await trio.sleep(0.01)


@pytest.mark.parametrize(("slice_size", "calls"), [(RECEIVE_SLICE, 4), (None, 1)],
                         ids=["sliced", "whole"])
async def test_a_batch_reaches_the_replica_in_slices(slice_size: int | None,
                                                     calls: int) -> None:
    """1,000 envelopes in one batch: a node's driver hands them to its replica in four
    contiguous slices of 250 (the event loop runs between them); a relay's in one."""
    receiver = member()
    with trio.fail_after(10):
        async with serving(Host(receiver), ConnectionOptions(receive_slice=slice_size)
                           ) as address:
            sender = member(1000)
            peer = await StreamPeer.open(address, replica=sender)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(peer.run)
                await wait(lambda: peer.session is not None
                           and peer.session.is_in_sync(BOARD.board_id))
                nursery.cancel_scope.cancel()
            await peer.aclose()
    assert receiver.feeds(BOARD.board_id) == sender.feeds(BOARD.board_id)
    assert receiver.receive_calls == calls and receiver.offered == 1000
    assert sum(type(m).__name__ == "Envelopes" for m in peer.sent) == 1


async def test_slices_are_equal_and_a_deferring_replica_defers_each_of_them() -> None:
    """A node defers applying batches of at least DEFER_APPLY_FROM envelopes; the slices
    of such a batch are no smaller, so slicing never turns a deferred apply into an
    immediate one."""
    sizes: list[int] = []

    class Counting(MemoryReplica):
        def receive(self, board_id: bytes, envelopes: object) -> Received:
            assert isinstance(envelopes, tuple | list)
            sizes.append(len(envelopes))
            return Received(len(envelopes))

    replica = Counting("node")
    for n in (DEFER_APPLY_FROM, RECEIVE_SLICE + 1, 1000, 4321):
        sizes.clear()
        raws = tuple(bytes([i % 256]) for i in range(n))
        total = await receive_in_slices(replica, BOARD.board_id, raws, RECEIVE_SLICE)
        assert total.stored == n and sum(sizes) == n
        assert max(sizes) - min(sizes) <= 1 and min(sizes) >= DEFER_APPLY_FROM
        assert max(sizes) <= RECEIVE_SLICE


async def test_deferred_work_runs_in_steps_once_the_link_is_quiet() -> None:
    """After the host deferred work, the next quiet moment of the link does all of it,
    one bounded step at a time, and nothing more."""
    deferred = Deferred()
    with trio.fail_after(10):
        async with serving(Host(member()), ConnectionOptions(deferred=deferred)) as address:
            peer = await StreamPeer.open(address, replica=member())
            async with trio.open_nursery() as nursery:
                nursery.start_soon(peer.run)
                await wait(lambda: bool(peer.received))  # the node's Hello
                deferred.left = 3  # (as a bulk batch would leave it)
                await peer.send(Ping(1))
                await wait(lambda: deferred.steps == 3)
                await trio.sleep(0.05)
                assert deferred.steps == 3 and not deferred.has_deferred()
                nursery.cancel_scope.cancel()
            await peer.aclose()


async def test_timers_run_on_trio_s_clock(autojump_clock: trio.testing.MockClock) -> None:
    """A member that says hello and then nothing (not even Pongs): the driver pings it
    after KEEPALIVE_INTERVAL and drops it with Close("idle") after IDLE_TIMEOUT, in
    virtual time."""
    with trio.fail_after(core.IDLE_TIMEOUT + 10):
        async with serving(Host(member())) as address:
            peer = await StreamPeer.open(address)
            (hello,) = SyncSession(member(), initiator=True,
                                   handshake_hash=peer.handshake_hash).start()
            await peer.send(hello)
            started = trio.current_time()
            reason = await peer.wait_closed()
            took = trio.current_time() - started
    assert any(isinstance(m, Ping) for m in peer.received)
    assert reason == CloseReason.IDLE
    assert core.IDLE_TIMEOUT <= took < core.IDLE_TIMEOUT + 1
