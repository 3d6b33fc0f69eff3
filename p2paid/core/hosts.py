"""Host names and addresses from outside: one validator for every address p2paid parses.

A host is an IPv4 literal (dotted quad), an IPv6 literal (written in brackets
inside ``HOST:PORT`` and relay addresses), or a DNS name that IDNA-encodes:
labels of 1 to 63 letters, digits and inner hyphens after IDNA, at most 253
characters in all, and a last label that is not all digits (``1.2.3`` would be
read as an IPv4 shorthand by some resolvers). See ``protocol/SPEC.md`` 3.2.

:func:`address_key` groups remote addresses for the per-address connection caps
(an IPv6 client controls a whole /64, so it counts as one address).
"""

from __future__ import annotations

import encodings.idna
import ipaddress
import re
from typing import Final

from p2paid.errors import HostError

__all__ = ["MAX_HOST_CHARS", "HostError", "address_key", "normalize_host"]

#: Longest DNS name (RFC 1035, without the root dot).
MAX_HOST_CHARS: Final = 253
_MAX_LABEL: Final = 63
_LDH: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")


def normalize_host(text: str) -> str:
    """The canonical form of a host: IPv4 and IPv6 literals as :mod:`ipaddress` writes
    them (IPv6 without brackets), DNS names in lowercase ASCII (IDNA) without a
    trailing dot.

    Args:
        text: a host, IPv6 with or without brackets.

    Raises:
        HostError: with a message that says what is wrong.
    """
    if not isinstance(text, str):
        raise HostError("a host must be text")
    host = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if not host:
        raise HostError("the host is empty")
    if ":" in host:
        if "%" in host:
            raise HostError(f"{_show(host)}: IPv6 zone ids (%...) are not supported")
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError:
            raise HostError(f"{_show(host)} is not a valid IPv6 address") from None
    if host != text:
        raise HostError(f"{_show(text)}: only IPv6 addresses are written in brackets")
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    return _dns_name(host)


def _dns_name(host: str) -> str:
    name = host[:-1] if host.endswith(".") else host
    if not name or len(name) > 4 * MAX_HOST_CHARS:
        raise HostError(f"{_show(host)} is not a host name")
    labels = []
    for label in name.split("."):
        if not label:
            raise HostError(f"{_show(host)} has an empty label (two dots in a row?)")
        try:
            ascii_label = encodings.idna.ToASCII(label).decode("ascii").lower()
        except UnicodeError:
            raise HostError(f"{_show(host)}: a label is longer than {_MAX_LABEL} "
                            "characters or not valid IDNA") from None
        if not 0 < len(ascii_label) <= _MAX_LABEL or not _LDH.fullmatch(ascii_label):
            raise HostError(f"{_show(host)}: host names hold only letters, digits and "
                            "inner hyphens")
        labels.append(ascii_label)
    if labels[-1].isdigit():
        raise HostError(f"{_show(host)} is neither an IPv4 address nor a host name")
    out = ".".join(labels)
    if len(out) > MAX_HOST_CHARS:
        raise HostError(f"a host name is at most {MAX_HOST_CHARS} characters")
    return out


def _show(text: str) -> str:
    """A bounded, printable rendering of untrusted text for an error message."""
    return repr(text if len(text) <= 80 else text[:77] + "...")


def address_key(ip: str) -> str:
    """The unit of the per-address caps: an IPv4 address, or an IPv6 /64 prefix
    (IPv4-mapped IPv6 addresses count as their IPv4 address). Anything that does
    not parse is its own key."""
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{address}/64", strict=False))
    return str(address)
