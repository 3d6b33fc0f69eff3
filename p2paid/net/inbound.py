"""Accepting connections, for nodes and relays alike.

Each accepted socket is served in its own task and holds a *handshake slot*
until it is authenticated (or fails), so that a flood of silent or half-open
connections counts against the cap just as connected peers do. Running out of
file descriptors pauses accepting instead of ending the service.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from typing import Final, NoReturn

import trio

from .connection import Connection, ConnectionHost, run_connection
from .tcp import format_address

__all__ = ["serve_inbound"]

log = logging.getLogger("p2paid.net")

_RESOURCE_ERRNOS: Final = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


async def serve_inbound(
    host: ConnectionHost, listener: trio.SocketListener, admit: Callable[[int], bool]
) -> NoReturn:
    """Accept and serve connections until cancelled.

    Args:
        admit: called with the number of handshakes in progress; False closes the
            new socket at once.
    """
    handshaking = 0

    async def serve(stream: trio.SocketStream) -> None:
        nonlocal handshaking
        held = True

        async def release(_: Connection | None = None) -> None:
            nonlocal handshaking, held
            if held:
                held = False
                handshaking -= 1

        try:
            await run_connection(host, stream, address=_peer_address(stream),
                                 initiator=False, on_connected=release)
        finally:
            await release()

    async with trio.open_nursery() as nursery, listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _RESOURCE_ERRNOS:
                    raise
                log.warning("cannot accept connections right now: %s", exc)
                await trio.sleep(0.1)
                continue
            if not admit(handshaking):
                await stream.aclose()
                continue
            handshaking += 1
            nursery.start_soon(serve, stream)
    raise AssertionError("unreachable")  # pragma: no cover - the loop only ends by raising


def _peer_address(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "?"
    return format_address(host, port)
