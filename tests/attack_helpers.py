"""Transport attackers for the tests: many real Noise clients in this process.

Each :class:`NoiseClient` dials from a chosen 127.x.y.z address, completes a real
``Noise_XX`` handshake with a throw-away key (the library's own connection, through
:class:`~peer_helpers.StreamPeer`), optionally sends a Hello or anything else, and then
records when the other side closes. They are cheap enough that hundreds run in one
test.
"""

from __future__ import annotations

from collections.abc import Sequence

import trio
from peer_helpers import PeerClosed, StreamPeer

from p2paid.errors import RemoteProtocolError

__all__ = ["NoiseClient", "open_noise_clients", "spread_addresses"]


def spread_addresses(count: int, per_address: int, first: int = 10) -> list[str]:
    """``count`` local addresses, ``per_address`` uses of each: 127.0.N.1, ..."""
    return [f"127.0.{first + i // per_address}.1" for i in range(count)]


class NoiseClient(StreamPeer):
    """One authenticated connection that does only what the test says (a
    :class:`~peer_helpers.StreamPeer` that never starts a session)."""

    local = ""

    @classmethod
    async def connect(cls, address: tuple[str, int], local: str, *,
                      expected_remote: bytes | None = None) -> NoiseClient | None:
        """Dial from ``local`` and finish the handshake; None if the far side closed
        the socket first (refused at accept, say)."""
        try:
            client = await cls.open(address, expected_remote=expected_remote,
                                    local_address=local)
        except (PeerClosed, RemoteProtocolError, trio.BrokenResourceError, OSError):
            return None
        client.local = local
        return client

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
