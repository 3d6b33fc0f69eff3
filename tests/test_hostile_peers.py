"""A legitimate node under attack while an honest peer keeps syncing with it.

Every test runs a victim node and an honest peer connected to it, attacks the
victim over 127.0.0.1 (raw TCP, or a hand-driven :class:`~p2paid.core.wire.SecureChannel`,
or a full sync session that knows the invite), then checks that the honest link
is the very same connection as before the attack and still carries a new post
in each direction. Nothing here waits on the real 10 s handshake timeout: it is
patched to 0.5 s unless a test says otherwise.
"""

from __future__ import annotations

import contextlib
import os
import random
import resource
import shutil
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
from node_helpers import (
    HandPeer,
    PeerClosed,
    RunningNode,
    make_member,
    rss_bytes,
    start_node,
    titles,
    wait_raw_closed,
    wait_until,
)

import p2paid.core.connection
import p2paid.net.connection
from p2paid.board.store import Store, open_store
from p2paid.core.connection import MAX_PINGS
from p2paid.core.envelope import Envelope
from p2paid.core.identity import NodeKey
from p2paid.core.replication import SyncSession
from p2paid.core.wire import (
    MAX_MESSAGE_BYTES,
    Ack,
    Envelopes,
    Hello,
    Ping,
    Pong,
    SecureChannel,
    Vector,
    encode_message,
)
from p2paid.node.asyncboard import AsyncBoard
from p2paid.node.replica import StoreReplica

SHORT_HANDSHAKE_TIMEOUT = 0.5


@pytest.fixture(autouse=True)
def _short_handshake_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(p2paid.core.connection, "HANDSHAKE_TIMEOUT", SHORT_HANDSHAKE_TIMEOUT)


@dataclass
class Scene:
    """A victim node, an honest peer dialling it, and the honest link's identity."""

    victim: RunningNode
    honest: RunningNode
    invite: str
    tmp: Path
    honest_since: float = 0.0
    rounds: int = 0

    @property
    def board_id(self) -> bytes:
        return self.victim.node.board().id

    def attacker_ids(self) -> set[str]:
        honest = self.honest.node.node_id.hex()
        return {p.node_id for p in self.victim.node.peers()} - {honest}

    async def check_honest(self) -> None:
        """The honest link survived (same connection) and syncs both ways."""
        self.rounds += 1
        victim, honest = self.victim.node.board(), self.honest.node.board()
        with trio.fail_after(5):
            need = await victim.post_need(f"victim post {self.rounds}")
            await wait_until(lambda: need.id in {i.id for i in honest.items()})
            offer = await honest.post_offer(f"honest post {self.rounds}")
            await wait_until(lambda: offer.id in {i.id for i in victim.items()})
        peers = self.honest.node.peers()
        assert [p.node_id for p in peers] == [self.victim.node.node_id.hex()]
        assert peers[0].connected_since == self.honest_since, "the honest link was dropped"


@contextlib.asynccontextmanager
async def open_scene(tmp: Path, **victim_options: Any) -> AsyncIterator[Scene]:
    invite = make_member(tmp / "victim", None, "victim")
    make_member(tmp / "honest", invite, "honest")
    async with trio.open_nursery() as nursery:
        victim = await start_node(nursery, tmp / "victim", **victim_options)
        honest = await start_node(nursery, tmp / "honest", peers=[victim.address])
        scene = Scene(victim, honest, invite, tmp)
        with trio.fail_after(5):
            await honest.node.wait_for_peers(1)
        scene.honest_since = honest.node.peers()[0].connected_since
        await scene.check_honest()
        yield scene
        nursery.cancel_scope.cancel()


def _frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(2, "big") + payload


def _message(body: bytes) -> bytes:
    """One message on the decrypted stream: u32 length || body."""
    return len(body).to_bytes(4, "big") + body


# ---------------------------------------------------------------------- before the handshake

