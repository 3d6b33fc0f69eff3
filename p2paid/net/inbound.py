"""Accepting connections, for nodes and relays alike.

Each accepted socket is served in its own task and holds a *handshake slot*
(counted in all and per remote address by :class:`~p2paid.net.admission.Admission`)
until it is authenticated or fails, so that a flood of silent or half-open
connections cannot pin more than a few sockets. Running out of file descriptors
pauses accepting instead of ending the service, and no error of one connection
ends it either.
"""

from __future__ import annotations

import errno
import logging
from typing import Final, NoReturn

import trio

from p2paid.core.hosts import address_key
from p2paid.net.admission import Admission
from p2paid.net.connection import Connection, run_connection
from p2paid.net.interfaces import ConnectionHost, ConnectionOptions
from p2paid.net.tcp import format_address

__all__ = ["serve_inbound"]

log = logging.getLogger("p2paid.net")

_RESOURCE_ERRNOS: Final = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


async def serve_inbound(
    host: ConnectionHost, listener: trio.SocketListener, admission: Admission,
    options: ConnectionOptions | None = None,
) -> NoReturn:
    """Accept and serve connections until cancelled.

    Args:
        admission: decides which sockets may start a handshake (and, through the
            host's ``register``, which authenticated connections stay).
        options: how the connections are driven (rate limit, deferred work).
    """

    async def serve(stream: trio.SocketStream, ip: str, address: str) -> None:
        key = address_key(ip)
        held = True

        async def release(_: Connection | None = None) -> None:
            nonlocal held
            if held:
                held = False
                admission.end_handshake(key)

        try:
            await run_connection(host, stream, address=address, address_key=key,
                                 initiator=False, on_connected=release, options=options)
        except Exception:  # a bug that one peer's bytes triggered: keep serving the others
            log.exception("connection from %s ended by an unexpected error", address)
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
            ip, address = _peer_address(stream)
            if not admission.begin_handshake(address_key(ip)):
                await stream.aclose()
                continue
            nursery.start_soon(serve, stream, ip, address)
    raise AssertionError("unreachable")  # pragma: no cover - the loop only ends by raising


def _peer_address(stream: trio.SocketStream) -> tuple[str, str]:
    """The remote IP and ``IP:PORT`` (``"?"`` if the socket is already gone)."""
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "?", "?"
    return str(host), format_address(host, port)
