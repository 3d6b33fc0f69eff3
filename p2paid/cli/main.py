"""The ``p2paid`` command: a thin layer over the library.

Errors a user can cause print one line on stderr and exit with status 1;
argument mistakes print one line and exit with status 2; Ctrl-C exits with 130.
The global options (``--data-dir``, ``-v``, ``-q``, ``--no-pager``) are accepted
before or after the command, and every ``COMMAND --help`` lists them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from p2paid import __version__
from p2paid.board.board import Board
from p2paid.board.model import Category, Item, Status, Urgency, now_ms
from p2paid.board.store import ImportReport, Progress, Store
from p2paid.cli.args import Parser, at_least, global_options, settle_globals
from p2paid.cli.csvexport import board_csv
from p2paid.cli.listing import DEFAULT_LIMIT, board_summary, coordinator_order
from p2paid.cli.node import add_node_commands
from p2paid.cli.pager import show
from p2paid.cli.passphrase import (
    add_init_options,
    add_passphrase_commands,
    cli_store,
    protect_store,
)
from p2paid.cli.progress import PROGRESS_ENV, DeferredInterrupt, ProgressLine
from p2paid.cli.relay import add_relay_commands
from p2paid.cli.render import item_detail, item_table, json_text, safe
from p2paid.cli.web import add_web_commands
from p2paid.core.text import plural
from p2paid.errors import AmbiguousIdError, NotFoundError, P2paidError, UsageError
from p2paid.storage.files import file_error

__all__ = ["main"]

Handler = Callable[[argparse.Namespace], int]


def _print_json(value: Any) -> None:
    print(json_text(value))


def _store(args: argparse.Namespace, *, create: bool = False) -> Store:
    return cli_store(args, create=create)


def _find_item(store: Store, board_sel: str | None, item_id: str) -> tuple[Board, Item]:
    """Resolve an item prefix on one board, or on every joined board if none is given."""
    if board_sel is not None or len(store.boards()) <= 1:
        board = store.board(board_sel)
        return board, board.get(item_id)
    found: list[tuple[Board, Item]] = []
    for board in store.boards():
        try:
            found.append((board, board.get(item_id)))
        except NotFoundError:
            continue
    if not found:
        raise NotFoundError(f"no need or offer with id {item_id!r} on any board")
    if len(found) > 1:
        raise AmbiguousIdError(f"id {item_id!r} matches items on several boards; use --board")
    return found[0]


# ---------------------------------------------------------------------------- commands


def cmd_init(args: argparse.Namespace) -> int:
    with _store(args, create=True) as store:
        if args.passphrase:
            if store.protected:
                raise UsageError(f"the data dir {store.data_dir} is protected already")
            protect_store(args, store)
        print(f"p2paid data dir: {store.data_dir}"
              + (" (encrypted at rest under your passphrase)" if store.protected else ""))
        print(f"node key fingerprint: {store.node_fingerprint}")
        print("next: 'p2paid board create NAME' or 'p2paid board join INVITE'")
    return 0


def cmd_board_create(args: argparse.Namespace) -> int:
    with _store(args) as store:
        board = store.create_board(args.name, display_name=args.display_name,
                                   relays=args.relay or ())
        if args.json:
            _print_json({"board": board.id.hex(), "name": board.name, "invite": board.invite()})
            return 0
        print(f"created board {safe(repr(board.name))} ({board.id.hex()[:12]})")
        print("invite (share only with members; it grants read and write):")
        print(board.invite())
    return 0


def cmd_board_join(args: argparse.Namespace) -> int:
    with _store(args) as store:
        board = store.join(args.invite, display_name=args.display_name)
        items = board.items()
        if args.json:
            _print_json({"board": board.id.hex(), "name": board.name, "items": len(items)})
            return 0
        count = plural(len(items), "item")
        print(f"joined board {safe(repr(board.name))} ({board.id.hex()[:12]}); {count} so far")
    return 0


def cmd_board_list(args: argparse.Namespace) -> int:
    with _store(args) as store:
        rows: list[dict[str, Any]] = []
        for board in store.boards():
            items = board.items()
            me = board.me()
            rows.append({
                "board": board.id.hex(), "name": board.name,
                "needs": sum(i.kind.value == "need" for i in items),
                "offers": sum(i.kind.value == "offer" for i in items),
                "members": board.member_count, "you": board.display_name() or None,
                "author_fingerprint": board.author_fingerprint,
                "name_shared": me.name_shared, "relays": list(board.relays),
            })
        carried = {k.hex(): n for k, n in store.carried().items()}
        if args.json:
            _print_json({"boards": rows, "carried": carried})
            return 0
        if not rows:
            print("no boards joined yet")
        for r in rows:
            counts = ", ".join(plural(r[k + "s"], k) for k in ("need", "offer", "member"))
            shared = " (another member shows the same name)" if r["name_shared"] else ""
            print(safe(f"{r['board'][:12]}  {r['name']}  ({counts}; you: "
                       f"{r['you'] or 'anonymous'}{shared}, key {r['author_fingerprint']})"))
        for board_id, count in carried.items():
            print(f"{board_id[:12]}  (carried for others, not joined: {plural(count, 'envelope')})")
    return 0


def cmd_board_invite(args: argparse.Namespace) -> int:
    with _store(args) as store:
        board = store.board(args.board)
        for relay in args.relay or []:
            board.add_relay(relay)  # kept, and published to the members already in
        print(board.invite())
    return 0


def cmd_name(args: argparse.Namespace) -> int:
    with _store(args) as store:
        board = store.board(args.board)
        board.set_display_name(args.name)
        name = board.display_name()
        shown = repr(name) if name else f"anonymous (key {board.author_fingerprint})"
        print(safe(f"on {board.name!r} you now appear as {shown}"))
        if board.me().name_shared:
            print("another member of this board shows the same name: members can tell you "
                  f"apart by your key {board.author_fingerprint}")
    return 0


def _post(args: argparse.Namespace, kind: str) -> int:
    with _store(args) as store:
        board = store.board(args.board)
        fields: dict[str, Any] = {
            "details": args.details, "category": args.category, "quantity": args.quantity,
            "unit": args.unit, "location": args.location,
        }
        if args.expires_days is not None:
            fields["expires_in_days"] = args.expires_days
        if kind == "need":
            fields["urgency"] = args.urgency
            item = board.post_need(args.title, **fields)
        else:
            item = board.post_offer(args.title, **fields)
        if args.json:
            _print_json(item.to_json())
        else:
            print(f"posted {kind} {item.id[:8]}: {safe(item.title)}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    kind = "need" if args.needs else "offer" if args.offers else None
    filtered = any((kind, args.status, args.category))
    limit = None if args.all else args.limit
    if limit is None and not args.all and not args.json and sys.stdout.isatty():
        limit = DEFAULT_LIMIT
    with _store(args) as store:
        boards = [store.board(args.board)] if args.board else store.boards()
        now = now_ms()
        chosen = [(b, coordinator_order(
            b.items(kind=kind, status=args.status, category=args.category), now))
            for b in boards]
        if args.json:
            _print_json([{**i.to_json(now), "board": b.id.hex()}
                         for b, items in chosen for i in items[:limit]])
            return 0
        if not boards:
            print("no boards joined yet: 'p2paid board create NAME' or 'p2paid board join INVITE'")
            return 0
        parts: list[str] = []
        for b, items in chosen:
            shown = items[:limit]
            parts.append(board_summary(b, items, len(shown), now, filtered=filtered))
            if items:
                parts.append(item_table(shown, now))
        show("\n".join(parts), use_pager=not args.no_pager)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with _store(args) as store:
        _, item = _find_item(store, args.board, args.id)
        now = now_ms()
        if args.json:
            _print_json(item.to_json(now))
        else:
            print(item_detail(item, now))
    return 0


def cmd_claim(args: argparse.Namespace) -> int:
    with _store(args) as store:
        board, item = _find_item(store, args.board, args.id)
        claim = board.claim(item.id, quantity=args.quantity, note=args.note)
        qty = "" if claim.quantity is None else f"{claim.quantity} of "
        print(f"claimed {qty}{item.kind.value} {item.id[:8]}: {safe(item.title)}")
    return 0


def cmd_unclaim(args: argparse.Namespace) -> int:
    with _store(args) as store:
        board, item = _find_item(store, args.board, args.id)
        cancelled = board.unclaim(item.id)
        print(f"cancelled {plural(len(cancelled), 'claim')} on {item.kind.value} {item.id[:8]}")
    return 0


def cmd_edit(args: argparse.Namespace) -> int:
    fields = {
        name: getattr(args, name)
        for name in ("title", "details", "category", "quantity", "unit", "location", "urgency")
        if getattr(args, name) is not None
    }
    if args.no_quantity:
        fields["quantity"] = None
    if args.expires_days is not None:
        fields["expires_in_days"] = args.expires_days
    with _store(args) as store:
        board, item = _find_item(store, args.board, args.id)
        updated = board.edit(item.id, **fields)
        print(f"updated {updated.kind.value} {updated.id[:8]}: {safe(updated.title)}")
    return 0


def _status_command(action: str) -> Handler:
    def run(args: argparse.Namespace) -> int:
        with _store(args) as store:
            board, item = _find_item(store, args.board, args.id)
            updated: Item = getattr(board, action)(item.id)
            print(f"{updated.kind.value} {updated.id[:8]} is now {updated.status.value}")
        return 0

    return run


def cmd_bundle_export(args: argparse.Namespace) -> int:
    with _store(args) as store:
        ids: list[bytes] | None = None
        if args.board:
            try:
                ids = [store.board(args.board).id]
            except NotFoundError:
                carried = [b for b in store.carried() if b.hex().startswith(args.board.lower())]
                if len(carried) != 1:
                    raise
                ids = carried
        line = ProgressLine("exporting")
        try:
            count = store.export_bundle(args.file, ids, progress=lambda p: line.update(
                p.done, p.total))
        except KeyboardInterrupt:
            line.clear()
            print(f"p2paid: interrupted: no bundle was written to {args.file}",
                  file=sys.stderr)
            return 130
        line.clear()
        print(f"wrote {plural(count, 'envelope')} to {args.file}")
    return 0


def _print_import(report: ImportReport) -> None:
    for entry in report.boards.values():
        name = entry.name or f"not joined, carried for others: {entry.board_id.hex()[:12]}"
        if not entry.board_id:
            name = "undecodable records"
        print(f"{safe(name)}: {entry.accepted:,} accepted, {entry.duplicates:,} already had, "
              f"{sum(entry.rejected.values()):,} rejected")
        for code, n in sorted(entry.rejected.items()):
            print(f"    rejected {n:,}: {code}")
        if entry.held:
            print(f"    held {entry.held:,}: earlier envelopes of their authors are missing")
    if not report.boards:
        print("the bundle is empty")


def _interrupted_import(progress: Progress | None) -> int:
    """Say what an interrupted import stored; the exit status."""
    report = progress.report if progress is not None else None
    stored = report.accepted if report is not None else 0
    boards = sum(e.accepted > 0 for e in report.boards.values()) if report is not None else 0
    print(f"p2paid: interrupted: {plural(stored, 'envelope')} of {plural(boards, 'board')} "
          "were stored; run the import again to finish; nothing is lost", file=sys.stderr)
    return 130


def cmd_bundle_import(args: argparse.Namespace) -> int:
    line = ProgressLine("importing")
    last: list[Progress] = []
    stop = DeferredInterrupt("stopping after the envelopes being stored now "
                             "(Ctrl-C again to stop at once)", line)

    def progress(p: Progress) -> None:
        last[:] = [p]
        if p.done < p.total:
            stop.check()  # (before drawing: what is drawn is under way)
        line.update(p.done, p.total, force=p.done == 0)

    with _store(args) as store:
        try:
            with stop:
                report = store.import_bundle(args.file, progress=progress)
        except KeyboardInterrupt:
            line.clear()
            return _interrupted_import(last[-1] if last else None)
        line.clear()
        if args.json:
            _print_json({
                "accepted": report.accepted, "already_had": report.duplicates,
                "rejected": report.rejected,
                "boards": [
                    {"board": e.board_id.hex(), "name": e.name, "accepted": e.accepted,
                     "already_had": e.duplicates, "held": e.held, "rejected": dict(e.rejected)}
                    for e in report.boards.values()
                ],
            })
        else:
            _print_import(report)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    if args.format != "csv" and (args.hxl or args.no_bom):
        raise UsageError("--hxl and --no-bom apply to --format csv only")
    with _store(args) as store:
        board = store.board(args.board)
        now = now_ms()
        if args.format == "automerge":
            data: bytes = board.export_automerge()
        elif args.format == "json":
            doc = {"board": board.id.hex(), "name": board.name, "exported": now,
                   "items": [i.to_json(now) for i in board.items()]}
            data = (json_text(doc) + "\n").encode()
        else:
            text = board_csv(board.items(), now, board=board.name, hxl=args.hxl)
            data = (text if args.no_bom else "\ufeff" + text).encode()
    if args.output in (None, "-"):
        if args.format == "automerge" and sys.stdout.isatty():
            raise UsageError("the automerge format is binary: give -o FILE")
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        target = Path(args.output)
        try:
            target.write_bytes(data)
        except FileNotFoundError as exc:  # (the file is made: its folder is missing)
            raise file_error(target.parent, exc, "write the export into") from exc
        except OSError as exc:
            raise file_error(target, exc, "write the export to") from exc
        print(f"wrote {len(data):,} bytes to {args.output}", file=sys.stderr)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from p2paid.bench.main import run_benchmarks

    return run_benchmarks(quick=args.quick, as_json=args.json, only=args.only)


# ---------------------------------------------------------------------------- parser


_ID_HELP = "item id (a unique prefix of at least 4 characters is enough)"
_GLOBALS = global_options()


def _item_fields(p: argparse.ArgumentParser, *, editing: bool) -> None:
    cats = [c.value for c in Category]
    keep = " (default: unchanged)" if editing else ""
    p.add_argument("--details", default=None if editing else "",
                   help=f"longer description{keep}")
    p.add_argument("--category", choices=cats, default=None if editing else "other",
                   help=f"what kind of help: {', '.join(cats)}"
                        + (keep if editing else " (default: other)"))
    p.add_argument("--unit", default=None if editing else "",
                   help=f"unit of the quantity, e.g. litres{keep}")
    p.add_argument("--location", default=None if editing else "",
                   help=f"coarse place (a camp, a street); avoid exact addresses{keep}")
    p.add_argument("--expires-days", type=int, default=None, metavar="DAYS",
                   help="expire after DAYS days" + (
                       keep if editing else " (needs default to 14, offers to never)"))


def _board_opt(p: argparse.ArgumentParser) -> None:
    p.add_argument("--board", metavar="ID", help="board id prefix or name (needed only when "
                   "several boards are joined)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="p2paid",
        description="A peer-to-peer board of needs and offers for mutual-aid groups. "
                    "Works offline; syncs over the local network, relays or USB bundles.",
        epilog="Start with 'p2paid init', then 'p2paid board create NAME'. "
               "'p2paid COMMAND --help' explains each command.",
        parents=[_GLOBALS],
    )
    parser.add_argument("--version", action="version", version=f"p2paid {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def cmd(name: str, handler: Handler | None, help_text: str, parent: Any = sub,
            json_opt: bool = False, **kwargs: Any) -> argparse.ArgumentParser:
        """Add a subcommand (or, without a handler, a group of them) that takes the
        global options, and whose help and description say what it does."""
        kwargs.setdefault("description", help_text)
        p: argparse.ArgumentParser = parent.add_parser(name, help=help_text,
                                                       parents=[_GLOBALS], **kwargs)
        if handler is not None:
            p.set_defaults(handler=handler)
        if json_opt:
            p.add_argument("--json", action="store_true", help="machine-readable output")
        return p

    p = cmd("init", cmd_init, "create the data dir and this node's key")
    add_init_options(p)

    board = cmd("board", None, "create, join, list boards and show invites")
    bsub = board.add_subparsers(dest="board_command", metavar="ACTION", required=True)
    p = cmd("create", cmd_board_create, "create a board and print its invite", bsub, True)
    p.add_argument("name", help="the board's name, e.g. 'Riverside mutual aid'")
    p.add_argument("--as", dest="display_name", metavar="NAME",
                   help="the name others see on your posts (default: anonymous)")
    p.add_argument("--relay", action="append", metavar="ADDRESS",
                   help="relay hint for invites (repeatable)")
    p = cmd("join", cmd_board_join, "join a board from an invite", bsub, True)
    p.add_argument("invite", help="the p2paid:... invite")
    p.add_argument("--as", dest="display_name", metavar="NAME",
                   help="the name others see on your posts (default: anonymous)")
    cmd("list", cmd_board_list, "list joined boards (and boards carried for others)", bsub, True)
    p = cmd("invite", cmd_board_invite, "print a board's invite", bsub)
    _board_opt(p)
    p.add_argument("--relay", action="append", metavar="ADDRESS",
                   help="add a relay hint (repeatable; also suggested to the members in)")

    p = cmd("name", cmd_name, "set the name others see on your posts on a board")
    p.add_argument("name", help="your display name on the board ('' to appear as anonymous)")
    _board_opt(p)

    for kind in ("need", "offer"):
        article = "an" if kind == "offer" else "a"
        group = cmd(kind, None, f"post {article} {kind}")
        gsub = group.add_subparsers(dest=f"{kind}_command", metavar="ACTION", required=True)
        p = cmd("add", lambda a, k=kind: _post(a, k), f"post {article} {kind}", gsub, True)  # type: ignore[misc]
        p.add_argument("title", help="short title, e.g. 'Drinking water'")
        _item_fields(p, editing=False)
        p.add_argument("--quantity", type=int, default=None,
                       help="how many (a whole number; claims count against it)")
        if kind == "need":
            p.add_argument("--urgency", choices=[u.value for u in Urgency], default="normal",
                           help="how pressing: low, normal, high, critical (default: normal)")
        _board_opt(p)

    p = cmd("list", cmd_list, "list needs and offers, what a coordinator needs first: open "
            "before closed, then by urgency, then newest", json_opt=True)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--needs", action="store_true", help="needs only")
    which.add_argument("--offers", action="store_true", help="offers only")
    statuses = [*(s.value for s in Status), "expired"]
    p.add_argument("--status", choices=statuses,
                   help=f"only items with this status: {', '.join(statuses)}")
    p.add_argument("--category", choices=[c.value for c in Category],
                   help="only items of this category")
    paging = p.add_mutually_exclusive_group()
    paging.add_argument("--limit", type=at_least(1), metavar="N",
                        help=f"show at most N items per board (default on a terminal: "
                             f"{DEFAULT_LIMIT}; when piped, and with --json: all)")
    paging.add_argument("--all", action="store_true", help="show every item")
    _board_opt(p)

    p = cmd("show", cmd_show, "show one need or offer with its claims", json_opt=True)
    p.add_argument("id", help=_ID_HELP)
    _board_opt(p)

    p = cmd("claim", cmd_claim, "pledge to meet a need, or ask for an offer")
    p.add_argument("id", help=_ID_HELP)
    p.add_argument("--quantity", type=int, help="how many you will bring / ask for")
    p.add_argument("--note", default="", help="a short note for the author")
    _board_opt(p)

    p = cmd("unclaim", cmd_unclaim, "cancel your claims on a need or offer")
    p.add_argument("id", help=_ID_HELP)
    _board_opt(p)

    p = cmd("edit", cmd_edit, "change your own need or offer")
    p.add_argument("id", help=_ID_HELP)
    p.add_argument("--title", help="new title (default: unchanged)")
    _item_fields(p, editing=True)
    amount = p.add_mutually_exclusive_group()
    amount.add_argument("--quantity", type=int, default=None,
                        help="new quantity (a whole number)")
    amount.add_argument("--no-quantity", action="store_true", help="remove the quantity")
    p.add_argument("--urgency", choices=[u.value for u in Urgency],
                   help="new urgency: low, normal, high, critical (needs only)")
    _board_opt(p)

    for action, verb, text in (("fulfil", "fulfil", "mark your need or offer as fulfilled"),
                               ("withdraw", "withdraw", "withdraw your need or offer"),
                               ("reopen", "reopen", "open your need or offer again")):
        p = cmd(verb, _status_command(action), text)
        p.add_argument("id", help=_ID_HELP)
        _board_opt(p)

    bundle = cmd("bundle", None, "carry boards on a USB stick or by e-mail")
    bsub = bundle.add_subparsers(dest="bundle_command", metavar="ACTION", required=True)
    progress_note = (f"Progress shows on stderr when it is a terminal ({PROGRESS_ENV}=1 shows "
                     f"it anyway, {PROGRESS_ENV}=0 never).")
    p = cmd("export", cmd_bundle_export, "write every envelope (of one board) to a file", bsub,
            epilog=progress_note)
    p.add_argument("file", help="bundle file to write, e.g. /media/usb/riverside.p2paid")
    _board_opt(p)
    p = cmd("import", cmd_bundle_import, "verify and apply a bundle file", bsub, True,
            epilog=progress_note + " Ctrl-C stops after the envelopes being stored, says "
            "what was stored, and exits with status 130; importing again finishes the job.")
    p.add_argument("file", help="bundle file to read, e.g. /media/usb/riverside.p2paid")

    p = cmd("export", cmd_export, "export a board as JSON, CSV (for spreadsheets and HXL "
            "tools) or a raw Automerge document")
    p.add_argument("--format", choices=["json", "csv", "automerge"], default="json",
                   help="json (default), csv, or automerge (binary, needs -o)")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE (default: stdout)")
    p.add_argument("--hxl", action="store_true",
                   help="csv: add a row of HXL hashtags under the header (for the HXL Proxy "
                        "and HDX tools)")
    p.add_argument("--no-bom", action="store_true",
                   help="csv: leave out the UTF-8 byte-order mark that spreadsheets such as "
                        "Excel need to read non-Latin text")
    _board_opt(p)

    add_node_commands(sub, cmd)
    add_relay_commands(sub, cmd)
    add_web_commands(sub, cmd)
    add_passphrase_commands(sub, cmd)

    p = cmd("bench", cmd_bench, "measure this machine: apply, open and post figures", json_opt=True)
    p.add_argument("--quick", action="store_true", help="smaller workload (1,000 changes)")
    p.add_argument("--only", metavar="NAMES",
                   help="comma-separated subset: apply, open, post, sync, stall, insync, live, "
                        "peer, checkpoint, web, relay, fanout, relaymem, relaypg, attacks, "
                        "atrest (default: all)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``p2paid`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    settle_globals(parser, args)
    handler: Handler = args.handler
    try:
        return handler(args)
    except P2paidError as exc:
        print(f"p2paid: {safe(exc)}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # Output piped into e.g. `head` that has exited: not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        print(safe(f"p2paid: {exc.strerror or exc}{where}"), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("p2paid: interrupted", file=sys.stderr)
        return 130
