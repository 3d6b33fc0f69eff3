"""``p2paid run``, ``peers`` and ``status``: the commands about a running node."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import trio

from p2paid.board.model import ItemKind, now_ms
from p2paid.board.store import default_data_dir
from p2paid.cli.args import at_least, listen_address, peer_address
from p2paid.cli.eventlog import log_board_events
from p2paid.cli.passphrase import cli_store, credentials
from p2paid.cli.render import SafeFormatter, safe, when
from p2paid.core.identity import fingerprint
from p2paid.core.text import plural
from p2paid.net.groups import collapse_single_errors
from p2paid.node.node import (
    DEFAULT_PORT,
    MAX_CONNECTIONS,
    MAX_PER_ADDRESS,
    Node,
    open_node,
)
from p2paid.node.status import read_runtime
from p2paid.storage.runtime import fresh_runtime

__all__ = ["add_node_commands"]

log = logging.getLogger("p2paid")


def cmd_run(args: argparse.Namespace) -> int:
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeFormatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logging.basicConfig(level=level, handlers=[handler])
    listen = None if args.no_listen else args.listen
    trio.run(_run, args, listen, args.peer or [])
    return 0


async def _run(args: argparse.Namespace, listen: tuple[str, int] | None,
               peers: list[tuple[str, int]]) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals, \
            collapse_single_errors():
        async with open_node(args.data_dir, credentials=credentials(args),
                             listen=listen, peers=peers,
                             mdns=not args.no_mdns, advertise=not args.no_advertise,
                             max_connections=args.max_connections,
                             max_per_address=args.max_per_address) as node, \
                trio.open_nursery() as nursery:
            _greet(node, args)
            nursery.start_soon(_log_events, node)
            if args.web is not None:
                from p2paid.web.server import base_url, serve_web

                bound = await nursery.start(partial(
                    serve_web, node, *args.web, certfile=args.web_cert, keyfile=args.web_key,
                    allow_remote_wipe=args.allow_remote_wipe))
                node.status_extras["web"] = base_url(bound, https=args.web_cert is not None)
                node.publish_status()  # ('p2paid web invite' reads it at once)
                log.info("web interface for members' phones at %s (pair one with "
                         "'p2paid web invite')", node.status_extras["web"])
            async for signum in signals:
                log.info("stopping (%s)", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
    if node.wiped:
        log.warning("stopped: the owner's phone wiped this node's data dir (%s)",
                    node.store.data_dir)
        return
    log.info("stopped; everything confirmed is in the store")


def _greet(node: Node, args: argparse.Namespace) -> None:
    boards = node.boards()
    log.info("p2paid node %s, data in %s", fingerprint(node.node_id), node.store.data_dir)
    if not boards:
        log.info("no boards yet: in another terminal, 'p2paid board create NAME' or "
                 "'p2paid board join INVITE'; this node picks them up")
    for board in boards:
        log.info("board %s: %s", safe(repr(board.name)), plural(len(board.items()), "item"))
    if args.no_mdns:
        log.info("local-network discovery is off (--no-mdns)")
    elif args.no_advertise:
        log.info("browsing the local network without announcing this node (--no-advertise)")


async def _log_events(node: Node) -> None:
    """Log what changes on every board (a burst as one summary line:
    :mod:`p2paid.cli.eventlog`), following boards joined later."""
    async with trio.open_nursery() as nursery:
        watched: set[bytes] = set()
        while True:
            for board in node.boards():
                if board.id not in watched:
                    watched.add(board.id)
                    nursery.start_soon(log_board_events, board)
            await trio.sleep(1)


def _peers(runtime: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The running node's connected peers, each with its ``kind`` (``relay`` or ``peer``,
    as the node learnt it from the peer's Hello)."""
    return [{**p, "kind": p.get("kind") or "peer"} for p in _listed(runtime, "peers")]


