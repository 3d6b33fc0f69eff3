"""The web interface as an ASGI application: :func:`create_app`.

Every page is server-rendered HTML that works without JavaScript; the templates
autoescape everything, so text from the board (any member may be hostile) is
shown, never run. The app reads the node's boards through the typed async API
(:class:`~p2paid.node.asyncboard.AsyncBoard`); it holds no state of its own. Every page
is in the request's language (:mod:`p2paid.web.i18n`), with a picker at its foot.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

import jinja2
from jinja2.runtime import Context
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
from p2paid.web.i18n import COOKIE, language_of, load_languages
from p2paid.web.labels import label
from p2paid.web.limits import WebLimits
from p2paid.web.live import LiveStreams
from p2paid.web.member_pages import AS_ME, MemberPages
from p2paid.web.pages import STATUSES, BoardQuery, RankedItems, page_of
from p2paid.web.remote_wipe import RemoteWipe
from p2paid.web.webstore import WebStore

__all__ = ["create_app", "language_of"]

HERE: Final = Path(__file__).parent
_HEX: Final = frozenset("0123456789abcdef")
#: How long the picker's choice is remembered: a year.
COOKIE_MAX_AGE: Final = 365 * 24 * 3600


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every template, whatever its name
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=["jinja2.ext.i18n"],
    )
    env.filters["short_fingerprint"] = lambda hex_key: short_fingerprint(bytes.fromhex(hex_key))

    # The catalog is the page's ``language`` (one environment serves every language).
    @jinja2.pass_context
    def gettext(ctx: Context, message: str) -> str:
        return ctx["language"].translations.gettext(message)  # type: ignore[no-any-return]

    @jinja2.pass_context
    def ngettext(ctx: Context, singular: str, plural: str, n: int) -> str:
        return ctx["language"].translations.ngettext(  # type: ignore[no-any-return]
            singular, plural, n)

    @jinja2.pass_context
    def pgettext(ctx: Context, context: str, message: str) -> str:
        return ctx["language"].translations.pgettext(  # type: ignore[no-any-return]
            context, message)

    @jinja2.pass_context
    def npgettext(ctx: Context, context: str, singular: str, plural: str, n: int) -> str:
        return ctx["language"].translations.npgettext(  # type: ignore[no-any-return]
            context, singular, plural, n)

    @jinja2.pass_context
    def label_of(ctx: Context, context: str, value: str) -> str:
        return label(ctx["language"].translations, context, value)

    env.install_gettext_callables(  # type: ignore[attr-defined]
        gettext, ngettext, newstyle=True, pgettext=pgettext, npgettext=npgettext)
    env.globals["label"] = label_of
    return env




def _local_path(target: str) -> str:
    """``target`` if it is a path on this site (where the picker came from), else ``/``:
    never ``//host`` or ``/\\host``, which browsers take for another site."""
    if (not target.startswith("/") or target.startswith("//") or "\\" in target
            or not target.isprintable() or len(target) > 2000):
        return "/"
    return target


def create_app(node: Node, *, web: WebStore | None = None, hosts: Iterable[str] = (),
               any_address: bool = True, secure: bool = False,
               limits: WebLimits | None = None, allow_remote_wipe: bool = False) -> Guard:
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
        allow_remote_wipe: the owner's phone (paired ``--as-me``) may wipe the node's
            data dir (:mod:`p2paid.web.remote_wipe`); off by default.
    """
    env = _environment()
    web = web if web is not None else WebStore(node.store.data_dir, sealer=node.store.sealer)
    languages = load_languages()

    def render(request: Request, template: str, status: int = 200, **context: Any) -> Response:
        language = language_of(request, languages)
        html = env.get_template(template).render(request=request, language=language,
                                                 languages=languages, **context)
        return HTMLResponse(html, status_code=status, headers={
            "content-language": language.tag, "vary": "Accept-Language, Cookie"})

    pages = MemberPages(node, web, render, secure=secure, limits=limits)
    ranked_items = RankedItems()
    live = LiveStreams(pages.member, pages.board_for, limits)

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
        inner = board.board
        ranked = ranked_items.of(bytes(board.id), (inner.seen_id, inner.applied_count),
                                 board.items, now)
        page = page_of(ranked, query, now)
        needs = sum(i.kind is ItemKind.NEED for _, i in ranked)
        return render(request, "board.html", board=board, query=query, page=page, now=now,
                      kinds=list(ItemKind), categories=list(Category),
                      urgencies=list(Urgency), statuses=STATUSES, csrf=member.csrf,
                      needs=needs, offers=len(ranked) - needs,
                      can_wipe=allow_remote_wipe and member.session.device_id == AS_ME)

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
        me = pages.author_of(member)
        return render(request, "item.html", board=board, item=item, now=now_ms(),
                      csrf=member.csrf, me=me, categories=list(Category),
                      urgencies=list(Urgency),
                      pledged=any(c.author == me for c in item.claims))

    async def choose_language(request: Request) -> Response:
        """The picker's form: remember the language in a cookie, back to the page."""
        async with request.form(max_files=0, max_fields=4) as form:
            tag, target = form.get("lang"), form.get("next")
        language = languages.get(tag if isinstance(tag, str) else None)
        if language is None:
            raise HTTPException(400)
        response = RedirectResponse(_local_path(target if isinstance(target, str) else "/"),
                                    status_code=303)
        response.set_cookie(COOKIE, language.tag, max_age=COOKIE_MAX_AGE, path="/",
                            samesite="strict", httponly=False)
        return response

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
            *(RemoteWipe(node, pages, render).routes() if allow_remote_wipe else ()),
            Route("/b/{board}", board_page),
            Route("/b/{board}/live", live.endpoint),
            Route("/b/{board}/i/{item}", item_page),
            Route("/language", choose_language, methods=["POST"]),
            Route("/healthz", health),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ],
        exception_handlers={HTTPException: not_found},
    )
    return Guard(app, HostAllowList(hosts, any_address=any_address))
