"""Transport attackers for the tests: many real Noise clients in this process.

Each :class:`NoiseClient` dials from a chosen 127.x.y.z address, completes a real
``Noise_XX`` handshake with a throw-away key (the library's own
:class:`~p2paid.core.wire.SecureChannel`), optionally sends a Hello or anything else,
and then records when the other side closes. They are cheap enough that hundreds
run in one test.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from p2paid.core.identity import NodeKey
from p2paid.core.wire import (
    NEED_DATA,
    Close,
    ConnectionClosed,
    HandshakeComplete,
    Message,
    MessageReceived,
    SecureChannel,
)
from p2paid.errors import RemoteProtocolError

__all__ = ["NoiseClient", "open_noise_clients", "spread_addresses"]


def spread_addresses(count: int, per_address: int, first: int = 10) -> list[str]:
    """``count`` local addresses, ``per_address`` uses of each: 127.0.N.1, ..."""
    return [f"127.0.{first + i // per_address}.1" for i in range(count)]


@dataclass(eq=False)
class NoiseClient:
    """One authenticated connection that does only what the test says."""

    stream: trio.SocketStream
    channel: SecureChannel
    local: str
    received: list[Message] = field(default_factory=list)
    closed: trio.Event = field(default_factory=trio.Event)
    close_reason: str | None = None
    #: trio.current_time() when the far side closed
    closed_at: float | None = None

    @classmethod
    async def connect(cls, address: tuple[str, int], local: str, *,
                      expected_remote: bytes | None = None) -> NoiseClient | None:
        """Dial from ``local`` and finish the handshake; None if the far side closed
        the socket first (refused at accept, say)."""
        try:
            stream = await trio.open_tcp_stream(*address, local_address=local)
        except OSError:
            return None
        channel = SecureChannel(True, NodeKey.generate().private,
                                expected_remote=expected_remote)
        try:
            while True:
                await stream.send_all(channel.data_to_send())
                event = channel.next_event()
                if isinstance(event, HandshakeComplete):
                    await stream.send_all(channel.data_to_send())  # the third message
                    return cls(stream, channel, local)
                assert event is NEED_DATA
                data = await stream.receive_some(65536)
                channel.receive_data(data)
        except (RemoteProtocolError, trio.BrokenResourceError, OSError):
            with trio.CancelScope(shield=True):
                await stream.aclose()
            return None

    @property
    def is_closed(self) -> bool:
        return self.closed.is_set()

    async def send(self, *messages: Message) -> None:
        for message in messages:
            self.channel.send(message)
        await self.send_raw(self.channel.data_to_send())

    async def send_raw(self, data: bytes) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.stream.send_all(data)

    def frame_plaintext(self, plaintext: bytes) -> bytes:
        """Encrypt arbitrary plaintext as transport frames (to send a crafted message
        stream inside valid Noise frames)."""
        transport = self.channel._transport  # test reaches in: no raw-plaintext API
        assert transport is not None
        out = bytearray()
        for start in range(0, len(plaintext), 65535 - 16):
            ct = transport.encrypt(plaintext[start : start + 65535 - 16])
            out += len(ct).to_bytes(2, "big") + ct
        return bytes(out)

    async def run(self) -> None:
        """Read (and keep) what arrives until the far side closes."""
        try:
            while True:
                try:
                    data = await self.stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                try:
                    self.channel.receive_data(data)
                    while (event := self.channel.next_event()) is not NEED_DATA:
                        if isinstance(event, ConnectionClosed):
                            break
                        assert isinstance(event, MessageReceived)
                        self.received.append(event.message)
                        if isinstance(event.message, Close):
                            self.close_reason = event.message.reason
                except RemoteProtocolError:
                    data = b""
                if not data:
                    return
        finally:
            self.closed_at = trio.current_time()
            self.closed.set()

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self.stream.aclose()


async def open_noise_clients(nursery: trio.Nursery, address: tuple[str, int],
                             locals_: Sequence[str], *, parallel: int = 8,
                             expected_remote: bytes | None = None) -> list[NoiseClient]:
    """Connect one client per entry of ``locals_`` (``parallel`` at a time, each
    address's handshakes one after the other); start their readers in ``nursery``.
    Clients refused before the handshake completed are left out."""
    clients: list[NoiseClient] = []
    by_address: dict[str, list[int]] = {}
    for i, local in enumerate(locals_):
        by_address.setdefault(local, []).append(i)
    limit = trio.CapacityLimiter(parallel)

    async def one_address(local: str, count: int) -> None:
        async with limit:
            for _ in range(count):
                client = await NoiseClient.connect(address, local,
                                                   expected_remote=expected_remote)
                if client is not None:
                    clients.append(client)
                    nursery.start_soon(client.run)

    async with trio.open_nursery() as connecting:
        for local, indexes in by_address.items():
            connecting.start_soon(one_address, local, len(indexes))
    return clients
