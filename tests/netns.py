"""Two network namespaces joined by a veth pair, for the mDNS tests.

Everything here is made by the test itself and removed when it ends, even on
failure. The veth pair is created directly inside the two namespaces
(``ip -n A link add ... peer name ... netns B``), so no interface ever exists in
the host's namespace and deleting the namespaces removes everything. Names carry
the test process's pid and a counter, so parallel runs cannot collide.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

__all__ = ["LinkedNamespaces", "linked_namespaces", "netns_unavailable"]

IP_TIMEOUT = 10
_counter = itertools.count(1)


def _ip(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=IP_TIMEOUT)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(argv)} failed ({done.returncode}): "
                           f"{done.stderr.strip()}")
    return done


@functools.cache
def netns_unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None if they can."""
    if os.name != "posix" or not hasattr(os, "geteuid"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "building network namespaces needs root (run as root, e.g. in CI)"
    if shutil.which("ip") is None:
        return "the 'ip' command (iproute2) is not installed"
    probe = f"p2pchk-{os.getpid()}"
    try:
        done = _ip("netns", "add", probe, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"'ip netns add' cannot run: {exc}"
    if done.returncode != 0:
        return (f"'ip netns add' failed (no CAP_SYS_ADMIN or no netns support?): "
                f"{done.stderr.strip()}")
    _ip("netns", "del", probe, check=False)
    return None


@dataclass(frozen=True)
class LinkedNamespaces:
    """Namespaces ``a`` and ``b``; ``dev_a`` (``addr_a``/24) in ``a`` is wired to
    ``dev_b`` (``addr_b``/24) in ``b``."""

    a: str
    b: str
    dev_a: str
    dev_b: str
    addr_a: str
    addr_b: str

    @staticmethod
    def exec_argv(ns: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside namespace ``ns`` (``ip netns exec`` execs, so the pid
        of the process started is the pid of ``argv``)."""
        return ["ip", "netns", "exec", ns, *argv]

    def add_other_interface(self, ns: str, addresses: Sequence[str]) -> str:
        """Give ``ns`` a second, up, multicast-capable interface (like docker0 or a
        VPN) holding ``addresses`` (CIDR); the other namespace has no route to them."""
        n = next(_counter)
        dev, peer = f"p2x{n}", f"p2y{n}"
        _ip("-n", ns, "link", "add", dev, "type", "veth", "peer", "name", peer)
        for address in addresses:
            _ip("-n", ns, "addr", "add", address, "dev", dev)
        _ip("-n", ns, "link", "set", dev, "up")
        _ip("-n", ns, "link", "set", peer, "up")
        return dev


@contextlib.contextmanager
def linked_namespaces(subnet: int | None = None) -> Iterator[LinkedNamespaces]:
    """Make two namespaces joined by a veth pair on 10.77.<subnet>.0/24; delete them
    (and with them the veth pair) on exit."""
    n = next(_counter)
    subnet = n % 250 + 1 if subnet is None else subnet
    pid = os.getpid()
    ns = LinkedNamespaces(
        a=f"p2pa-{pid}-{n}", b=f"p2pb-{pid}-{n}",
        dev_a=f"p2va{n}", dev_b=f"p2vb{n}",
        addr_a=f"10.77.{subnet}.1", addr_b=f"10.77.{subnet}.2",
    )
    made: list[str] = []
    try:
        for name in (ns.a, ns.b):
            _ip("netns", "add", name)
            made.append(name)
        # Create the pair inside A with its peer end born inside B.
        _ip("-n", ns.a, "link", "add", ns.dev_a, "type", "veth", "peer", "name", ns.dev_b,
            "netns", ns.b)
        for name, dev, addr in ((ns.a, ns.dev_a, ns.addr_a), (ns.b, ns.dev_b, ns.addr_b)):
            _ip("-n", name, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", name, "link", "set", "lo", "up")
            _ip("-n", name, "link", "set", dev, "up")
            # Not needed by python-zeroconf (it sets IP_MULTICAST_IF per interface), but
            # what a LAN's default route would give: multicast leaves through the veth.
            _ip("-n", name, "route", "add", "224.0.0.0/4", "dev", dev)
        yield ns
    finally:
        for name in reversed(made):
            _ip("netns", "del", name, check=False)
