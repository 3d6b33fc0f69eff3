"""LAN discovery with python-zeroconf: the one bridge between its thread and trio.

The node advertises ``_p2paid._tcp.local.`` under a random instance name with a
minimal TXT record (the protocol version), and browses for the same type.
Zeroconf runs its own thread; calls into it go through ``trio.to_thread`` and
its callbacks come back through ``trio.from_thread`` into a memory channel.
Advertising is optional (browse only), so a node can find others without
announcing itself.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
from typing import Final

import ifaddr
import trio
from zeroconf import IPVersion, ServiceBrowser, ServiceInfo, ServiceStateChange, Zeroconf

from p2paid.core.codes import DialSource
from p2paid.net.interfaces import DialTargets
from p2paid.net.peers import DialTarget

__all__ = ["SERVICE_TYPE", "run_mdns"]

log = logging.getLogger("p2paid.mdns")

SERVICE_TYPE: Final = "_p2paid._tcp.local."
RESOLVE_TIMEOUT_MS: Final = 3000
#: Most announced addresses of one node that are tried.
MAX_ADDRESSES: Final = 8


def local_networks() -> list[ipaddress.IPv4Interface]:
    """This host's IPv4 interface addresses (with their networks), loopback excluded,
    in a stable order."""
    found = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if ip.is_IPv4 and isinstance(ip.ip, str):
                iface = ipaddress.IPv4Interface(f"{ip.ip}/{ip.network_prefix}")
                if not iface.ip.is_loopback:
                    found.append(iface)
    return sorted(found, key=lambda i: int(i.ip))


def _advertised_addresses(listen_host: str) -> list[bytes]:
    """IPv4 addresses to announce: the listen address, or every non-loopback one."""
    if listen_host not in ("0.0.0.0", "", "::"):
        return [socket.inet_aton(listen_host)]
    return [i.ip.packed for i in local_networks()]


def rank_addresses(addresses: list[str], networks: list[ipaddress.IPv4Interface]) -> list[str]:
    """Addresses on one of our own networks first (the others may be a peer's VPN or
    container interfaces that we cannot reach), each once, in a stable order."""
    def reachable(address: str) -> bool:
        ip = ipaddress.IPv4Address(address)
        return any(ip in n.network for n in networks)

    unique = sorted(set(addresses), key=lambda a: int(ipaddress.IPv4Address(a)))
    return sorted(unique, key=lambda a: not reachable(a))


async def run_mdns(
    targets: DialTargets, listen_host: str | None, port: int | None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Advertise (when ``port`` and ``listen_host`` are given) and browse until cancelled;
    add what is found to ``targets`` (and remove what goes away).

    Args:
        listen_host: the address the node listens on (``0.0.0.0``: every interface's).
        port: the port to announce, or None to browse only.
    """
    token = trio.lowlevel.current_trio_token()
    send, receive = trio.open_memory_channel[tuple[str, ServiceStateChange]](256)
    zc = await trio.to_thread.run_sync(lambda: Zeroconf(ip_version=IPVersion.V4Only))
    own_name = f"p2paid-{os.urandom(6).hex()}.{SERVICE_TYPE}"
    info: ServiceInfo | None = None
    browser: ServiceBrowser | None = None

    def on_change(zeroconf: Zeroconf, service_type: str, name: str,
                  state_change: ServiceStateChange) -> None:
        # Runs in zeroconf's thread.
        with contextlib.suppress(trio.WouldBlock, trio.RunFinishedError,
                                 trio.BrokenResourceError):
            trio.from_thread.run_sync(send.send_nowait, (name, state_change), trio_token=token)

    try:
        if port is not None and listen_host is not None:
            addresses = _advertised_addresses(listen_host)
            info = ServiceInfo(SERVICE_TYPE, own_name, addresses=addresses, port=port,
                               properties={"v": "1"}, server=own_name.split(".")[0] + ".local.")
            await trio.to_thread.run_sync(zc.register_service, info)
            log.info("announcing this node on the local network (mDNS)")
        browser = await trio.to_thread.run_sync(
            lambda: ServiceBrowser(zc, SERVICE_TYPE, handlers=[on_change]))
        task_status.started()
        found: dict[str, DialTarget] = {}
        async for name, change in receive:
            if name == own_name:
                continue
            if change is ServiceStateChange.Removed:
                target = found.pop(name, None)
                if target is not None:
                    targets.remove(target.host, target.port)
                continue
            resolved = await _resolve(zc, name)
            if resolved is None:
                continue
            hosts, port = resolved
            old = found.get(name)
            if old is not None and (old.addresses, old.port) == (hosts, port):
                continue
            if old is not None:
                targets.remove(old.host, old.port)
            target = DialTarget(hosts[0], port, source=DialSource.MDNS, addresses=hosts)
            found[name] = target
            log.info("found a node on the local network at %s:%d", hosts[0], port)
            targets.add(target)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_shutdown, zc, browser, info)


async def _resolve(zc: Zeroconf, name: str) -> tuple[tuple[str, ...], int] | None:
    """All announced IPv4 addresses (reachable-looking ones first) and the port."""
    info = await trio.to_thread.run_sync(zc.get_service_info, SERVICE_TYPE, name,
                                         RESOLVE_TIMEOUT_MS)
    if info is None or info.port is None:
        return None
    addresses = rank_addresses(info.parsed_addresses(IPVersion.V4Only), local_networks())
    if not addresses:
        return None
    return tuple(addresses[:MAX_ADDRESSES]), info.port


def _shutdown(zc: Zeroconf, browser: ServiceBrowser | None, info: ServiceInfo | None) -> None:
    try:
        if browser is not None:
            browser.cancel()
        if info is not None:
            zc.unregister_service(info)
    finally:
        zc.close()
