"""TCP endpoints: parse ``HOST:PORT``, listen, dial with a timeout."""

from __future__ import annotations

import socket
from typing import Final

import trio

from ..errors import UsageError

__all__ = ["DIAL_TIMEOUT", "dial", "format_address", "open_listener", "parse_address"]

DIAL_TIMEOUT: Final = 10.0


def parse_address(text: str, default_port: int | None = None) -> tuple[str, int]:
    """``"host:port"``, ``"[v6]:port"`` or ``"host"`` (with a default port).

    Raises:
        UsageError: not a host and port.
    """
    text = text.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or (host.count(":") and not host.startswith("[")):
        if default_port is None:
            raise UsageError(f"{text!r} is not HOST:PORT")
        host, port_text = text, str(default_port)
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise UsageError(f"{text!r}: the port must be a number") from None
    if not host or not 0 <= port <= 65535:
        raise UsageError(f"{text!r} is not HOST:PORT")
    return host, port


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def open_listener(host: str, port: int) -> trio.SocketListener:
    """Listen on one address (SO_REUSEADDR on, as trio sets it)."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    return listeners[0]


async def dial(host: str, port: int, *, timeout: float = DIAL_TIMEOUT) -> trio.SocketStream:
    """Connect within ``timeout``; TCP_NODELAY is on (trio's default).

    Raises:
        OSError: refused, unreachable, or timed out.
    """
    with trio.move_on_after(timeout) as scope:
        stream = await trio.open_tcp_stream(host, port)
    if scope.cancelled_caught:
        raise OSError(f"connecting to {format_address(host, port)} timed out")
    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
    return stream
