"""Helpers for the relay tests: run a relay (in this process or as ``p2paid relay`` in a
subprocess) and drive lightweight relay clients over real TCP on 127.0.0.1.

A :class:`RelayClient` is what a node does when it dials a relay, minus the node: a
:class:`~p2paid.core.wire.SecureChannel` and a :class:`~p2paid.core.replication.SyncSession`
(``to_relay=True``) over an in-memory replica (``tests/replication_helpers.py``). It
records every message, every batch it sent and every Ack it got, and can inject
hand-made Envelopes batches (forgeries) that its own session never sees.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from replication_helpers import MemoryReplica

from p2paid.core.identity import NodeKey
from p2paid.core.relayaddr import RelayAddress
from p2paid.core.replication import DEFAULT_BATCH_BYTES, DEFAULT_WINDOW, SyncSession
from p2paid.core.wire import (
    NEED_DATA,
    Ack,
    Close,
    ConnectionClosed,
    Envelopes,
    HandshakeComplete,
    Hello,
    Message,
    MessageReceived,
    Ping,
    Pong,
    Refused,
    SecureChannel,
)
from p2paid.errors import RemoteProtocolError
from p2paid.relay.replica import RelayLimits
from p2paid.relay.server import Relay, RelayOptions, serve_relay

__all__ = [
    "LOCALHOST",
    "RelayClient",
    "RelayClosed",
    "RelayProcess",
    "RunningRelay",
    "free_port",
    "open_client",
    "poll",
    "start_relay",
]

LOCALHOST = "127.0.0.1"
_RECEIVE = 256 * 1024
#: Batch numbers used for injected batches (the session's own count from 0).
INJECT_BASE = 1_000_000


async def poll(predicate: Callable[[], bool], interval: float = 0.01) -> None:
    """Wait until ``predicate()`` holds (callers bound this with ``fail_after``)."""
    while not predicate():
        await trio.sleep(interval)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind((LOCALHOST, 0))
        port: int = s.getsockname()[1]
        return port


# ---------------------------------------------------------------------- in-process relay


@dataclass
class RunningRelay:
    """A relay served in the test's nursery until :meth:`stop`."""

    relay: Relay
    data_dir: Path
    _scope: trio.CancelScope
    _done: trio.Event

    @property
    def address(self) -> str:
        """Its ``p2paid-relay://`` address."""
        return str(self.relay.address())

    @property
    def hostport(self) -> tuple[str, int]:
        assert self.relay.listen_address is not None
        return self.relay.listen_address

    @property
    def key(self) -> bytes:
        return self.relay.node_key.public

    async def stop(self) -> None:
        """Cancel the relay (its connections end, its store closes)."""
        self._scope.cancel()
        await self._done.wait()


async def _run_relay(data_dir: Path, options: RelayOptions,
                     task_status: trio.TaskStatus[RunningRelay] = trio.TASK_STATUS_IGNORED
                     ) -> None:
    done = trio.Event()
    try:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                relay: Relay = await nursery.start(serve_relay, data_dir, options)
                task_status.started(RunningRelay(relay, data_dir, scope, done))
    finally:
        done.set()


async def start_relay(nursery: trio.Nursery, data_dir: Path, *,
                      limits: RelayLimits | None = None,
                      metrics: tuple[str, int] | None = None) -> RunningRelay:
    """Serve a relay on 127.0.0.1, port 0; returns once it listens."""
    options = RelayOptions(listen=(LOCALHOST, 0), metrics=metrics,
                           limits=limits or RelayLimits())
    running: RunningRelay = await nursery.start(_run_relay, data_dir, options)
    return running


# ---------------------------------------------------------------------- subprocess relay