#: name -> (bytes sent, whether the node can tell at once that they are garbage)
GARBAGE: dict[str, tuple[bytes, bool]] = {
    "zero-length frame": (b"\x00\x00" + bytes(40), True),
    "first message too short": (_frame(b"hello"), True),
    "low-order ephemeral key": (_frame(bytes(32)), True),
    "http request": (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", False),
    "random bytes": (random.Random(7).randbytes(4096), False),
}


@pytest.mark.parametrize("name", list(GARBAGE))
async def test_garbage_before_the_handshake_is_dropped(tmp_path: Path, name: str) -> None:
    """Raw bytes that are not a Noise handshake: the node hangs up (at once when the
    frame is visibly wrong, else at the handshake timeout) and serves on."""
    payload, at_once = GARBAGE[name]
    with trio.fail_after(15):
        async with open_scene(tmp_path) as scene:
            stream = await trio.open_tcp_stream(*scene.victim.address)
            started = trio.current_time()
            with contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(payload)
            with trio.fail_after(SHORT_HANDSHAKE_TIMEOUT + 2):
                await wait_raw_closed(stream)
            elapsed = trio.current_time() - started
            if at_once:
                assert elapsed < SHORT_HANDSHAKE_TIMEOUT * 0.8, f"dropped after {elapsed:.2f} s"
            await stream.aclose()
            assert not scene.attacker_ids()
            await scene.check_honest()


async def test_garbage_third_handshake_message_is_dropped(tmp_path: Path) -> None:
    """A real first message, then junk where the initiator's static key belongs:
    the node refuses it at once."""
    with trio.fail_after(15):
        async with open_scene(tmp_path) as scene:
            stream = await trio.open_tcp_stream(*scene.victim.address)
            channel = SecureChannel(True, NodeKey.generate().private)
            await stream.send_all(channel.data_to_send())
            reply = await stream.receive_some(65536)
            assert len(reply) > 2  # the node's second handshake message
            started = trio.current_time()
            await stream.send_all(_frame(random.Random(3).randbytes(64)))
            with trio.fail_after(2):
                await wait_raw_closed(stream)
            assert trio.current_time() - started < SHORT_HANDSHAKE_TIMEOUT * 0.8
            await stream.aclose()
            await scene.check_honest()


async def _dribble(stream: trio.SocketStream, data: bytes) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        for k in range(len(data)):
            await stream.send_all(data[k : k + 1])
            await trio.sleep(0.05)


@pytest.mark.parametrize("how", ["silent", "half a frame", "first message only", "dribble"])
async def test_stalled_handshake_is_dropped_at_the_timeout(tmp_path: Path, how: str) -> None:
    """A client that connects and then stalls (or trickles a byte every 50 ms) is
    cut off once HANDSHAKE_TIMEOUT (patched to 0.5 s) has passed since it connected."""
    with trio.fail_after(15):
        async with open_scene(tmp_path) as scene, trio.open_nursery() as nursery:
            stream = await trio.open_tcp_stream(*scene.victim.address)
            started = trio.current_time()
            first = SecureChannel(True, NodeKey.generate().private).data_to_send()
            if how == "half a frame":
                await stream.send_all(first[: len(first) // 2])
            elif how == "first message only":
                await stream.send_all(first)
            elif how == "dribble":
                nursery.start_soon(_dribble, stream, first)  # 34 bytes would take 1.7 s
            with trio.fail_after(SHORT_HANDSHAKE_TIMEOUT + 2):
                await wait_raw_closed(stream)
            elapsed = trio.current_time() - started
            assert SHORT_HANDSHAKE_TIMEOUT * 0.8 <= elapsed < SHORT_HANDSHAKE_TIMEOUT + 1.5
            await stream.aclose()
            await scene.check_honest()


# ---------------------------------------------------------------------- after the handshake


@pytest.mark.parametrize("junk", ["raw bytes", "frame that does not decrypt", "empty frame"])
async def test_garbage_after_a_valid_handshake_drops_the_peer(tmp_path: Path, junk: str) -> None:
    """An authenticated peer that sends bytes which are not valid transport frames is
    dropped; the honest link is untouched."""
    with trio.fail_after(15):
        async with open_scene(tmp_path) as scene:
            peer = await HandPeer.connect(scene.victim.address)
            await peer.wait_for(Hello)
            assert len(scene.attacker_ids()) == 1
            data = {
                "raw bytes": random.Random(11).randbytes(70_000),  # completes any frame
                "frame that does not decrypt": _frame(random.Random(12).randbytes(200)),
                "empty frame": b"\x00\x00",
            }[junk]
            with contextlib.suppress(trio.BrokenResourceError):
                await peer.stream.send_all(data)
            with trio.fail_after(2):
                await peer.wait_closed()
            await wait_until(lambda: not scene.attacker_ids())
            await peer.aclose()
            await scene.check_honest()


_HELLO = _message(encode_message(Hello(1, "node", False, ())))
#: name -> decrypted message stream the attacker sends inside valid transport frames
VIOLATIONS: dict[str, bytes] = {
    "length over the cap": struct.pack(">I", MAX_MESSAGE_BYTES + 1) + bytes(64),
    "length 2**32-1": b"\xff\xff\xff\xff" + bytes(64),
    "zero length": bytes(4),
    "unknown message type": _message(msgpack.packb([99, 1, 2])),
    "not msgpack": _message(b"\xc1\xc1"),
    "not an array": _message(msgpack.packb({"type": 1})),
    "missing fields": _message(msgpack.packb([Vector.TYPE, 0])),
    "wrong field type": _message(msgpack.packb([Ping.TYPE, "nonce"])),
    "envelopes before hello": _message(encode_message(Envelopes(0, 0, ()))),
    "second hello": _HELLO + _HELLO,
    "hello naming boards by id": _message(encode_message(Hello(1, "node", True, ()))),
    "vector for a board not shared": _HELLO + _message(encode_message(Vector(0, ()))),
    "ack for a board not shared": _HELLO + _message(encode_message(Ack(0, 0))),
}


@pytest.mark.parametrize("name", list(VIOLATIONS))
async def test_protocol_violation_inside_valid_frames_drops_the_peer(
    tmp_path: Path, name: str
) -> None:
    """Correctly encrypted frames carrying a bad message (oversized length, unknown
    type, malformed fields, out-of-order messages): the node says Close(reason) and
    drops that peer only."""
    with trio.fail_after(15):
        async with open_scene(tmp_path) as scene:
            peer = await HandPeer.connect(scene.victim.address)
            await peer.wait_for(Hello)  # the node is past the handshake, in its read loop
            await peer.send_plaintext(VIOLATIONS[name])
            with trio.fail_after(2):
                reason = await peer.wait_closed()
            assert reason, "the node closed without saying why"
            await wait_until(lambda: not scene.attacker_ids())
            await peer.aclose()
            await scene.check_honest()


# ---------------------------------------------------------------------- members that misbehave


async def _member_session(scene: Scene, store: Store) -> tuple[HandPeer, SyncSession]:
    """A hand-driven peer that knows the invite, synced with the victim."""
    peer = await HandPeer.connect(scene.victim.address)
    await peer.start_session(StoreReplica(store))
    session = peer.session
    assert session is not None
    victim_board = scene.victim.node.board().board
    own = store.board()

    def synced() -> bool:
        theirs, mine = victim_board.version_vector(), own.version_vector()
        return all(mine.get(a, 0) >= s for a, s in theirs.items()) and all(
            theirs.get(a, 0) >= s for a, s in mine.items())

    with trio.fail_after(5):
        await peer.run_session(synced)
    return peer, session


def _envelope_bytes(board_id: bytes, author: bytes, seq: int, prev: bytes,
                    ciphertext: bytes, sig: bytes) -> bytes:
    head = struct.pack(">B32s32sQ32s12sI", 1, board_id, author, seq, prev, os.urandom(12),
                       len(ciphertext))
    return head + ciphertext + sig


@pytest.mark.parametrize("forgery", ["impersonates the victim", "flipped signature bit"])
async def test_forged_envelope_drops_the_peer_and_is_not_stored(
    tmp_path: Path, forgery: str
) -> None:
    """A member peer sends an envelope whose signature does not verify: the node
    drops that peer (Close 'bad-signature'), stores nothing, brands nobody as forked,
    and its own next genuine envelope (the seq the forgery claimed) still spreads."""
    with trio.fail_after(20):
        async with open_scene(tmp_path) as scene:
            make_member(tmp_path / "mallory", scene.invite, "mallory")
            with open_store(tmp_path / "mallory") as store:
                peer, _ = await _member_session(scene, store)
                victim_board = scene.victim.node.board().board
                if forgery == "impersonates the victim":
                    head_seq = victim_board.version_vector()[victim_board.author]
                    head = victim_board.heads()[victim_board.author]
                    forged = _envelope_bytes(scene.board_id, victim_board.author, head_seq + 1,
                                             head.hash, os.urandom(120), os.urandom(64))
                else:
                    store.board().post_need("genuine content, broken signature")
                    raw = store._db.read_feed(scene.board_id, store.board().author, 1, 1 << 20)[-1]
                    forged = raw[:-1] + bytes([raw[-1] ^ 1])
                env = Envelope.decode(forged)
                vector_before = victim_board.version_vector()
                await peer.send(Envelopes(0, 10_000, (forged,)))
                with trio.fail_after(2):
                    reason = await peer.wait_closed()
                assert reason == "bad-signature"
                await peer.aclose()
            assert victim_board.version_vector().get(env.author, 0) == vector_before.get(
                env.author, 0)
            db = scene.victim.node.store._db
            assert db.held_hashes(scene.board_id, env.author, env.seq, env.seq) == {}
            assert not [r for r in db.rejections(scene.board_id) if r[2] == "fork"]
            await scene.check_honest()  # the victim's genuine next seq spreads
            assert "genuine content, broken signature" not in titles(scene.honest.node.board())


async def test_validly_signed_fork_ends_the_feed_everywhere(tmp_path: Path) -> None:
    """Mallory's key is copied to a second device and both post as seq 2: a fork.
    The node refuses the second version (not stored, recorded), keeps the proof and
    ends Mallory's feed before seq 2, so the first version is dropped too; it passes
    the proof to the honest peer, which ends the feed the same way (so all converge);
    the honest link is unaffected and Mallory's seq 1 stays."""
    with trio.fail_after(20):
        async with open_scene(tmp_path) as scene:
            make_member(tmp_path / "mallory", scene.invite, "mallory")
            shutil.copytree(tmp_path / "mallory", tmp_path / "mallory-copy")
            with open_store(tmp_path / "mallory-copy") as copy:
                copy.board().post_need("second version")
                author = copy.board().author
                fork_raw = copy._db.read_feed(scene.board_id, author, 1, 1 << 20)[0]
            with open_store(tmp_path / "mallory") as store:
                first = store.board().post_need("first version")
                first_raw = store._db.read_feed(scene.board_id, author, 1, 1 << 20)[0]
                assert first_raw != fork_raw and fork_raw[65:73] == first_raw[65:73]
                peer, _ = await _member_session(scene, store)
                honest = scene.honest.node.board()
                with trio.fail_after(5):
                    await wait_until(lambda: first.id in {i.id for i in honest.items()})

                await peer.send(Envelopes(0, 10_000, (fork_raw,)))
                with trio.fail_after(3):  # acknowledged, or (allowed) dropped
                    with contextlib.suppress(PeerClosed):
                        while not any(isinstance(m, Ack) and m.batch == 10_000
                                      for m in peer.received):
                            await peer.receive()
                await peer.aclose()

            fork = Envelope.decode(fork_raw)
            db = scene.victim.node.store._db
            assert db.held_hashes(scene.board_id, author, 2, 2) == {}
            assert db.held_hashes(scene.board_id, author, 1, 1)  # seq 1 was not forked
            forks = [r for r in db.rejections(scene.board_id) if r[2] == "fork"]
            assert [(a, s) for a, s, _, _ in forks] == [(author, fork.seq)]
            assert {db.forks(scene.board_id)[author].first,
                    db.forks(scene.board_id)[author].second} == {first_raw, fork_raw}
            with trio.fail_after(5):  # the proof reaches the honest node
                await wait_until(lambda: author in scene.honest.node.board().board.forked)
            for node in (scene.victim, scene.honest):
                assert "first version" not in titles(node.node.board())
                assert "second version" not in titles(node.node.board())
                assert node.node.board().board.version_vector()[author] == 1
            await scene.check_honest()
            assert scene.honest.node.store._db.held_hashes(scene.board_id, author, 2, 2) == {}


# ---------------------------------------------------------------------- floods


async def test_flood_of_authenticated_connections_is_capped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forty fresh identities connect one after the other and stay: the node never
    holds more than max_connections peers, turns the rest away (at accept, or with
    Close('full') after the handshake), and keeps the honest link. (They send no
    Hello; the hello timeout, which would close them, is lengthened here: see
    test_transport_attacks.py for it.)"""
    monkeypatch.setattr(p2paid.core.connection, "HELLO_TIMEOUT", 60.0)
    cap = 4
    peers: list[HandPeer] = []
    refused = 0
    most = 0
    with trio.fail_after(30):
        async with open_scene(tmp_path, max_connections=cap) as scene:
            try:
                for _ in range(40):
                    try:
                        peers.append(await HandPeer.connect(scene.victim.address))
                    except (PeerClosed, trio.BrokenResourceError, OSError):
                        refused += 1
                    await trio.sleep(0.01)
                    most = max(most, len(scene.victim.node.peers()))
                assert most <= cap
                kept = 0
                for p in peers:
                    with trio.move_on_after(0.3):
                        await p.wait_closed()
                        refused += 1
                        continue
                    kept += 1
                assert kept == cap - 1 and refused == 40 - kept
                assert len(scene.victim.node.peers()) == cap
                await scene.check_honest()
            finally:
                for p in peers:
                    await p.aclose()


def _open_raw_sockets(address: tuple[str, int], count: int,
                      first_bytes: bytes = b"") -> list[socket.socket]:
    out = []
    for _ in range(count):
        s = socket.create_connection(address, timeout=2)
        if first_bytes:
            s.sendall(first_bytes)
        s.setblocking(False)
        out.append(s)
    return out


def _still_open(sockets: list[socket.socket]) -> int:
    """How many of our sockets the node has not closed yet."""
    n = 0
    for s in sockets:
        try:
            if s.recv(65536):
                n += 1
        except BlockingIOError:
            n += 1
        except OSError:
            pass
    return n


async def test_flood_of_unauthenticated_connections_is_capped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """200 sockets that connect and never finish the handshake (default 10 s timeout):
    the node must not keep them all (at most 2 x max_connections), else any client can
    pin sockets and tasks without ever authenticating."""
    monkeypatch.setattr(p2paid.core.connection, "HANDSHAKE_TIMEOUT", 10.0)
    cap = 4
    with trio.fail_after(20):
        async with open_scene(tmp_path, max_connections=cap) as scene:
            sockets = _open_raw_sockets(scene.victim.address, 200)
            try:
                await trio.sleep(0.5)
                held = _still_open(sockets)
                assert held <= 2 * cap, f"the node holds {held} unauthenticated connections"
            finally:
                for s in sockets:
                    s.close()
            await scene.check_honest()


async def test_running_out_of_file_descriptors_does_not_kill_the_node(tmp_path: Path) -> None:
    """A connection flood that exhausts the process's file descriptors makes accept()
    fail with EMFILE: the node must ride it out (refuse, back off) and keep serving,
    not crash."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    sockets: list[socket.socket] = []
    with trio.fail_after(20):
        async with open_scene(tmp_path) as scene:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE,
                                   (len(os.listdir("/proc/self/fd")) + 100, hard))
                with contextlib.suppress(OSError):
                    for _ in range(400):
                        s = socket.socket()
                        sockets.append(s)
                        s.setblocking(False)
                        with contextlib.suppress(BlockingIOError):
                            s.connect(scene.victim.address)
                await trio.sleep(0.5)  # the node's accept() meets EMFILE meanwhile
            finally:
                for s in sockets:
                    s.close()
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            await trio.sleep(0.2)
            await scene.check_honest()
            # And it still accepts new peers.
            late = await HandPeer.connect(scene.victim.address)
            await wait_until(lambda: len(scene.attacker_ids()) == 1)
            await late.aclose()


async def test_many_half_sent_handshake_frames_keep_memory_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """300 connections each send a 64 KiB handshake frame minus its last byte and
    wait: the node may buffer a few of them, but its memory must not grow with the
    number of such connections (bound: 8 MiB for what would be 19 MiB of buffers)."""
    monkeypatch.setattr(p2paid.core.connection, "HANDSHAKE_TIMEOUT", 10.0)
    almost = b"\xff\xff" + bytes(65534)
    with trio.fail_after(30):
        async with open_scene(tmp_path, max_connections=8) as scene:
            before = rss_bytes()
            sockets: list[socket.socket] = []
            try:
                for _ in range(300):
                    sockets += _open_raw_sockets(scene.victim.address, 1, almost)
                    if len(sockets) % 20 == 0:
                        await trio.sleep(0)
                await trio.sleep(0.5)
                growth = rss_bytes() - before
                assert growth < 8 << 20, f"RSS grew by {growth / 2**20:.1f} MiB"
            finally:
                for s in sockets:
                    s.close()
            await scene.check_honest()


def _has_item(board: AsyncBoard, item_id: str) -> bool:
    return item_id in {i.id for i in board.items()}


#: A Pong as the node sends it: its own frame (length, tag) around u32 length || msgpack.
PONG_FRAME_BYTES = 2 + 16 + 4 + len(encode_message(Pong(7)))


async def _drain(peer: HandPeer, counter: list[int]) -> None:
    """Read and discard what the node sends; count the bytes."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        while data := await peer.stream.receive_some(1 << 20):
            counter[0] += len(data)


async def test_ping_flood_keeps_the_honest_peer_served_and_memory_bounded(
    tmp_path: Path,
) -> None:
    """An authenticated peer floods the node with Pings (9,000 per 64 KiB frame, as
    fast as the node takes them) while draining the Pongs: the node answers no more
    than its ping allowance and drops the flooder; the honest peer still gets each new
    post within a second, and the node's memory grows by less than 32 MiB."""
    ping = _message(encode_message(Ping(7)))
    block = ping * ((65535 - 16) // len(ping))
    with trio.fail_after(40):
        async with open_scene(tmp_path) as scene, trio.open_nursery() as nursery:
            peer = await HandPeer.connect(scene.victim.address)
            drained = [0]
            nursery.start_soon(_drain, peer, drained)
            before = rss_bytes()
            peak = before
            stop = trio.Event()
            sent = 0

            async def flood() -> None:
                nonlocal sent
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    while not stop.is_set():
                        data = peer.frame_plaintext(block * 4)
                        await peer.stream.send_all(data)
                        sent += len(data)

            nursery.start_soon(flood)
            latencies = []
            for k in range(5):
                await trio.sleep(0.3)
                started = trio.current_time()
                item = await scene.victim.node.board().post_need(f"during the flood {k}")
                with trio.fail_after(5):
                    await wait_until(partial(_has_item, scene.honest.node.board(), item.id))
                latencies.append(trio.current_time() - started)
                peak = max(peak, rss_bytes())
            stop.set()
            await peer.aclose()
            nursery.cancel_scope.cancel()
        pongs = drained[0] // PONG_FRAME_BYTES
        assert pongs >= 1, "the flood did not get going (no pong came back)"
        # (byte count / pong size: the Hello, Vector and Close frames add a few)
        assert pongs <= MAX_PINGS + 10, f"the node answered {pongs} pings of a flood"
        assert max(latencies) < 1.0, f"honest sync latencies under flood: {latencies}"
        assert peak - before < 32 << 20, f"RSS grew by {(peak - before) / 2**20:.1f} MiB"

