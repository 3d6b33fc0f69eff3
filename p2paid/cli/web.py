"""``p2paid web``: invites for members' phones, posters, and paired devices.

The web interface itself runs inside ``p2paid run --web HOST:PORT``; these commands
work beside it on the same data dir (the node picks up what they change at once).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from p2paid.board.store import Store, default_data_dir
from p2paid.cli.args import at_least
from p2paid.cli.passphrase import cli_store
from p2paid.cli.render import safe
from p2paid.core.text import plural
from p2paid.errors import UsageError
from p2paid.storage.runtime import fresh_runtime
from p2paid.web.member_pages import AS_ME
from p2paid.web.poster import POSTER_KINDS, invite_url, write_poster
from p2paid.web.webstore import WebStore

__all__ = ["add_web_commands", "duration"]

_UNITS: Final = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_TTL_S: Final = 90 * 86400
#: An invite to post as the node's own member is short-lived: it is shown on screen.
PAIR_AS_ME_TTL_S: Final = 15 * 60


def duration(text: str) -> int:
    """An argparse type: ``30m``, ``12h``, ``7d`` or ``2w``, as seconds (90 days at most)."""
    found = re.fullmatch(r"\s*(\d{1,6})\s*([mhdw])\s*", text.lower())
    if not found:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 30m, 12h, 7d "
                                         "or 2w")
    seconds = int(found.group(1)) * _UNITS[found.group(2)]
    if not 0 < seconds <= MAX_TTL_S:
        raise argparse.ArgumentTypeError("an invite lives from 1 minute to 90 days")
    return seconds


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir) if args.data_dir else default_data_dir()


def _web_address(args: argparse.Namespace, store: Store) -> str:
    if args.url:
        return str(args.url)
    runtime = fresh_runtime(store.read_runtime())
    web = runtime.get("web") if runtime else None
    if not isinstance(web, str):
        raise UsageError("no node serves the web interface on this data dir: start "
                         "'p2paid run --web 0.0.0.0:8080' first, or give --url "
                         "http://ADDRESS:PORT (the address phones reach the node at)")
    return web


def cmd_web_invite(args: argparse.Namespace) -> int:
    with cli_store(args) as store, WebStore(store.data_dir, sealer=store.sealer) as web:
        if args.revoke:
            if not web.revoke_invite(args.revoke.strip().lower()):
                raise UsageError(f"no invite with id {args.revoke!r} ('p2paid web invites' "
                                 "lists them)")
            print(f"invite {args.revoke} revoked: it pairs no more phones")
            return 0
        board = store.board(args.board)
        base = _web_address(args, store)
        token, invite = web.create_invite(board.id, uses=args.uses, expires_in=args.expires,
                                          label=args.label or "")
    url = invite_url(base, token)
    if args.output:
        write_poster(args.output, url, board.name, args.language or ["en"])
    if args.json:
        print(json.dumps({"id": invite.id, "url": url, "board": board.id.hex(),
                          "uses": invite.uses, "expires": invite.expires,
                          "poster": str(args.output) if args.output else None}))
        return 0
    print(f"invite {invite.id} for {safe(board.name)}: {plural(invite.uses, 'phone')}, "
          f"until {time.strftime('%Y-%m-%d %H:%M', time.localtime(invite.expires))}")
    print(url)
    if args.output:
        print(f"poster written to {args.output}")
    elif sys.stdout.isatty():
        import segno

        segno.make(url, error="m").terminal(compact=True)
    return 0


def cmd_web_pair(args: argparse.Namespace) -> int:
    if not args.as_me:
        raise UsageError("'web pair' pairs your own phone with --as-me; for members' "
                         "phones, use 'p2paid web invite'")
    with cli_store(args) as store, WebStore(store.data_dir, sealer=store.sealer) as web:
        board = store.board(args.board)
        base = _web_address(args, store)
        token, invite = web.create_invite(board.id, uses=1, expires_in=PAIR_AS_ME_TTL_S,
                                          label="your own phone", as_me=True)
    url = invite_url(base, token)
    print(f"scan this with your own phone within 15 minutes: it will post on "
          f"{safe(board.name)} as you (this node's member, {board.author_fingerprint})")
    print(url)
    import segno

    segno.make(url, error="m").terminal(compact=True)
    print(f"(revoke it with 'p2paid web invite --revoke {invite.id}')")
    return 0


def cmd_web_invites(args: argparse.Namespace) -> int:
    with cli_store(args) as store, WebStore(store.data_dir, sealer=store.sealer) as web:
        names: dict[bytes, str] = {bytes(b.id): b.name for b in store.boards()}
        invites = web.invites()
    now = int(time.time())
    rows: list[dict[str, Any]] = [
            {"id": i.id, "board": i.board_id.hex(), "name": names.get(i.board_id, "?"),
             "uses_left": i.uses_left, "uses": i.uses, "expires": i.expires,
             "state": "revoked" if i.revoked else "expired" if now >= i.expires
             else "used up" if i.uses_left == 0 else "open", "label": i.label}
            for i in invites]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no invites yet ('p2paid web invite' makes one)")
    for r in rows:
        until = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["expires"]))
        print(f"{r['id']}  {safe(r['name'])[:24]:<24}  {r['uses_left']}/{r['uses']} left  "
              f"until {until}  {r['state']}  {safe(r['label'])}")
    return 0


def cmd_web_devices(args: argparse.Namespace) -> int:
    with cli_store(args) as store:
        names: dict[bytes, str] = {bytes(b.id): b.name for b in store.boards()}
        devices = store.devices()
        posts = {bytes(b.id): _posts_by_author(b.items()) for b in store.boards()}
    rows: list[dict[str, Any]] = [{"id": d.id, "name": d.name, "board": d.board_id.hex(),
             "board_name": names.get(d.board_id, "?"), "fingerprint": d.fingerprint,
             "last_seen": d.last_seen, "revoked": d.revoked,
             "posts": posts.get(d.board_id, {}).get(d.author.hex(), 0)} for d in devices]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no paired phones yet ('p2paid web invite' makes an invite)")
    for r in rows:
        seen = ("never" if r["last_seen"] is None else
                time.strftime("%Y-%m-%d %H:%M", time.localtime(r["last_seen"] / 1000)))
        state = "revoked" if r["revoked"] is not None else f"last seen {seen}"
        print(f"{r['id']}  {safe(r['name'])[:20]:<20}  {safe(r['board_name'])[:20]:<20}  "
              f"{r['fingerprint']}  {plural(r['posts'], 'post')}  {state}")
    return 0


def _posts_by_author(items: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item.author] = counts.get(item.author, 0) + 1
    return counts


def cmd_web_revoke(args: argparse.Namespace) -> int:
    if args.device.strip().lower() == AS_ME:
        with cli_store(args) as store, WebStore(store.data_dir, sealer=store.sealer) as web:
            ended = web.end_device(AS_ME)
        print(f"the phones signed in as this node's own member ({AS_ME}): "
              f"{plural(ended, 'session')} ended; pair one again with "
              "'p2paid web pair --as-me'")
        return 0
    with cli_store(args) as store, WebStore(store.data_dir, sealer=store.sealer) as web:
        device = store.revoke_device(args.device)
        ended = web.end_device(device.id)
    print(f"{safe(device.name)} ({device.id}) revoked: {plural(ended, 'session')} ended; "
          "its posts stay, signed by it")
    return 0


def add_web_commands(sub: Any, cmd: Callable[..., argparse.ArgumentParser]) -> None:
    """Register ``web invite``, ``invites``, ``devices`` and ``revoke``."""
    web = cmd("web", None, "invites and posters for members' phones, and paired phones "
              "(the web interface runs in 'p2paid run --web HOST:PORT')")
    wsub = web.add_subparsers(dest="web_command", metavar="ACTION", required=True)
    p = cmd("invite", cmd_web_invite, "make an invite that pairs phones with a board (a URL "
            "and a QR code; -o writes a poster)", wsub, True)
    p.add_argument("--board", metavar="ID", help="board id prefix or name (needed only when "
                   "several boards are joined)")
    p.add_argument("--uses", type=at_least(1), default=1, metavar="N",
                   help="phones it may pair (default 1: one person)")
    p.add_argument("--expires", type=duration, default=7 * 86400, metavar="TIME",
                   help="how long it lives: 30m, 12h, 7d (default), 2w")
    p.add_argument("-o", "--output", type=Path, metavar="FILE",
                   help=f"write a poster ({', '.join(POSTER_KINDS)}; .svg has the URL and "
                        "instructions too)")
    p.add_argument("--language", action="append", metavar="LANG",
                   help="a language of the poster's instructions (repeatable: en, ar, my, "
                        "fr, es, uk)")
    p.add_argument("--url", metavar="http://ADDRESS:PORT",
                   help="the address phones reach the node at (default: what the running "
                        "node's --web says)")
    p.add_argument("--label", metavar="TEXT", help="a note for 'web invites' (where it hangs)")
    p.add_argument("--revoke", metavar="INVITE_ID",
                   help="revoke this invite instead of making one")
    p = cmd("pair", cmd_web_pair, "pair your own phone with the node's member key (--as-me): "
            "a QR code in the terminal, valid for 15 minutes", wsub)
    p.add_argument("--as-me", action="store_true", required=True,
                   help="your phone posts as this node's member (you), not as a new one")
    p.add_argument("--board", metavar="ID", help="board id prefix or name (needed only when "
                   "several boards are joined)")
    p.add_argument("--url", metavar="http://ADDRESS:PORT",
                   help="the address your phone reaches the node at (default: what the "
                        "running node's --web says)")
    cmd("invites", cmd_web_invites, "list invites (uses left, expiry, state)", wsub, True)
    cmd("devices", cmd_web_devices, "list paired phones (name, board, last seen, posts)",
        wsub, True)
    p = cmd("revoke", cmd_web_revoke, "cut one phone off at once (its posts stay)", wsub)
    p.add_argument("device", help="device id from 'p2paid web devices', or @me: end the "
                                  "sessions of phones paired with 'web pair --as-me' (the "
                                  "ones that can wipe the node with --allow-remote-wipe)")