_LEVELS_MAIN = (
    "import logging, sys\n"
    "logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s %(message)s')\n"
    "from p2paid.cli.main import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


class RelayProcess:
    """``python -m p2paid --data-dir DIR relay --listen 127.0.0.1:PORT ...`` as a child.

    stdout and stderr go to files in ``log_dir`` (no pipe can fill up and stall it).
    """

    def __init__(self, data_dir: Path, log_dir: Path, *, port: int = 0,
                 extra: Sequence[str] = (), levels: bool = False) -> None:
        self.data_dir = data_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        stamp = f"{time.monotonic_ns()}"
        self.stdout_path = log_dir / f"relay-{stamp}.out"
        self.stderr_path = log_dir / f"relay-{stamp}.err"
        self._out = open(self.stdout_path, "wb")  # noqa: SIM115 (closed in wait())
        self._err = open(self.stderr_path, "wb")  # noqa: SIM115
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # ``levels``: the same CLI, with the log level in every line (the CLI's own log
        # format has none) so that a test can tell warnings from information.
        launcher = ["-c", _LEVELS_MAIN] if levels else ["-m", "p2paid"]
        self.proc = subprocess.Popen(
            [sys.executable, *launcher, "--data-dir", str(data_dir), "relay",
             "--listen", f"{LOCALHOST}:{port}", *extra],
            stdout=self._out, stderr=self._err, stdin=subprocess.DEVNULL, env=env,
        )
        self.address: RelayAddress | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def hostport(self) -> tuple[str, int]:
        assert self.address is not None
        return self.address.host, self.address.port

    async def wait_address(self, timeout: float = 20) -> RelayAddress:
        """Wait for the printed ``relay address: ...`` line."""
        with trio.fail_after(timeout):
            while True:
                text = self.stdout_path.read_text(errors="replace")
                found = re.search(r"relay address: (\S+)", text)
                if found:
                    self.address = RelayAddress.parse(found.group(1))
                    return self.address
                if self.proc.poll() is not None:
                    raise AssertionError(
                        f"relay exited with {self.proc.returncode}: {self.stderr()}")
                await trio.sleep(0.02)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def _status_kib(self, field_name: str) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
        raise AssertionError(f"no {field_name} for pid {self.pid}")

    def rss(self) -> int:
        """Resident set size now, in bytes."""
        return self._status_kib("VmRSS") * 1024

    def peak_rss(self) -> int:
        """Highest resident set size so far, in bytes."""
        return self._status_kib("VmHWM") * 1024

    def kill(self) -> None:
        """SIGKILL: no cleanup at all (as a power cut, for the process)."""
        self.proc.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        """SIGTERM: the relay stops cleanly."""
        self.proc.send_signal(signal.SIGTERM)

    async def wait(self, timeout: float = 15) -> int:
        with trio.fail_after(timeout):
            while self.proc.poll() is None:
                await trio.sleep(0.02)
        self._out.close()
        self._err.close()
        return self.proc.returncode

    async def stop(self) -> None:
        """Make sure the child is gone (used in ``finally``)."""
        if self.proc.poll() is None:
            self.kill()
        with trio.CancelScope(shield=True):
            await self.wait()


# ---------------------------------------------------------------------- client


class RelayClosed(Exception):
    """The relay closed the connection before the handshake completed."""


@dataclass(eq=False)
class RelayClient:
    """One client connection to a relay, with its own session over ``replica``."""

    stream: trio.SocketStream
    channel: SecureChannel
    replica: MemoryReplica
    session: SyncSession
    name: str = ""
    #: every message received, in order
    received: list[Message] = field(default_factory=list)
    #: ``(board_id, batch) -> envelopes`` of every batch sent (session's and injected)
    sent_batches: dict[tuple[bytes, int], tuple[bytes, ...]] = field(default_factory=dict)
    #: ``(board_id, batch)`` of every Ack, in arrival order
    acked: list[tuple[bytes, int]] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    close_reason: str | None = None
    #: why the client itself stopped (the relay broke the protocol, say)
    error: BaseException | None = None
    closed: trio.Event = field(default_factory=trio.Event)
    hello: Hello | None = None
    relay_hello: Hello | None = None
    pongs: set[int] = field(default_factory=set)
    #: called with every message received, before it is handled
    on_message: Callable[[Message], None] | None = None
    _injected: set[int] = field(default_factory=set)
    _next_inject: int = INJECT_BASE
    _lock: trio.Lock = field(default_factory=trio.Lock)

    # ------------------------------------------------------------ connecting

    @classmethod
    async def connect(
        cls,
        address: tuple[str, int],
        replica: MemoryReplica,
        *,
        key: NodeKey | None = None,
        expected_remote: bytes | None = None,
        boards: Sequence[bytes] | None = None,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
        window: int = DEFAULT_WINDOW,
        name: str = "",
        local_address: str | None = None,
        token: bytes | None = None,
    ) -> RelayClient:
        """Dial, complete the Noise handshake as initiator and send the Hello.

        Args:
            local_address: the 127.x.y.z address to connect from (the relay caps
                connections per address).
            token: an access token for the Hello.

        Raises:
            RemoteProtocolError: the handshake failed (wrong key, say).
            OSError / trio.BrokenResourceError: the relay closed the connection.
        """
        stream = await trio.open_tcp_stream(*address, local_address=local_address)
        try:
            channel = SecureChannel(True, (key or NodeKey.generate()).private,
                                    expected_remote=expected_remote)
            while True:
                await stream.send_all(channel.data_to_send())
                event = channel.next_event()
                if isinstance(event, HandshakeComplete):
                    break
                if isinstance(event, ConnectionClosed):
                    raise RelayClosed("the relay closed the connection during the handshake")
                assert event is NEED_DATA, event
                data = await stream.receive_some(65536)
                channel.receive_data(data)  # b"" (closed) raises RemoteProtocolError
            assert channel.handshake_hash is not None
            session = SyncSession(replica, initiator=True,
                                  handshake_hash=channel.handshake_hash, to_relay=True,
                                  boards=boards, batch_bytes=batch_bytes, window=window)
            client = cls(stream, channel, replica, session, name)
            hello = [dataclasses.replace(m, token=token) if isinstance(m, Hello) else m
                     for m in session.start()]
            await client.send(hello)  # with the third handshake message
        except BaseException:
            with trio.CancelScope(shield=True):
                await stream.aclose()
            raise
        return client

    # ------------------------------------------------------------ state

    def _board_of(self, hello: Hello | None, index: int) -> bytes:
        assert hello is not None
        return hello.boards[index].key

    def _index_of(self, board_id: bytes) -> int:
        assert self.hello is not None
        for i, entry in enumerate(self.hello.boards):
            if entry.key == board_id:
                return i
        raise KeyError(board_id.hex())

    def acked_envelopes(self, *, injected: bool = False) -> set[bytes]:
        """Every envelope of every batch the relay acknowledged (session batches only,
        unless ``injected``)."""
        out: set[bytes] = set()
        for key in self.acked:
            if key[1] >= INJECT_BASE and not injected:
                continue
            out.update(self.sent_batches.get(key, ()))
        return out

    def envelopes_received(self) -> list[bytes]:
        return [raw for m in self.received if isinstance(m, Envelopes) for raw in m.envelopes]

    def holds(self, board_id: bytes) -> set[bytes]:
        """Raw envelopes this client's replica holds for ``board_id``."""
        return {raw for feed in self.replica.feeds(board_id).values() for raw in feed}

    def in_sync(self, board_id: bytes) -> bool:
        """Nothing in flight and the relay holds (or was sent) all we hold."""
        return self.session.is_in_sync(board_id)

    @property
    def is_closed(self) -> bool:
        return self.closed.is_set()

    # ------------------------------------------------------------ I/O

    async def send(self, messages: Iterable[Message]) -> None:
        messages = list(messages)
        if not messages or self.is_closed:
            return
        async with self._lock:
            for message in messages:
                if isinstance(message, Envelopes):
                    board_id = self._board_of(self.hello, message.board)
                    self.sent_batches[(board_id, message.batch)] = message.envelopes
                if isinstance(message, Hello):
                    self.hello = message
                self.channel.send(message)
            try:
                await self.stream.send_all(self.channel.data_to_send())
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.closed.set()

    async def push(self, board_id: bytes) -> None:
        """The replica grew (the test wrote to it): send the relay what it lacks."""
        await self.send(self.session.local_changed(board_id))

    async def inject(self, board_id: bytes, envelopes: Sequence[bytes]) -> int:
        """Send a hand-made Envelopes batch the session knows nothing of; its number."""
        batch = self._next_inject
        self._next_inject += 1
        self._injected.add(batch)
        await self.send([Envelopes(self._index_of(board_id), batch, tuple(envelopes))])
        return batch

    async def ping(self, nonce: int) -> None:
        await self.send([Ping(nonce)])

    async def run(self) -> None:
        """Read and answer until the relay closes (run in a nursery)."""
        try:
            while True:
                try:
                    data = await self.stream.receive_some(_RECEIVE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                try:
                    self.channel.receive_data(data)
                except RemoteProtocolError:
                    data = b""  # cut mid-frame: closed all the same
                while True:
                    event = self.channel.next_event()
                    if event is NEED_DATA or isinstance(event, ConnectionClosed):
                        break
                    assert isinstance(event, MessageReceived)
                    await self._handle(event.message)
                if not data or self.error is not None:
                    return
        finally:
            self.closed.set()

    async def _handle(self, message: Message) -> None:
        self.received.append(message)
        if self.on_message is not None:
            self.on_message(message)
        if isinstance(message, Hello):
            self.relay_hello = message
        elif isinstance(message, Close):
            self.close_reason = message.reason
        elif isinstance(message, Refused):
            self.refused.append(message)
        elif isinstance(message, Pong):
            self.pongs.add(message.nonce)
        elif isinstance(message, Ack):
            key = (self._board_of(self.relay_hello, message.board), message.batch)
            self.acked.append(key)
            if message.batch in self._injected:
                return  # the session never sent it
        try:
            replies = self.session.handle(message)
        except RemoteProtocolError as exc:
            self.error = exc
            return
        await self.send(replies)

    async def aclose(self) -> None:
        """Say goodbye and close the stream."""
        with trio.move_on_after(1) as scope:
            scope.shield = True
            if not self.is_closed:
                with contextlib.suppress(Exception):  # already gone
                    await self.send([Close("bye")])
            await self.stream.aclose()


async def open_client(nursery: trio.Nursery, address: tuple[str, int],
                      replica: MemoryReplica, **kwargs: Any) -> RelayClient:
    """:meth:`RelayClient.connect`, then run its reader in ``nursery``."""
    client = await RelayClient.connect(address, replica, **kwargs)
    nursery.start_soon(client.run)
    return client