def _listed(runtime: dict[str, Any] | None, key: str) -> list[dict[str, Any]]:
    """The list of objects the running node published under ``key`` (none if not)."""
    value = runtime.get(key) if runtime else None
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def cmd_peers(args: argparse.Namespace) -> int:
    data_dir = args.data_dir or _default_dir()
    status = read_runtime(data_dir, credentials(args))
    if status is None:
        print("p2paid: no node is running on this data dir (start one with 'p2paid run')",
              file=sys.stderr)
        return 1
    peers = _peers(status)
    if args.json:
        print(json.dumps(peers, indent=2))
        return 0
    if not peers:
        print("no peers connected")
    for p in peers:
        since = time.strftime("%H:%M:%S", time.localtime(p["connected_since"]))
        print(f"{p['kind']:<5}  {p['fingerprint']}  {p['address']:<22} {p['direction']:<3}  "
              f"since {since}  {plural(p['shared_boards'], 'board')}  "
              f"{p['bytes_in']:,} B in / {p['bytes_out']:,} B out")
    return 0


def _last_sync(runtime_at: float | None, recorded: tuple[int, str] | None
               ) -> tuple[int, str] | None:
    """The later of the running node's last sync (seconds) and the store's record."""
    live = None if runtime_at is None else (int(runtime_at * 1000), "live")
    known = [s for s in (live, recorded) if s is not None]
    return max(known) if known else None


def cmd_status(args: argparse.Namespace) -> int:
    boards: list[dict[str, Any]] = []
    with cli_store(args) as store:
        runtime = fresh_runtime(store.read_runtime())
        peers = _peers(runtime)
        now = now_ms()
        live_sync: dict[str, float] = dict(runtime.get("last_sync") or {}) if runtime else {}
        recorded = store.last_syncs()
        for board in store.boards():
            items = board.items()
            synced = _last_sync(live_sync.get(board.id.hex()), recorded.get(board.id))
            boards.append({
                "board": board.id.hex(), "name": board.name,
                "needs_open": sum(i.kind is ItemKind.NEED and i.display_status(now) == "open"
                                  for i in items),
                "offers_open": sum(i.kind is ItemKind.OFFER and i.display_status(now) == "open"
                                   for i in items),
                "items": len(items), "authors": board.member_count,
                "envelopes": sum(board.version_vector().values()),
                "last_sync": None if synced is None else synced[0] / 1000,
                "last_sync_via": None if synced is None else synced[1],
            })
        node: dict[str, Any] = {
            "fingerprint": store.node_fingerprint, "data_dir": str(store.data_dir),
            "running": runtime is not None,
            "listen": runtime.get("listen") if runtime else None,
            "peers": sum(p["kind"] == "peer" for p in peers),
            "relays": sum(p["kind"] == "relay" for p in peers),
            "targets": _listed(runtime, "targets"),
            "protected": store.protected,
        }
    if args.json:
        print(json.dumps({"node": node, "boards": boards}, indent=2))
        return 0
    state = "not running" if not node["running"] else (
        f"running, listening on {node['listen']}" if node["listen"] else "running, not listening")
    print(f"node {node['fingerprint']} ({state}; connected to {plural(node['peers'], 'peer')} "
          f"and {plural(node['relays'], 'relay')})")
    print(f"data dir {node['data_dir']}" + (
        " (protected: encrypted at rest under a passphrase)" if node["protected"] else
        " (NOT protected: anyone with this disk can read its boards and keys; see "
        "'p2paid passphrase set')"))
    for t in node["targets"]:
        print(_target_line(t))
    for b in boards:
        via = {"bundle": " (bundle import)", "relay": " (relay)"}.get(b["last_sync_via"] or "",
                                                                      "")
        last = "never" if b["last_sync"] is None else when(int(b["last_sync"] * 1000)) + via
        print(f"{b['board'][:12]}  {safe(b['name'])}: {plural(b['needs_open'], 'open need')}, "
              f"{plural(b['offers_open'], 'open offer')} ({plural(b['items'], 'item')} in "
              f"all), {plural(b['authors'], 'author')}, {plural(b['envelopes'], 'envelope')}; "
              f"last sync {last}")
    return 0


