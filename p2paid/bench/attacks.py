"""Transport attacks for ``p2paid bench --only attacks``: how long an honest initial
sync takes during each attack of issue 7, next to the same sync without it, in the
same run.

The victim (a node holding a board of N needs, or a relay holding them) and the
honest receiver (a member who synced before and now catches up N envelopes from
an empty board) run in their own processes, as does the attacker, so all three
compete for this machine's cores as they would on one small server. Attacks:

* ``silent``: throw-away identities that complete the Noise handshake and never
  send a Hello, re-established as fast as they are closed, at the victim's cap
  (64 on a node from 8 addresses; 528 on a relay from 17);
* ``maps``: 40 connections that send a Hello and then a 1 MiB message holding a
  100,000-entry map (members of the board, against a node), reconnecting;
* ``junk``: clients with fresh keys uploading validly signed junk envelopes for
  invented boards to the relay, until the quota stops them, then again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Final

import trio
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from p2paid.bench.child import Child
from p2paid.bench.main import Figure, Report, make_feed
from p2paid.board.store import open_store
from p2paid.core.codes import CloseReason, Role
from p2paid.core.envelope import ZERO_HASH, seal_envelope
from p2paid.core.feed import FeedHead
from p2paid.core.identity import AuthorKey, NodeKey
from p2paid.core.invite import Invite, derive_board_keys, new_board_secret
from p2paid.core.relayaddr import RelayAddress
from p2paid.core.replication import BoardAccess, Received, Replica, SyncEvent, board_tag
from p2paid.core.wire import HandshakeComplete, Hello, HelloBoard, Message, SecureChannel
from p2paid.errors import RemoteProtocolError
from p2paid.net.connection import Connection, run_connection
from p2paid.relay.replica import RelayLimits, RelayReplica
from p2paid.relay.server import open_relay_db, relay_key

__all__ = ["attacker_main", "run_attack_benchmarks"]

N: Final = 2000
#: Seconds the attacker runs before the honest sync starts (to reach the cap).
RAMP: Final = 3.0
SYNC_TIMEOUT: Final = 120.0



# ---------------------------------------------------------------------- the attacker


class _Stats:
    def __init__(self) -> None:
        self.connected = 0
        self.live = 0
        self.refused = 0


async def _handshake(address: tuple[str, int], local: str, stats: _Stats,
                     expected: bytes | None) -> tuple[trio.SocketStream, SecureChannel] | None:
    try:
        stream = await trio.open_tcp_stream(*address, local_address=local)
    except OSError:
        stats.refused += 1
        await trio.sleep(0.05)
        return None
    channel = SecureChannel(True, NodeKey.generate().private, expected_remote=expected)
    try:
        while True:
            await stream.send_all(channel.data_to_send())
            if isinstance(channel.next_event(), HandshakeComplete):
                await stream.send_all(channel.data_to_send())
                stats.connected += 1
                return stream, channel
            channel.receive_data(await stream.receive_some(65536))
    except (RemoteProtocolError, trio.BrokenResourceError, OSError):
        stats.refused += 1
        await stream.aclose()
        await trio.sleep(0.05)
        return None


async def _wait_closed(stream: trio.SocketStream, stats: _Stats) -> None:
    stats.live += 1
    try:
        while await stream.receive_some(65536):
            pass
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        stats.live -= 1
        await stream.aclose()


async def _silent(address: tuple[str, int], local: str, count: int, stats: _Stats,
                  options: dict[str, Any]) -> None:
    """``count`` connections from ``local`` that never say anything after the handshake."""
    expected = bytes.fromhex(options["key"]) if options.get("key") else None

    async def one() -> None:
        while True:
            got = await _handshake(address, local, stats, expected)
            if got is not None:
                await _wait_closed(got[0], stats)

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one)
            await trio.sleep(0.002)


def _frame_plaintext(channel: SecureChannel, plaintext: bytes) -> bytes:
    transport = channel._transport  # the attacker bypasses the message encoder on purpose
    assert transport is not None
    out = bytearray()
    for start in range(0, len(plaintext), 65535 - 16):
        ct = transport.encrypt(plaintext[start : start + 65535 - 16])
        out += len(ct).to_bytes(2, "big") + ct
    return bytes(out)


async def _maps(address: tuple[str, int], local: str, count: int, stats: _Stats,
                options: dict[str, Any]) -> None:
    """Hello (as a member, if given the board secret), then a 1 MiB map, again and again."""
    import msgpack

    body = msgpack.packb({f"{i:07}": i for i in range(100_000)})[: 1024 * 1024]
    message = len(body).to_bytes(4, "big") + body
    secret = bytes.fromhex(options["secret"]) if options.get("secret") else None
    expected = bytes.fromhex(options["key"]) if options.get("key") else None

    def hello(h: bytes) -> Hello:
        if secret is None:
            return Hello(1, "node", True, (HelloBoard(os.urandom(32), bytes(16)),))
        tag = board_tag(derive_board_keys(secret).tag_key, True, h)
        return Hello(1, "node", False, (HelloBoard(tag, bytes(16)),))

    async def one() -> None:
        while True:
            got = await _handshake(address, local, stats, expected)
            if got is None:
                continue
            stream, channel = got
            assert channel.handshake_hash is not None
            channel.send(hello(channel.handshake_hash))
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(channel.data_to_send()
                                      + _frame_plaintext(channel, message))
            await _wait_closed(stream, stats)

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one)


class _JunkReplica:
    """An uploader's replica: junk boards with one fresh author each."""

    role = Role.NODE

    def __init__(self, boards: int, envelopes: int, size: int) -> None:
        self.feeds: dict[bytes, tuple[bytes, list[bytes]]] = {}
        for _ in range(boards):
            keys = derive_board_keys(os.urandom(32))
            author = AuthorKey.generate()
            cipher = ChaCha20Poly1305(keys.content_key)
            prev, feed = ZERO_HASH, []
            for seq in range(1, envelopes + 1):
                env = seal_envelope(board_id=keys.board_id, cipher=cipher, author_key=author,
                                    seq=seq, prev=prev, change=os.urandom(size))
                prev = env.hash
                feed.append(env.raw)
            self.feeds[keys.board_id] = (author.public, feed)

    def boards(self) -> list[BoardAccess]:
        return [BoardAccess(b, None) for b in self.feeds]

    def accepts(self, board_id: bytes) -> tuple[str, str] | None:
        return None

    def vector(self, board_id: bytes) -> dict[bytes, int]:
        author, feed = self.feeds[board_id]
        return {author: len(feed)}

    def heads(self, board_id: bytes) -> dict[bytes, FeedHead]:
        author, feed = self.feeds[board_id]
        return {author: FeedHead(len(feed), hashlib.sha256(feed[-1]).digest())}

    def hash_at(self, board_id: bytes, author: bytes, seq: int) -> bytes | None:
        feed = self.feeds[board_id][1]
        return hashlib.sha256(feed[seq - 1]).digest() if 0 < seq <= len(feed) else None

    def forked(self, board_id: bytes) -> dict[bytes, int]:
        return {}

    def fork_evidence(self, board_id: bytes, author: bytes) -> tuple[bytes, bytes] | None:
        return None

    def record_fork(self, board_id: bytes, first: bytes, second: bytes) -> bool:
        return False

    def read(self, board_id: bytes, author: bytes, after: int, max_bytes: int) -> list[bytes]:
        feed = self.feeds[board_id][1]
        out: list[bytes] = []
        size = 0
        for raw in feed[after:]:
            if out and size + len(raw) > max_bytes:
                break
            out.append(raw)
            size += len(raw)
        return out

    def receive(self, board_id: bytes, envelopes: Any) -> Received:
        return Received()


