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
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from p2paid.board.model import Category, ItemKind, Urgency, now_ms
from p2paid.core.identity import short_fingerprint
from p2paid.errors import P2paidError
from p2paid.node.asyncboard import AsyncBoard
from p2paid.node.node import Node
from p2paid.web.guard import Guard
from p2paid.web.hosts import HostAllowList
from p2paid.web.pages import STATUSES, BoardQuery, page_of

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


def create_app(node: Node, *, hosts: Iterable[str] = (), any_address: bool = True) -> Guard:
    """The web interface of ``node``, as an ASGI application.

    Args:
        node: a running node (:func:`~p2paid.open_node`).
        hosts: names and addresses the pages may be reached by (beyond loopback).
        any_address: also answer requests for any IP address (a node on a hotspot
            rarely knows its address in advance); host *names* are always checked,
            which is what defeats DNS rebinding.
    """
    env = _environment()

    def render(request: Request, template: str, status: int = 200, **context: Any) -> Response:
        html = env.get_template(template).render(request=request, **context)
        return HTMLResponse(html, status_code=status)

    def board_of(request: Request) -> AsyncBoard:
        board_hex = request.path_params["board"]
        if len(board_hex) != 64 or not set(board_hex) <= _HEX:
            raise HTTPException(404)
        try:
            return node.board(bytes.fromhex(board_hex))
        except P2paidError:
            raise HTTPException(404) from None

    async def boards(request: Request) -> Response:
        return render(request, "boards.html", boards=node.boards(), now=now_ms())

    async def board_page(request: Request) -> Response:
        board = board_of(request)
        query = BoardQuery.parse(request.query_params)
        now = now_ms()
        page = page_of(board.items(), query, now)
        return render(request, "board.html", board=board, query=query, page=page, now=now,
                      kinds=list(ItemKind), categories=list(Category),
                      urgencies=list(Urgency), statuses=STATUSES)

    async def item_page(request: Request) -> Response:
        board = board_of(request)
        item_id = request.path_params["item"]
        if len(item_id) != 32 or not set(item_id) <= _HEX:
            raise HTTPException(404)
        try:
            item = board.get(item_id)
        except P2paidError:
            raise HTTPException(404) from None
        return render(request, "item.html", board=board, item=item, now=now_ms())

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        return render(request, "error.html", status=status, status_code=status)

    app = Starlette(
        routes=[
            Route("/", boards),
            Route("/b/{board}", board_page),
            Route("/b/{board}/i/{item}", item_page),
            Route("/healthz", health),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ],
        exception_handlers={HTTPException: not_found},
    )
    return Guard(app, HostAllowList(hosts, any_address=any_address))
