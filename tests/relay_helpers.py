"""Helpers for the relay tests: run a relay (in this process or as ``p2paid relay`` in a
subprocess) and drive lightweight relay clients over real TCP on 127.0.0.1.

A :class:`RelayClient` is what a node does when it dials a relay, minus the node: the
library's :class:`~p2paid.core.connection.SyncConnection` (``to_relay=True``) over an
in-memory replica (``tests/replication_helpers.py``), driven by
:class:`~peer_helpers.StreamPeer`. It records every message, every batch it sent and
every Ack it got, and can inject hand-made Envelopes batches (forgeries) that its own
session never sees.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from peer_helpers import PeerClosed, StreamPeer
from replication_helpers import MemoryReplica

from p2paid.core.identity import NodeKey
from p2paid.core.relayaddr import RelayAddress
from p2paid.core.replication import DEFAULT_BATCH_BYTES, DEFAULT_WINDOW
from p2paid.core.wire import (
    Ack,
    Close,
    Envelopes,
    Hello,
    Message,
    Ping,
    Pong,
    Refused,
)
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


class RelayClient(StreamPeer):
    """One client connection to a relay, with its own session over ``replica``
    (:class:`~peer_helpers.StreamPeer`, with records of batches and answers)."""

    def __init__(self, stream: trio.SocketStream, key: NodeKey,
                 expected_remote: bytes | None = None) -> None:
        super().__init__(stream, key, expected_remote)
        self.name = ""
        #: ``(board_id, batch) -> envelopes`` of every batch sent (session's and injected)
        self.sent_batches: dict[tuple[bytes, int], tuple[bytes, ...]] = {}
        #: ``(board_id, batch)`` of every Ack, in arrival order
        self.acked: list[tuple[bytes, int]] = []
        self.refused: list[Refused] = []
        self.hello: Hello | None = None
        self.relay_hello: Hello | None = None
        self.pongs: set[int] = set()
        self._next_inject = INJECT_BASE

    def _tap(self, outgoing: bool, message: Message) -> None:
        if outgoing and isinstance(message, Hello):
            self.hello = message
        elif outgoing and isinstance(message, Envelopes):
            board_id = self._board_of(self.hello, message.board)
            self.sent_batches[(board_id, message.batch)] = message.envelopes
        elif not outgoing and isinstance(message, Hello):
            self.relay_hello = message
        elif not outgoing and isinstance(message, Refused):
            self.refused.append(message)
        elif not outgoing and isinstance(message, Pong):
            self.pongs.add(message.nonce)
        elif not outgoing and isinstance(message, Ack):
            self.acked.append((self._board_of(self.relay_hello, message.board), message.batch))
        super()._tap(outgoing, message)

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
            RelayClosed, OSError, trio.BrokenResourceError: the relay closed the
                connection.
        """
        try:
            client = await cls.open(address, key, expected_remote=expected_remote,
                                    local_address=local_address, replica=replica,
                                    to_relay=True, boards=boards, token=token,
                                    batch_bytes=batch_bytes, window=window)
        except PeerClosed as exc:
            raise RelayClosed("the relay closed the connection during the handshake") from exc
        client.name = name
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

    @property
    def replica(self) -> MemoryReplica:
        replica = super().replica
        assert isinstance(replica, MemoryReplica)
        return replica

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
        assert self.session is not None
        return self.session.is_in_sync(board_id)

    # ------------------------------------------------------------ I/O

    async def inject(self, board_id: bytes, envelopes: Sequence[bytes]) -> int:
        """Send a hand-made Envelopes batch the session knows nothing of; its number."""
        batch = self._next_inject
        self._next_inject += 1
        await self.send(Envelopes(self._index_of(board_id), batch, tuple(envelopes)))
        return batch

    async def ping(self, nonce: int) -> None:
        await self.send(Ping(nonce))

    async def aclose(self) -> None:
        """Say goodbye and close the stream."""
        with trio.move_on_after(1) as scope:
            scope.shield = True
            if not self.is_closed:
                with contextlib.suppress(Exception):  # already gone
                    await self.send(Close("bye"))
            await self.stream.aclose()


async def open_client(nursery: trio.Nursery, address: tuple[str, int],
                      replica: MemoryReplica, **kwargs: Any) -> RelayClient:
    """:meth:`RelayClient.connect`, then run its reader in ``nursery``."""
    client = await RelayClient.connect(address, replica, **kwargs)
    nursery.start_soon(client.run)
    return client