class _Uploader:
    """The :class:`~p2paid.net.connection.ConnectionHost` of one junk uploader: it hangs
    up once the relay holds (or refused) everything."""

    def __init__(self, replica: _JunkReplica, stats: _Stats) -> None:
        self.node_key = NodeKey.generate()
        self.replica = replica
        self.stats = stats

    def replica_for(self, conn: Connection) -> Replica:
        return self.replica

    def on_hello(self, conn: Connection, hello: Hello) -> list[Message] | None:
        return []

    def register(self, conn: Connection) -> bool:
        self.stats.connected += 1
        self.stats.live += 1
        return True

    def unregister(self, conn: Connection) -> None:
        self.stats.live -= 1

    def after_receive(self, conn: Connection) -> None:
        session = conn.session
        if session is not None and session.greeted and all(
                session.is_in_sync(b) for b in self.replica.feeds):
            conn.close(CloseReason.BYE)

    def on_sync_event(self, conn: Connection, event: SyncEvent) -> None:
        pass


async def _junk(address: tuple[str, int], local: str, count: int, stats: _Stats,
                options: dict[str, Any]) -> None:
    """Upload junk boards with a fresh key until the relay refuses or takes them all."""
    expected = bytes.fromhex(options["key"])

    async def one() -> None:
        while True:
            host = _Uploader(_JunkReplica(4, 16, 2000), stats)
            try:
                stream = await trio.open_tcp_stream(*address, local_address=local)
            except OSError:
                stats.refused += 1
                await trio.sleep(0.05)
                continue
            with trio.move_on_after(10):
                conn = await run_connection(host, stream, address=f"{address[0]}:{address[1]}",
                                            initiator=True, expected_remote=expected,
                                            to_relay=True)
                if conn is None:
                    stats.refused += 1
                    await trio.sleep(0.05)

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one)