def _target_line(target: dict[str, Any]) -> str:
    """``relay 203.0.113.5:7447  unreachable since 11:29:43 (connection refused, 4
    attempts)``: a configured peer or relay of the running node, and its state."""
    since = "" if target.get("since") is None else " since " + time.strftime(
        "%H:%M:%S", time.localtime(target["since"]))
    why = ""
    if target.get("state") == "unreachable":
        why = f" ({target.get('last_error')}, {plural(target.get('attempts') or 0, 'attempt')})"
    return safe(f"{target.get('kind', 'peer'):<5}  {target.get('address')}  "
                f"{target.get('state')}{since}{why}")


def _default_dir() -> Path:
    return default_data_dir()


def add_node_commands(sub: Any, cmd: Callable[..., argparse.ArgumentParser]) -> None:
    """Register ``run``, ``peers`` and ``status`` on the main parser."""
    p = cmd("run", cmd_run, "run a node: sync boards with peers on the local network, "
            "configured peers and relays, until Ctrl-C",
            epilog="One node runs on a data dir at a time: a second 'run' (or a 'relay') on "
                   "it is refused, naming the first one's pid; the other commands work "
                   "beside a running node. A data dir that does not exist yet is created "
                   "(and the log says so).")
    p.add_argument("--listen", default=f"0.0.0.0:{DEFAULT_PORT}", metavar="HOST:PORT",
                   type=listen_address(DEFAULT_PORT),
                   help=f"accept peers on this IP address of this machine (default "
                        f"0.0.0.0:{DEFAULT_PORT}; if that port is in use, a free one; port "
                        "0 = any; IPv6 in brackets: [::]:7446)")
    p.add_argument("--no-listen", action="store_true", help="only dial out")
    p.add_argument("--web", metavar="HOST:PORT", type=listen_address(8080),
                   help="serve the web interface for members' phones here (e.g. "
                        "0.0.0.0:8080; plain HTTP on the local network: see the README)")
    p.add_argument("--web-cert", metavar="FILE", help="serve the web interface over HTTPS "
                   "with this certificate (PEM; with --web-key)")
    p.add_argument("--web-key", metavar="FILE", help="the certificate's private key (PEM)")
    p.add_argument("--allow-remote-wipe", action="store_true",
                   help="let the phone paired with 'p2paid web pair --as-me' wipe this "
                        "node's data dir from the web interface (a panic button for a node "
                        "that may be seized while you are away; off by default)")
    p.add_argument("--peer", action="append", metavar="HOST:PORT", type=peer_address(DEFAULT_PORT),
                   help=f"keep a connection to this peer (repeatable; port defaults to "
                        f"{DEFAULT_PORT}; IPv6 in brackets: [2001:db8::5]:7446); if it cannot "
                        "be reached, the log says so once and again when it is back, and "
                        "'p2paid status' shows its state")
    p.add_argument("--no-mdns", action="store_true",
                   help="do not use local-network discovery (mDNS) at all")
    p.add_argument("--no-advertise", action="store_true",
                   help="find peers by mDNS without announcing this node")
    p.add_argument("--max-connections", type=at_least(1), default=MAX_CONNECTIONS, metavar="N",
                   help=f"cap on simultaneous peer connections (default {MAX_CONNECTIONS})")
    p.add_argument("--max-per-address", type=at_least(1), default=MAX_PER_ADDRESS, metavar="N",
                   help="cap on connections from one address (IPv6: one /64) of peers this "
                        f"node has not synced with before (default {MAX_PER_ADDRESS})")
    cmd("peers", cmd_peers, "list the peers and relays the node running on this data dir is "
        "connected to", json_opt=True)
    cmd("status", cmd_status, "boards, items, authors, peers, relays and last sync of this "
        "data dir; while a node runs, also each --peer and relay it dials: connected, or "
        "unreachable since when and why", json_opt=True)

