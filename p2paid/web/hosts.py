"""Which ``Host`` headers the web interface answers: a defence against DNS rebinding.

A page on the internet can make a phone's browser resolve ``evil.example`` to the
node's LAN address and then read the node's pages as if they were its own. The
browser still sends ``Host: evil.example``; answering only the node's own addresses
and names (and ``localhost``) defeats that.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import final

__all__ = ["HostAllowList", "host_name"]


def host_name(header: str) -> str | None:
    """The host of a ``Host`` header, lowercased, without port or IPv6 brackets;
    None if it is not a host at all."""
    value = header.strip().lower()
    if not value or any(c.isspace() or c in "/\\@?#" for c in value):
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or (value[end + 1:] and not _is_port(value[end + 1:])):
            return None
        host = value[1:end]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
        return host
    name, sep, port = value.rpartition(":")
    if sep and ":" not in name:
        if not port.isdigit():
            return None
        value = name
    elif ":" in value:
        return None  # an IPv6 address must come in brackets
    return value.rstrip(".") or None


def _is_port(text: str) -> bool:
    return text.startswith(":") and text[1:].isdigit() and 0 < int(text[1:]) < 65536


@final
class HostAllowList:
    """The names and addresses a node's web interface may be reached by.

    Args:
        names: host names and IP addresses (the node's own, and any name the group
            gives it, such as ``board.camp``); ``localhost`` and loopback always count.
        any_address: also answer any IP address (not names): for a node that does not
            know its addresses in advance; names are still checked.
    """

    def __init__(self, names: Iterable[str], *, any_address: bool = False) -> None:
        self._names = {n for n in (host_name(x) for x in names) if n}
        self._names |= {"localhost", "127.0.0.1", "::1"}
        self._any_address = any_address

    def allows(self, header: str | None) -> bool:
        if header is None:
            return False
        host = host_name(header)
        if host is None:
            return False
        if host in self._names:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False  # a name not on the list: rebinding, or a mistake
        return self._any_address or address.is_loopback

    def add(self, name: str) -> None:
        """Allow one more name or address (the node learnt its address)."""
        host = host_name(name)
        if host:
            self._names.add(host)