_ATTACKS: Final = {"silent": _silent, "maps": _maps, "junk": _junk}


def attacker_main(argv: list[str]) -> None:
    """``KIND HOST PORT OPTIONS_JSON``: attack until stdin closes; ``stats`` on stdin
    prints what the attacker holds."""
    kind, host, port, raw = argv
    trio.run(_attack, kind, (host, int(port)), json.loads(raw))


async def _attack(kind: str, address: tuple[str, int], options: dict[str, Any]) -> None:
    stats = _Stats()
    run = _ATTACKS[kind]
    per_address = int(options["per_address"])
    count = int(options["count"])
    async with trio.open_nursery() as nursery:
        for i in range(0, count, per_address):
            local = f"127.0.{10 + i // per_address}.1"
            nursery.start_soon(run, address, local, min(per_address, count - i), stats, options)
        while True:
            line = await trio.to_thread.run_sync(sys.stdin.readline)
            if not line:
                nursery.cancel_scope.cancel()
                return
            print(json.dumps({"connected": stats.connected, "live": stats.live,
                              "refused": stats.refused}), flush=True)


# ---------------------------------------------------------------------- the benchmark


def _receivers(root: Path, invite: Invite, count: int, relay: str | None
               ) -> list[tuple[Path, bytes]]:
    """Fresh member data dirs (empty board) and their node ids."""
    out = []
    for i in range(count):
        data_dir = root / f"receiver-{i}"
        with open_store(data_dir) as store:
            store.join(invite)
            if relay is not None:
                store.add_relay(relay)
            out.append((data_dir, store.node_key.public))
    return out


def _sync(data_dir: Path, peer: str) -> float | None:
    child = Child("attack_receiver", str(data_dir), peer, str(N), str(SYNC_TIMEOUT), quiet=True)
    result = child.read()
    child.proc.wait(timeout=30)
    value = result["applied_s"]
    return None if value is None else float(value)


