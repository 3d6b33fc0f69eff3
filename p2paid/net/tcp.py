"""TCP endpoints: parse ``HOST:PORT``, listen, dial with a timeout.

IPv6 addresses are written in brackets (``[::1]:7446``): a bare ``::1:0`` could be
the address ``::1:0`` or ``::1`` port 0, so it is refused with a hint. Listening
takes an IP address of this machine (or ``localhost``), never a name to look up, and
a bind that fails is a :class:`~p2paid.errors.ListenError` that says what to do.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Final

import trio

from p2paid.core.hosts import normalize_host
from p2paid.errors import ListenError, UsageError

__all__ = ["DIAL_TIMEOUT", "dial", "format_address", "listen_error", "open_listener",
           "parse_address", "parse_listen_address"]

DIAL_TIMEOUT: Final = 10.0
#: Ports below this need root (or CAP_NET_BIND_SERVICE) to listen on.
PRIVILEGED_BELOW: Final = 1024


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
    elif ":" in text:
        raise UsageError(_brackets_hint(text))
    else:  # a name or an IPv4 address: no port given
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


def _brackets_hint(text: str) -> str:
    """What to write instead of an IPv6 address without brackets."""
    shown = text[:80]
    head, _, tail = text.rpartition(":")
    examples = []
    if tail.isascii() and tail.isdigit() and _is_ipv6(head):
        examples.append(f"[{head}]:{tail}")
    if _is_ipv6(text):
        examples.append(f"[{text}]:PORT")
    example = " or ".join(examples)[:100] or "e.g. [::1]:7446"
    return f"{shown!r}: write an IPv6 address in brackets, then the port: {example}"


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def parse_listen_address(text: str, default_port: int | None = None) -> tuple[str, int]:
    """:func:`parse_address` for an address to listen on: the host must be an IP
    address of this machine or ``localhost`` (checked by :func:`check_listen_host`).

    Raises:
        UsageError: not ``HOST:PORT`` (:class:`~p2paid.errors.ListenError` for a host
            that is not an IP address).
    """
    host, port = parse_address(text, default_port)
    check_listen_host(host, port)
    return host, port


def check_listen_host(host: str, port: int) -> None:
    """Refuse a host name other than ``localhost`` as a place to listen (it would be
    looked up in the DNS, and name some other machine as often as this one).

    Raises:
        ListenError: ``host`` is neither an IP address nor ``localhost``.
    """
    if host == "localhost":
        return
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ListenError(
            f"{host[:80]!r} is not an IP address: listen on one of this machine's "
            "addresses (0.0.0.0 for every IPv4 interface, [::] for every IPv6 one, "
            "127.0.0.1 for this machine only)", (host, port)) from None


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen_error(host: str, port: int, exc: OSError, *, option: str = "--listen",
                 holder: str = "another p2paid run") -> ListenError:
    """A :class:`ListenError` for a failed bind of ``host:port`` (raise it ``from exc``).

    Args:
        option: the command-line option that chooses the address, for the advice.
        holder: who most likely has the port already, for the advice.
    """
    where = format_address(host, port)
    again = f"choose another with {option} HOST:PORT"
    code = exc.errno
    if code == errno.EADDRINUSE:
        message = f"port {port} on {host} is in use ({holder}?); {again}"
    elif code in (errno.EACCES, errno.EPERM) and 0 < port < PRIVILEGED_BELOW:
        message = (f"port {port} is privileged (only root may listen below "
                   f"{PRIVILEGED_BELOW}); choose a port from {PRIVILEGED_BELOW} up "
                   f"with {option} HOST:PORT")
    elif code == errno.EADDRNOTAVAIL:
        message = (f"{host} is not an address of this machine; {again} (0.0.0.0 "
                   "listens on every IPv4 interface)")
    elif code == errno.EAFNOSUPPORT:
        message = f"cannot listen on {where}: this machine has IPv6 turned off; {again}"
    else:
        message = f"cannot listen on {where}: {exc.strerror or exc}; {again}"
    return ListenError(message, (host, port), code)


async def open_listener(host: str, port: int, *, option: str = "--listen",
                        holder: str = "another p2paid run") -> trio.SocketListener:
    """Listen on one address (SO_REUSEADDR on, as trio sets it).

    Args:
        option, holder: for the advice in the error (see :func:`listen_error`).

    Raises:
        ListenError: the address cannot be bound (in use, privileged, not this
            machine's), or ``host`` is not an IP address or ``localhost``.
    """
    check_listen_host(host, port)
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise listen_error(host, port, exc, option=option, holder=holder) from exc
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
