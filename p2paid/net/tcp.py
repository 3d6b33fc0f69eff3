"""TCP endpoints: parse ``HOST:PORT``, listen, dial with a timeout."""

from __future__ import annotations

import socket
from typing import Final

import trio

from p2paid.core.hosts import normalize_host
from p2paid.errors import UsageError

__all__ = ["DIAL_TIMEOUT", "dial", "format_address", "open_listener", "parse_address"]

DIAL_TIMEOUT: Final = 10.0


def parse_address(text: str, default_port: int | None = None) -> tuple[str, int]:
    """``"host:port"``, ``"[v6]:port"`` or ``"host"`` (with a default port); the host is
    checked and normalised by :func:`p2paid.core.hosts.normalize_host`.

    Raises:
        UsageError: not a host and port (:class:`~p2paid.core.hosts.HostError` for the host).
    """
    text = text.strip()
    if text.startswith("["):
        inner, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise UsageError(f"{text[:80]!r} is not [IPV6]:PORT")
        host, port_text = f"[{inner}]", rest[1:] if rest else None
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:  # a name, an IPv4 address, or a bare IPv6 address: no port given
        host, port_text = text, None
    if port_text is None:
        if default_port is None:
            raise UsageError(f"{text[:80]!r} is not HOST:PORT")
        port_text = str(default_port)
    if not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5:
        raise UsageError(f"{text[:80]!r}: the port must be a number")
    port = int(port_text)
    if port > 65535:
        raise UsageError(f"{text[:80]!r}: the port must be at most 65535")
    return normalize_host(host), port


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
