"""Finding 7: memory from msgpack. A real node and a real relay, each in its own
process (``p2paid run`` / ``p2paid relay``), are flooded from 40 concurrent
authenticated connections with 1 MiB messages built to make a general msgpack
decoder allocate: a 100,000-entry map, and bodies shaped like Envelopes / Vector
messages whose arrays declare 100,000 entries. Each attacker has sent a valid
Hello first (for the node it is a member: it knows the board's tag key), so the
messages reach the decoder. Every such connection is dropped, the attackers
reconnect and repeat, and the process's peak resident memory must stay within
FLOOD_RSS_BOUND of what it used before the flood (SPEC 11.2; before the strict
decoder it grew from about 270 MiB to 1.2-1.4 GiB, and stayed).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest
import trio
from attack_helpers import NoiseClient, spread_addresses
from relay_helpers import LOCALHOST, RelayProcess, free_port
from replication_helpers import MemoryReplica

from p2paid.board.store import open_store
from p2paid.core.invite import derive_board_keys
from p2paid.core.replication import SyncSession
from p2paid.core.wire import Hello, HelloBoard

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::ResourceWarning")]

MIB = 1024 * 1024
#: The bound SPEC 11.2 and the README name: growth of peak RSS under this flood. One
#: connection can make a process hold about 1.3 MiB (a partial message of at most
#: 1 MiB, one 64 KiB read, one partial frame); 40 of them about 52 MiB.
FLOOD_RSS_BOUND = 80 * MIB
CONNECTIONS = 40
FLOOD_SECONDS = 4.0
ENTRIES = 100_000


def _bodies() -> list[bytes]:
    """1 MiB message bodies that a general decoder would expand, or that are valid
    until their last byte (so that the receiver must buffer all of it)."""
    flood_map = msgpack.packb({f"{i:07}": i for i in range(ENTRIES)})
    # [3, board, batch, array32(100000) of 1-byte bins...]: an Envelopes message whose
    # array declares ten times its limit; [2, board, array32(100000) of pairs]: a Vector.
    envelopes = b"\x94\x03\x00\x00\xdd" + ENTRIES.to_bytes(4, "big") + b"\xc4\x01x" * ENTRIES
    vector = b"\x93\x02\x00\xdd" + ENTRIES.to_bytes(4, "big") + (
        b"\x92\xc4\x20" + bytes(32) + b"\x01") * (ENTRIES // 10)
    # 10,000 envelopes of 100 bytes as the schema allows, and then the reserved byte.
    almost = b"\x94\x03\x00\x00\xdc\x27\x10" + (b"\xc4\x64" + bytes(100)) * 9999
    out = []
    for body in (flood_map, envelopes, vector, almost):
        body = body[: MIB - 1]
        out.append(body + bytes(MIB - 1 - len(body)) + b"\xc1")  # exactly 1 MiB
    return out


async def _attacker(address: tuple[str, int], local: str, make_hello: Callable[[bytes], Hello],
                    stream_data: list[bytes], until: float, counter: list[int]) -> None:
    k = 0
    while trio.current_time() < until:
        client = await NoiseClient.connect(address, local)
        if client is None:
            await trio.sleep(0.05)
            continue
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.run)
            assert client.channel.handshake_hash is not None
            await client.send(make_hello(client.channel.handshake_hash))
            data = stream_data[k % len(stream_data)]
            await client.send_raw(client.frame_plaintext(len(data).to_bytes(4, "big") + data))
            k += 1
            counter[0] += 1
            with trio.move_on_after(5):
                await client.closed.wait()
            await client.aclose()
            nursery.cancel_scope.cancel()


async def _flood(address: tuple[str, int], make_hello: Callable[[bytes], Hello]) -> int:
    bodies = _bodies()
    until = trio.current_time() + FLOOD_SECONDS
    counter = [0]
    async with trio.open_nursery() as nursery:
        for local in spread_addresses(CONNECTIONS, 4):
            nursery.start_soon(_attacker, address, local, make_hello, bodies, until, counter)
    return counter[0]


def _status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(field)


class NodeProcess:
    """``p2paid run --no-mdns --listen 127.0.0.1:PORT`` as a child process."""

    def __init__(self, data_dir: Path, log_dir: Path) -> None:
        self.port = free_port()
        log_dir.mkdir(parents=True, exist_ok=True)
        self.stderr_path = log_dir / "node.err"
        self._err = open(self.stderr_path, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "p2paid", "--data-dir", str(data_dir), "run", "--no-mdns",
             "--listen", f"{LOCALHOST}:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=self._err, stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})

    async def wait_listening(self) -> None:
        with trio.fail_after(20):
            while not re.search(r"listening on", self.stderr_path.read_text(errors="replace")):
                assert self.proc.poll() is None, self.stderr_path.read_text()
                await trio.sleep(0.05)

    async def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            while self.proc.poll() is None:
                await trio.sleep(0.05)
        self._err.close()


async def _measure(pid: int, flood: Callable[[], object]) -> tuple[int, int, int]:
    await trio.sleep(1.0)  # settled after start-up
    before = _status_kib(pid, "VmRSS") * 1024
    peak_before = _status_kib(pid, "VmHWM") * 1024
    sent = await flood()  # type: ignore[misc]
    peak = _status_kib(pid, "VmHWM") * 1024
    return before, max(peak, peak_before) - before, sent


async def test_a_node_process_under_a_msgpack_flood_stays_within_the_rss_bound(
        tmp_path: Path) -> None:
    with open_store(tmp_path / "node") as store:
        board = store.create_board("Camp")
        for i in range(50):
            board.post_need(f"need {i}")
        keys = board.keys
    node = NodeProcess(tmp_path / "node", tmp_path / "logs")
    try:
        await node.wait_listening()

        def member_hello(h: bytes) -> Hello:
            replica = MemoryReplica("node")
            replica.add_board(derive_board_keys(keys.secret))
            (hello,) = SyncSession(replica, initiator=True, handshake_hash=h).start()
            assert isinstance(hello, Hello)
            return hello

        with trio.fail_after(60):
            before, growth, sent = await _measure(
                node.proc.pid, lambda: _flood((LOCALHOST, node.port), member_hello))
        assert node.proc.poll() is None, "the node died under the flood"
    finally:
        await node.stop()
    print(f"node: RSS {before / MIB:.0f} MiB before, peak growth {growth / MIB:.1f} MiB "
          f"over {sent} flood messages")
    assert sent >= CONNECTIONS
    assert growth < FLOOD_RSS_BOUND, f"peak RSS grew by {growth / MIB:.0f} MiB"


async def test_a_relay_process_under_a_msgpack_flood_stays_within_the_rss_bound(
        tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path / "relay", tmp_path / "logs",
                         extra=["--rate-kib", "1048576"])
    try:
        address = await relay.wait_address()

        def relay_hello(h: bytes) -> Hello:
            return Hello(1, "node", True, (HelloBoard(os.urandom(32), bytes(16)),))

        with trio.fail_after(60):
            before, growth, sent = await _measure(
                relay.pid, lambda: _flood((address.host, address.port), relay_hello))
        assert relay.proc.poll() is None, "the relay died under the flood"
    finally:
        await relay.stop()
    print(f"relay: RSS {before / MIB:.0f} MiB before, peak growth {growth / MIB:.1f} MiB "
          f"over {sent} flood messages")
    assert sent >= CONNECTIONS
    assert growth < FLOOD_RSS_BOUND, f"peak RSS grew by {growth / MIB:.0f} MiB"


def test_flood_bodies_are_what_they_claim() -> None:
    """Each body is 1 MiB; the first is a 100,000-entry map (msgpack map32), the next
    two are arrays declaring 100,000 entries, the last is valid but for its last byte."""
    bodies = _bodies()
    assert [len(b) for b in bodies] == [MIB] * 4
    assert bodies[0][0] == 0xDF and int.from_bytes(bodies[0][1:5], "big") == ENTRIES
    assert int.from_bytes(bodies[1][5:9], "big") == ENTRIES
    assert int.from_bytes(bodies[2][4:8], "big") == ENTRIES
    with pytest.raises(ValueError):  # msgpack: the reserved byte 0xc1 at the very end
        msgpack.unpackb(bodies[3])