def _under(kind: str | None, address: tuple[str, int], options: dict[str, Any],
           data_dir: Path, peer: str) -> tuple[float | None, dict[str, Any]]:
    if kind is None:
        return _sync(data_dir, peer), {}
    attacker = subprocess.Popen([sys.executable, "-m", "p2paid.bench.attacker", kind,
                                 *map(str, address), json.dumps(options)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
    assert attacker.stdin is not None and attacker.stdout is not None
    try:
        time.sleep(RAMP)
        attacker.stdin.write("stats\n")
        attacker.stdin.flush()
        stats: dict[str, Any] = json.loads(attacker.stdout.readline())
        took = _sync(data_dir, peer)
    finally:
        attacker.stdin.close()
        attacker.wait(timeout=30)
    time.sleep(1.0)  # the victim sees the attacker's sockets close
    return took, stats


def _figure(report: Report, label: str, took: float | None, base: float | None,
            stats: dict[str, Any]) -> None:
    note = ""
    if stats:
        note = f"attacker held {stats['live']} connections ({stats['connected']} made)"
        if took is not None and base:
            note = f"{took / base:.1f} x undisturbed; " + note
    report.add(Figure(label, took if took is not None else float("nan"), "s", "",
                      note if took is not None else f"did not finish in {SYNC_TIMEOUT:.0f} s"))


def _node_attacks(report: Report, root: Path, secret: bytes, invite: Invite) -> None:
    keys = derive_board_keys(secret)
    sender_dir = root / "sender"
    feed = make_feed(keys, AuthorKey.generate(), N)
    receivers = _receivers(root / "node", invite, 3, None)
    with open_store(sender_dir) as store:
        store.join(invite).receive([e.raw for e in feed])
        book = store.peer_book()
        for _, node_id in receivers:  # members who synced with this node before
            book.add(node_id)
    sender = Child("sync_node", str(sender_dir), "-", "idle", quiet=True)
    port = int(sender.read()["port"])
    address = ("127.0.0.1", port)
    try:
        scenarios: list[tuple[str | None, dict[str, Any], str]] = [
            (None, {}, f"attacks: sync {N:,} needs node -> node, undisturbed"),
            ("silent", {"count": 64, "per_address": 8},
             "  ... 64 silent authenticated connections (cap)"),
            ("maps", {"count": 40, "per_address": 4, "secret": secret.hex()},
             "  ... 40 members flooding 1 MiB msgpack maps"),
        ]
        base = None
        for (kind, options, label), (data_dir, _) in zip(scenarios, receivers, strict=True):
            took, stats = _under(kind, address, options, data_dir, str(port))
            base = took if kind is None else base
            _figure(report, label, took, base, stats)
    finally:
        sender.stop()


def _relay_attacks(report: Report, root: Path, secret: bytes, invite: Invite) -> None:
    keys = derive_board_keys(secret)
    relay_dir = root / "relay"
    db = open_relay_db(relay_dir)
    try:
        key = relay_key(db).public
        replica = RelayReplica.open(db, RelayLimits())
        raws = [e.raw for e in make_feed(keys, AuthorKey.generate(), N)]
        for start in range(0, len(raws), 500):
            replica.receive(keys.board_id, raws[start : start + 500])
        port = _free_port()
        address = RelayAddress("127.0.0.1", port, key)
        receivers = _receivers(root / "via-relay", invite, 4, str(address))
        for _, node_id in receivers:  # members whose uploads the relay stored before
            replica.ledger.remember_client(node_id)
    finally:
        db.close()
    relay = subprocess.Popen([sys.executable, "-m", "p2paid", "--data-dir", str(relay_dir),
                              "relay", "--listen", f"127.0.0.1:{port}", "--public", "127.0.0.1"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert relay.stdout is not None
    if not relay.stdout.readline().startswith("relay address: "):
        raise RuntimeError("the relay did not start")
    try:
        target = ("127.0.0.1", port)
        scenarios: list[tuple[str | None, dict[str, Any], str]] = [
            (None, {}, f"attacks: catch up {N:,} needs from a relay, undisturbed"),
            ("silent", {"count": 528, "per_address": 32, "key": key.hex()},
             "  ... 528 silent authenticated connections (cap 512)"),
            ("maps", {"count": 40, "per_address": 4, "key": key.hex()},
             "  ... 40 connections flooding 1 MiB msgpack maps"),
            ("junk", {"count": 16, "per_address": 4, "key": key.hex()},
             "  ... 16 clients uploading junk boards, fresh keys"),
        ]
        base = None
        for (kind, options, label), (data_dir, _) in zip(scenarios, receivers, strict=True):
            took, stats = _under(kind, target, options, data_dir, "relay")
            base = took if kind is None else base
            _figure(report, label, took, base, stats)
    finally:
        relay.terminate()
        relay.wait(timeout=30)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def run_attack_benchmarks(report: Report, root: Path) -> None:
    """The ``attacks`` figures (issue 7)."""
    secret = new_board_secret()
    invite = Invite(secret, "bench")
    _node_attacks(report, root / "attacks-node", secret, invite)
    _relay_attacks(report, root / "attacks-relay", secret, invite)
