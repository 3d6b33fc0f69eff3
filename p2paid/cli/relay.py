"""``p2paid relay``: run a relay, show its status, and tell a node which relays to use."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import trio

from p2paid.board.model import Member
from p2paid.board.relayplan import normal_address
from p2paid.board.store import default_data_dir
from p2paid.cli.args import at_least, listen_address, positive_number
from p2paid.cli.passphrase import cli_store
from p2paid.cli.render import SafeFormatter, json_text, safe
from p2paid.core.hosts import normalize_host
from p2paid.core.relayaddr import RelayAddress, decode_token, encode_token
from p2paid.core.text import plural
from p2paid.errors import NotFoundError, UsageError
from p2paid.net.groups import collapse_single_errors
from p2paid.net.tcp import format_address, parse_address
from p2paid.relay.replica import MIB, RelayLimits
from p2paid.relay.server import (
    DEFAULT_RELAY_PORT,
    RelayOptions,
    open_relay_db,
    read_relay_runtime,
    serve_relay,
)
from p2paid.relay.state import RelayTokens

__all__ = ["add_relay_commands"]

log = logging.getLogger("p2paid")
_DEFAULTS = RelayLimits()


def cmd_relay_run(args: argparse.Namespace) -> int:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeFormatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, handlers=[handler])
    allowed = None
    if args.allow:
        try:
            allowed = frozenset(bytes.fromhex(b) for b in args.allow)
        except ValueError:
            print("p2paid: --allow takes board ids in hex (see 'p2paid board list --json')",
                  file=sys.stderr)
            return 2
    limits = RelayLimits(
        max_connections=args.max_connections,
        max_per_address=args.max_per_address,
        rate_bytes_per_s=int(args.rate_kib * 1024),
        max_board_bytes=int(args.max_board_mib * MIB),
        max_total_bytes=int(args.max_total_mib * MIB),
        allowed_boards=allowed,
        quota_per_key=int(args.quota_key_mib * MIB),
        quota_per_address=int(args.quota_address_mib * MIB),
        require_token=args.require_token,
    )
    options = RelayOptions(listen=args.listen, public=args.public, metrics=args.metrics,
                           limits=limits, store=_store(args), key_file=args.key_file,
                           pool_size=args.pool_size)
    data_dir = None if options.store else args.data_dir or default_data_dir()
    trio.run(_run, data_dir, options)
    return 0


def _store(args: argparse.Namespace) -> str | None:
    """The ``--store`` URL, or None for the data dir's SQLite file.

    Raises:
        UsageError: --store is neither ``sqlite`` nor a ``postgresql://`` URL.
    """
    store: str | None = getattr(args, "store", None)
    if store is None or store == "sqlite":
        return None
    from p2paid.storage.pg.store import is_postgres_url

    if not is_postgres_url(store):
        raise UsageError("--store takes 'sqlite' (the data dir, the default) or a "
                         "postgresql://USER@HOST/DATABASE URL")
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError:
        raise UsageError("a relay on PostgreSQL needs psycopg: pip install "
                         "'p2paid[postgresql]'") from None
    return store


async def _run(data_dir: Any, options: RelayOptions) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals, \
            collapse_single_errors():
        async with trio.open_nursery() as nursery:
            relay = await nursery.start(serve_relay, data_dir, options)
            print(f"relay address: {relay.address()}", flush=True)
            if options.public is None:
                log.info("give members this address (if they reach this machine by another "
                         "name or address, restart with --public HOST[:PORT])")
            if options.metrics is not None:
                log.info("metrics on http://%s/metrics", format_address(*options.metrics))
            async for signum in signals:
                log.info("stopping (%s); everything acknowledged is stored",
                         signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


def _public_address(text: str) -> tuple[str, int | None]:
    """An argparse type: ``HOST`` or ``HOST:PORT`` (a missing port means: the one the
    relay listens on)."""
    try:
        if text.count(":") == 1 or (text.startswith("[") and "]:" in text):
            return parse_address(text)
        return normalize_host(text.strip()), None
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_relay_status(args: argparse.Namespace) -> int:
    store = _store(args)
    if store is not None:
        return _cluster_status(args, store)
    data_dir = args.data_dir or default_data_dir()
    runtime = read_relay_runtime(data_dir)
    db = open_relay_db(data_dir)
    try:
        sizes = db.board_sizes()
        counts = db.envelope_boards()
    finally:
        db.close()
    status: dict[str, Any] = {
        "running": runtime is not None,
        "address": runtime.get("address") if runtime else None,
        "connections": runtime.get("connections", 0) if runtime else 0,
        "boards": [{"board": b.hex(), "envelopes": counts.get(b, 0), "bytes": n}
                   for b, n in sorted(sizes.items(), key=lambda x: -x[1])],
        "envelopes": sum(counts.values()), "bytes": sum(sizes.values()),
        "stats": runtime.get("stats") if runtime else None,
    }
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    state = f"running at {status['address']}" if runtime else "not running"
    print(f"relay {state}; {plural(status['connections'], 'connection')}")
    _print_boards(status)
    return 0


def _print_boards(status: dict[str, Any]) -> None:
    print(f"{plural(len(status['boards']), 'board')}, "
          f"{plural(status['envelopes'], 'envelope')}, {status['bytes'] / MIB:.1f} MiB")
    for b in status["boards"][:20]:
        print(f"  {b['board'][:16]}  {plural(b['envelopes'], 'envelope')}  "
              f"{b['bytes'] / MIB:.2f} MiB")


def _cluster_status(args: argparse.Namespace, store: str) -> int:
    from p2paid.relay.processes import cluster_status

    cluster = cluster_status(store)
    boards = sorted(cluster.boards.items(), key=lambda x: -x[1][1])
    status: dict[str, Any] = {
        "running": bool(cluster.processes),
        "processes": cluster.processes,
        "connections": sum(p["connections"] for p in cluster.processes),
        "boards": [{"board": b.hex(), "envelopes": n, "bytes": size}
                   for b, (n, size) in boards],
        "envelopes": sum(n for n, _ in cluster.boards.values()),
        "bytes": sum(size for _, size in cluster.boards.values()),
    }
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    count = len(cluster.processes)
    print(f"relay cluster: {count} process{'' if count == 1 else 'es'} running; "
          f"{plural(status['connections'], 'connection')}")
    for p in cluster.processes:
        print(safe(f"  {p['host']} pid {p['pid']}  {p['address']}  "
                   f"{plural(p['connections'], 'connection')}"))
    _print_boards(status)
    return 0


def cmd_relay_migrate(args: argparse.Namespace) -> int:
    store = _store(args)
    if store is None:
        raise UsageError("give the database: p2paid relay migrate --store "
                         "postgresql://USER@HOST/DATABASE (a SQLite relay upgrades itself)")
    from p2paid.storage.pg.schema import migrate

    before, after = migrate(store)
    if before == after:
        print(f"the relay database is at schema version {after}; nothing to do")
    else:
        print(f"the relay database is at schema version {after} (was {before or 'empty'})")
    return 0


def cmd_relay_key_export(args: argparse.Namespace) -> int:
    from p2paid.relay.keyfile import encode_key
    from p2paid.relay.server import relay_key

    db = open_relay_db(args.data_dir or default_data_dir())
    try:
        key = relay_key(db)
    finally:
        db.close()
    print(encode_key(key))
    print("p2paid: the relay's secret key; keep the file private (chmod 600) and give it to "
          "every process of the relay with --key-file", file=sys.stderr)
    return 0


def _tokens(args: argparse.Namespace) -> tuple[Any, Callable[[], None]]:
    """The relay's tokens (in its data dir, or in the cluster's database) and a closer."""
    store = _store(args)
    if store is not None:
        from p2paid.relay.pgstate import ClusterTokens
        from p2paid.storage.pg.store import PgStore

        pg = PgStore(store, pool_size=1)
        return ClusterTokens(pg), pg.close
    db = open_relay_db(args.data_dir or default_data_dir())
    return RelayTokens(db), db.close


def cmd_relay_add(args: argparse.Namespace) -> int:
    parsed = RelayAddress.parse(args.address)
    if args.token is not None:
        args.address = str(parsed.with_token(decode_token(args.token)))
    if not parsed.checked:
        print("p2paid: note: this relay address has no checksum (it was written by p2paid "
              "0.2.0 or earlier): compare its key with the one the relay's operator gave",
              file=sys.stderr)
    with cli_store(args) as store:
        if args.board:
            board = store.board(args.board)
            board.add_relay(args.address)
            print(safe(f"board {board.name!r} now syncs through {_shown(args.address)} "
                       "(published to its members as a suggestion)"))
        else:
            print(safe(f"every board now syncs through {_shown(store.add_relay(args.address))}"))
    return 0


def _shown(address: str) -> str:
    """An address as printed: without its token, which is a secret."""
    parsed = RelayAddress.parse(address)
    return parsed.without_token_text() + (" (with its access token)" if parsed.token else "")


def cmd_relay_token_create(args: argparse.Namespace) -> int:
    tokens_store, close = _tokens(args)
    try:
        token, info = tokens_store.create(args.note or "")
    finally:
        close()
    text = encode_token(token)
    if args.json:
        print(json.dumps({"id": info.id, "token": text, "note": info.note}))
        return 0
    print(f"token {info.id}: {text}")
    print("shown once: give it to the group (append ?token=... to the relay address, or "
          "'p2paid relay add ADDRESS --token TOKEN'); revoke it with "
          f"'p2paid relay token revoke {info.id}'")
    return 0


def cmd_relay_token_list(args: argparse.Namespace) -> int:
    tokens_store, close = _tokens(args)
    try:
        tokens = tokens_store.list()
    finally:
        close()
    if args.json:
        print(json.dumps([dataclasses.asdict(t) for t in tokens], indent=2))
        return 0
    if not tokens:
        print("no tokens: create one with 'p2paid relay token create --note GROUP'")
    for t in tokens:
        state = "valid" if t.revoked is None else "revoked " + time.strftime(
            "%Y-%m-%d", time.localtime(t.revoked))
        created = time.strftime("%Y-%m-%d", time.localtime(t.created))
        print(f"{t.id}  {state:<18} created {created}  {t.note}")
    return 0


def cmd_relay_token_revoke(args: argparse.Namespace) -> int:
    tokens_store, close = _tokens(args)
    try:
        info = tokens_store.revoke(args.id)
    finally:
        close()
    print(f"token {info.id} revoked: clients presenting it are refused from now on")
    return 0


def cmd_relay_remove(args: argparse.Namespace) -> int:
    with cli_store(args) as store:
        address = str(RelayAddress.parse(args.address))
        boards = [store.board(args.board)] if args.board else store.boards()
        removed = [b.name for b in boards if b.remove_relay(address)]
        if not args.board and address in store.relays():
            store.remove_relay(address)
            removed.append("every board (configured)")
        if not removed:
            raise NotFoundError(f"relay {address} is not in use "
                                f"{'on that board' if args.board else 'here'}")
        print(safe(f"stopped using {address} for {', '.join(removed)}"))
        if args.board and address in store.relays():
            print(f"(it is still configured for this node: 'p2paid relay remove {address}' "
                  "without --board stops that)")
    return 0


def _suggesters(members: Sequence[Member]) -> str:
    return ", ".join(str(m) for m in members)


def cmd_relay_list(args: argparse.Namespace) -> int:
    with cli_store(args) as store:
        rows: list[dict[str, Any]] = []
        for address, only in store.relays().items():
            rows.append({"relay": address, "source": "configured",
                         "boards": None if only is None else [b.hex() for b in only]})
        names: dict[str, str] = {}
        for board in store.boards():
            names[board.id.hex()] = board.name
            in_use = board.relays_in_use()
            own = {normal_address(r) for r in board.relays}
            for address in in_use:
                rows.append({"relay": address, "boards": [board.id.hex()],
                             "source": "board" if address in own else "published"})
        for suggestion in store.suggested_relays(rejected=True):
            rows.append({**suggestion.to_json(), "boards": [suggestion.board_id.hex()],
                         "source": "rejected" if suggestion.rejected else "suggested"})
    if args.json:
        print(json_text(rows))
        return 0
    if not rows:
        print("no relays: add one with 'p2paid relay add ADDRESS'")
    why = {"configured": "configured", "board": "from its invite, or added here",
           "published": "you publish it"}
    used = [r for r in rows if r["source"] in why]
    if used:
        print("in use:")
    for r in used:
        if r["boards"] is None:
            scope = "every board"
        else:
            scope = ", ".join(repr(names.get(b, b[:12])) for b in r["boards"])
        print(safe(f"  {r['relay']}  ({why[r['source']]}: {scope})"))
    for source, heading in (
            ("suggested", "suggested by members, not used until you accept one "
                          "('p2paid relay accept ADDRESS', or 'relay reject ADDRESS'):"),
            ("rejected", "suggested by members, rejected by you:")):
        chosen = [r for r in rows if r["source"] == source]
        if chosen:
            print(heading)
        for r in chosen:
            by = ", ".join(str(Member(m["author"], m["name"], m["name_shared"]))
                           for m in r["suggested_by"])
            print(safe(f"  {r['relay']}"))
            print(safe(f"      on board {r['board_name']!r}, suggested by {by}"))
    if any(m["name_shared"] for r in rows for m in r.get("suggested_by", ())):
        print("(names are chosen freely: 'name shared' means another member shows the same "
              "name; compare key fingerprints)")
    return 0


def cmd_relay_accept(args: argparse.Namespace) -> int:
    with cli_store(args) as store:
        board_id = store.board(args.board).id if args.board else None
        address = str(RelayAddress.parse(args.address))
        suggested = {s.board_id: s for s in store.suggested_relays(rejected=True)
                     if s.address == address}
        for board in store.accept_relay(address, board_id):
            by = suggested.get(board.id)
            who = f" (suggested by {_suggesters(by.suggested_by)})" if by else ""
            print(safe(f"board {board.name!r} now syncs through {address}{who}"))
    return 0


def cmd_relay_reject(args: argparse.Namespace) -> int:
    with cli_store(args) as store:
        board_id = store.board(args.board).id if args.board else None
        address = str(RelayAddress.parse(args.address))
        for board in store.reject_relay(address, board_id):
            print(safe(f"board {board.name!r}: not using {address}, and no longer listing it "
                       "as suggested ('p2paid relay accept' still can)"))
    return 0


def _store_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", metavar="URL", default=argparse.SUPPRESS,
                        help="the relay cluster's postgresql:// database (default: the data "
                             "dir's SQLite file)")


_USAGE = """%(prog)s [--listen HOST:PORT] [--public HOST[:PORT]] [OPTIONS]
       %(prog)s ACTION ...      (ACTION: status, add, remove, list, accept, reject, token,
                                migrate, key)"""
_DESCRIPTION = ("Without an ACTION: run a relay (a blind store-and-forward server for boards "
                "it cannot read) until Ctrl-C or SIGTERM. With an ACTION: manage the relays "
                "this node uses, or show the status and tokens of the relay on this data dir. "
                "One relay runs on a data dir, never a node's: a second one is refused, "
                "naming the first one's pid.")


def add_relay_commands(sub: Any, cmd: Callable[..., argparse.ArgumentParser]) -> None:
    """Register ``relay`` (run) and its ``status``, ``add``, ``remove``, ``list``,
    ``accept``, ``reject`` and ``token`` actions."""
    p = cmd("relay", cmd_relay_run,
            "run a relay, or manage the relays this node uses (relay ACTION)",
            usage=_USAGE, description=_DESCRIPTION)
    run = p.add_argument_group("running a relay (no ACTION)")
    run.add_argument("--listen", default=f"0.0.0.0:{DEFAULT_RELAY_PORT}", metavar="HOST:PORT",
                     type=listen_address(DEFAULT_RELAY_PORT),
                     help=f"IP address of this machine to serve on (default "
                          f"0.0.0.0:{DEFAULT_RELAY_PORT}; IPv6 in brackets: [::]:7447)")
    run.add_argument("--public", metavar="HOST[:PORT]", type=_public_address,
                     help="host name or address members use to reach this relay "
                          "(printed in its relay address)")
    run.add_argument("--metrics", metavar="HOST:PORT", type=listen_address(),
                     help="serve Prometheus metrics at http://HOST:PORT/metrics")
    run.add_argument("--max-connections", type=at_least(1), default=_DEFAULTS.max_connections,
                     metavar="N", help="simultaneous clients (default %(default)s)")
    run.add_argument("--max-per-address", type=at_least(1),
                     default=_DEFAULTS.max_per_address, metavar="N",
                     help="simultaneous clients from one address (IPv6: one /64) that hold "
                          "nothing here yet (default %(default)s)")
    run.add_argument("--rate-kib", type=positive_number,
                     default=_DEFAULTS.rate_bytes_per_s / 1024, metavar="KIB",
                     help="KiB/s one client may upload, after a burst (default %(default).0f)")
    run.add_argument("--max-board-mib", type=positive_number,
                     default=_DEFAULTS.max_board_bytes / MIB, metavar="MIB",
                     help="storage per board; full boards refuse new envelopes "
                          "(default %(default).0f)")
    run.add_argument("--max-total-mib", type=positive_number,
                     default=_DEFAULTS.max_total_bytes / MIB, metavar="MIB",
                     help="storage in all (default %(default).0f)")
    run.add_argument("--allow", action="append", metavar="BOARD_ID",
                     help="carry only these boards (repeatable; default: any board)")
    run.add_argument("--quota-key-mib", type=positive_number,
                     default=_DEFAULTS.quota_per_key / MIB, metavar="MIB",
                     help="storage in boards one client key brought here without an access "
                          "token (default %(default).0f)")
    run.add_argument("--quota-address-mib", type=positive_number,
                     default=_DEFAULTS.quota_per_address / MIB, metavar="MIB",
                     help="the same per client address, IPv6 by /64 (default %(default).0f)")
    run.add_argument("--require-token", action="store_true",
                     help="serve only clients with an access token ('relay token create')")
    run.add_argument("--key-file", metavar="FILE",
                     help="the relay's key, from 'relay key export' (every process of a "
                          "cluster presents the same one)")
    run.add_argument("--pool-size", type=at_least(1), default=8, metavar="N",
                     help="connections to PostgreSQL per process (default %(default)s)")
    p.add_argument("--store", metavar="URL", default=None,
                   help="where envelopes are kept: 'sqlite' (the data dir; default) or "
                        "postgresql://USER@HOST/DATABASE, shared by several relay processes")
    actions = p.add_subparsers(dest="relay_command", metavar="ACTION", prog=p.prog,
                               title="actions (optional; without one, the relay runs)")
    a = cmd("status", cmd_relay_status, "boards, envelopes, bytes and connections of the "
            "relay on this data dir (or of the cluster with --store)", actions, True)
    _store_option(a)
    a = cmd("migrate", cmd_relay_migrate, "create or upgrade a relay cluster's PostgreSQL "
            "tables (--store URL)", actions)
    _store_option(a)
    k = cmd("key", None, "the relay's key (key export)", actions)
    keys = k.add_subparsers(dest="key_command", metavar="ACTION", required=True)
    cmd("export", cmd_relay_key_export, "print the relay key of this data dir (made if "
        "missing) for --key-file", keys)
    a = cmd("add", cmd_relay_add, "sync through a relay (all boards, or one with --board)",
            actions)
    a.add_argument("address", help="p2paid-relay://HOST:PORT/KEY, as the relay printed it")
    a.add_argument("--board", metavar="ID", help="only this board (the relay is then "
                   "published to its members)")
    a.add_argument("--token", metavar="TOKEN", help="the access token its operator gave you")
    a = cmd("remove", cmd_relay_remove, "stop using a relay (configured, of a board, or "
            "accepted); with --board only for that board", actions)
    a.add_argument("address", help="the p2paid-relay://... address, as 'relay list' shows it")
    a.add_argument("--board", metavar="ID", help="only this board")
    cmd("list", cmd_relay_list, "relays this node uses and why, and relays members suggest",
        actions, True)
    a = cmd("accept", cmd_relay_accept, "use a relay that members suggest (on every board "
            "that suggests it, or one with --board)", actions)
    a.add_argument("address", help="the p2paid-relay://... address, as 'relay list' shows it")
    a.add_argument("--board", metavar="ID", help="only this board")
    a = cmd("reject", cmd_relay_reject, "do not use a relay that members suggest, and stop "
            "listing it", actions)
    a.add_argument("address", help="the p2paid-relay://... address, as 'relay list' shows it")
    a.add_argument("--board", metavar="ID", help="only this board")
    t = cmd("token", None, "access tokens of the relay on this data dir, or of the cluster "
            "with --store (token create|list|revoke)", actions)
    _store_option(t)
    tokens = t.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    a = cmd("create", cmd_relay_token_create, "make an access token (shown once) to hand "
            "to a group", tokens, True)
    a.add_argument("--note", metavar="TEXT", help="who it is for (shown in 'token list')")
    _store_option(a)
    a = cmd("list", cmd_relay_token_list, "the relay's tokens (ids and notes, never the "
            "tokens)", tokens, True)
    _store_option(a)
    a = cmd("revoke", cmd_relay_token_revoke, "refuse a token from now on", tokens)
    a.add_argument("id", help="the token's id, as 'relay token list' shows it")
    _store_option(a)
