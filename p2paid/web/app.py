"""The web interface as an ASGI application: :func:`create_app`.

Every page is server-rendered HTML that works without JavaScript; the templates
autoescape everything, so text from the board (any member may be hostile) is
shown, never run. The app reads the node's boards through the typed async API
(:class:`~p2paid.node.asyncboard.AsyncBoard`); it holds no state of its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from p2paid.board.model import Category, ItemKind, Urgency, now_ms
from p2paid.core.identity import short_fingerprint
from p2paid.errors import P2paidError
from p2paid.node.node import Node
from p2paid.web.guard import Guard
from p2paid.web.hosts import HostAllowList
from p2paid.web.member_pages import MemberPages
from p2paid.web.pages import STATUSES, BoardQuery, page_of
from p2paid.web.webstore import WebStore

__all__ = ["create_app"]

HERE: Final = Path(__file__).parent
_HEX: Final = frozenset("0123456789abcdef")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every template, whatever its name
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["short_fingerprint"] = lambda hex_key: short_fingerprint(bytes.fromhex(hex_key))
    return env


def create_app(node: Node, *, web: WebStore | None = None, hosts: Iterable[str] = (),
               any_address: bool = True, secure: bool = False) -> Guard:
    """The web interface of ``node``, as an ASGI application. Only paired phones see a
    board (each its own: :mod:`p2paid.web.member_pages`); everyone else sees how to
    pair.

    Args:
        node: a running node (:func:`~p2paid.open_node`).
        web: its invites and sessions (default: those of the node's data dir).
        secure: served over HTTPS (cookies are then ``Secure``).
        hosts: names and addresses the pages may be reached by (beyond loopback).
        any_address: also answer requests for any IP address (a node on a hotspot
            rarely knows its address in advance); host *names* are always checked,
            which is what defeats DNS rebinding.
    """
    env = _environment()
    web = web if web is not None else WebStore(node.store.data_dir)

    def render(request: Request, template: str, status: int = 200, **context: Any) -> Response:
        html = env.get_template(template).render(request=request, **context)
        return HTMLResponse(html, status_code=status)

    pages = MemberPages(node, web, render, secure=secure)

    async def home(request: Request) -> Response:
        member = pages.member(request)
        if member is not None:
            return RedirectResponse(f"/b/{member.session.board_id.hex()}", status_code=303)
        return render(request, "welcome.html")

    async def board_page(request: Request) -> Response:
        member = pages.member(request)
        board = pages.board_for(request, member)
        assert member is not None
        query = BoardQuery.parse(request.query_params)
        now = now_ms()
        page = page_of(board.items(), query, now)
        return render(request, "board.html", board=board, query=query, page=page, now=now,
                      kinds=list(ItemKind), categories=list(Category),
                      urgencies=list(Urgency), statuses=STATUSES, csrf=member.csrf)

    async def item_page(request: Request) -> Response:
        member = pages.member(request)
        board = pages.board_for(request, member)
        assert member is not None
        item_id = request.path_params["item"]
        if len(item_id) != 32 or not set(item_id) <= _HEX:
            raise HTTPException(404)
        try:
            item = board.get(item_id)
        except P2paidError:
            raise HTTPException(404) from None
        me = str(node.store.device(member.session.device_id).author.hex())
        return render(request, "item.html", board=board, item=item, now=now_ms(),
                      csrf=member.csrf, me=me,
                      pledged=any(c.author == me for c in item.claims))

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        detail = exc.detail if isinstance(exc, HTTPException) and status != 404 else ""
        return render(request, "error.html", status=status, status_code=status,
                      detail=detail)

    app = Starlette(
        routes=[
            Route("/", home),
            *pages.routes(),
            Route("/b/{board}", board_page),
            Route("/b/{board}/i/{item}", item_page),
            Route("/healthz", health),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ],
        exception_handlers={HTTPException: not_found},
    )
    return Guard(app, HostAllowList(hosts, any_address=any_address))
