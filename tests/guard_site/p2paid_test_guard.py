"""The test suite's multicast guard: no mDNS (or any multicast) on the machine's network.

Tests may send traffic only to 127.0.0.1 or into network namespaces they made
(``tests/netns.py``). This module refuses, in the process that tries it, every
socket call that would join a multicast group, pick a multicast interface, or send
or connect to a multicast address, and records each attempt in a log file that the
suite's autouse fixture reads after every test (so a refusal that the code under
test swallows still fails the test).

It is installed in the pytest process by ``tests/conftest.py`` and in every Python
process the tests start through ``sitecustomize`` (this folder is put first on
``PYTHONPATH``); there it waits until the program imports :mod:`socket`, so that a
process which never does (``tests/test_layering.py`` checks that) still does not. A
process whose network namespace is not the one pytest runs in (``ip netns exec ...``
into a namespace a test made) is left alone: there, multicast reaches only the
test's own veth link.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any, cast

__all__ = ["ENV_LOG", "ENV_NETNS", "MulticastRefused", "install", "install_from_env",
           "netns_id", "recording_to"]

#: File that refused attempts are appended to (one line each).
ENV_LOG = "P2PAID_TEST_MULTICAST_LOG"
#: Network namespace of the pytest process, as :func:`netns_id` gives it ("" where
#: namespaces cannot be told apart: then every process is guarded).
ENV_NETNS = "P2PAID_TEST_HOST_NETNS"

_MCAST_JOIN_GROUP = 42  # Linux <netinet/in.h>; not exported by the socket module
_MCAST_JOIN_SOURCE_GROUP = 46
#: The log refusals go to, once installed.
_log: list[str] = []


class MulticastRefused(PermissionError):
    """A test process tried to use multicast on the machine's own network."""


def netns_id() -> str | None:
    """This process's network namespace (device and inode of ``/proc/self/ns/net``)."""
    try:
        st = os.stat("/proc/self/ns/net")
    except OSError:
        return None
    return f"{st.st_dev}:{st.st_ino}"


def _options(socket: ModuleType) -> dict[tuple[int, int], str]:
    """(level, option) pairs that join a group or choose a multicast interface."""
    ip, ip6 = socket.IPPROTO_IP, socket.IPPROTO_IPV6
    return {
        (ip, socket.IP_ADD_MEMBERSHIP): "IP_ADD_MEMBERSHIP",
        (ip, socket.IP_MULTICAST_IF): "IP_MULTICAST_IF",
        (ip, _MCAST_JOIN_GROUP): "MCAST_JOIN_GROUP",
        (ip, _MCAST_JOIN_SOURCE_GROUP): "MCAST_JOIN_SOURCE_GROUP",
        (ip6, socket.IPV6_JOIN_GROUP): "IPV6_JOIN_GROUP",
        (ip6, socket.IPV6_MULTICAST_IF): "IPV6_MULTICAST_IF",
        (ip6, _MCAST_JOIN_GROUP): "MCAST_JOIN_GROUP",
    }


def _is_multicast(address: object) -> bool:
    if not isinstance(address, tuple) or not address or not isinstance(address[0], str):
        return False
    import ipaddress

    try:
        return ipaddress.ip_address(address[0].split("%", 1)[0]).is_multicast
    except ValueError:
        return False  # a host name: resolving it is not multicast


def _refuse(what: str) -> None:
    line = f"pid {os.getpid()} ({' '.join(sys.argv)[:200]}): {what}\n"
    try:
        with open(_log[0], "a", encoding="utf-8") as log:
            log.write(line)
    except OSError:
        pass
    raise MulticastRefused(errno.EPERM, f"refused by the p2paid test suite (multicast "
                           f"outside a test network namespace): {what}")


def install(log_path: str) -> None:
    """Patch :class:`socket.socket` in this process (once) to refuse multicast."""
    if _log:
        return
    _log.append(log_path)
    import socket

    options = _options(socket)
    cls = socket.socket
    setsockopt: Callable[..., Any] = cls.setsockopt
    sendto: Callable[..., Any] = cls.sendto
    sendmsg: Callable[..., Any] = cls.sendmsg
    connect: Callable[..., Any] = cls.connect
    connect_ex: Callable[..., Any] = cls.connect_ex

    def guarded_setsockopt(self: socket.socket, level: int, option: int, *rest: Any) -> Any:
        name = options.get((level, option))
        if name is not None:
            _refuse(f"setsockopt({name})")
        return setsockopt(self, level, option, *rest)

    def guarded_sendto(self: socket.socket, data: Any, *rest: Any) -> Any:
        if rest and _is_multicast(rest[-1]):
            _refuse(f"sendto {rest[-1]!r}")
        return sendto(self, data, *rest)

    def guarded_sendmsg(self: socket.socket, buffers: Any, *rest: Any) -> Any:
        if len(rest) >= 3 and _is_multicast(rest[2]):
            _refuse(f"sendmsg to {rest[2]!r}")
        return sendmsg(self, buffers, *rest)

    def guarded_connect(self: socket.socket, address: Any) -> Any:
        if _is_multicast(address):
            _refuse(f"connect {address!r}")
        return connect(self, address)

    def guarded_connect_ex(self: socket.socket, address: Any) -> Any:
        if _is_multicast(address):
            _refuse(f"connect {address!r}")
        return connect_ex(self, address)

    for name, method in (("setsockopt", guarded_setsockopt), ("sendto", guarded_sendto),
                         ("sendmsg", guarded_sendmsg), ("connect", guarded_connect),
                         ("connect_ex", guarded_connect_ex)):
        setattr(cls, name, method)


@contextlib.contextmanager
def recording_to(log_path: str) -> Iterator[None]:
    """Send this process's refusals to ``log_path`` for a while (the guard's own tests,
    which make refusals on purpose)."""
    if not _log:
        raise RuntimeError("the multicast guard is not installed")
    saved = _log[0]
    _log[0] = log_path
    try:
        yield
    finally:
        _log[0] = saved


class _InstallOnImport:
    """A ``sys.meta_path`` finder that installs the guard right after :mod:`socket` is
    first imported (and then steps aside)."""

    def __init__(self, log_path: str) -> None:
        self.log_path = log_path

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "socket":
            return None
        sys.meta_path.remove(self)
        import importlib.util

        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = cast(Any, _Loader(spec.loader, self.log_path))
        return spec


class _Loader:
    def __init__(self, inner: Any, log_path: str) -> None:
        self.inner, self.log_path = inner, log_path

    def create_module(self, spec: Any) -> Any:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.inner.exec_module(module)
        install(self.log_path)


def install_from_env() -> None:
    """Install the guard (when :mod:`socket` is imported) if the suite asked for it and
    this process still runs in the pytest process's network namespace."""
    log_path = os.environ.get(ENV_LOG)
    if not log_path or (netns_id() or "") != os.environ.get(ENV_NETNS, ""):
        return
    if "socket" in sys.modules:
        install(log_path)
    else:
        sys.meta_path.insert(0, _InstallOnImport(log_path))
