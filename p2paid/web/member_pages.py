"""The pages of a paired phone: pairing, posting, pledging, and leaving.

Every POST is a plain form (works without JavaScript) that answers with a redirect
(POST, redirect, GET). A POST needs the session's CSRF token; pairing, which comes
before any session, needs instead the nonce its own page set in a ``SameSite=Strict``
cookie, so that another site cannot pair a visitor's phone with an invite of its
choosing. Posting and pairing are rate-limited per device and per address.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from p2paid.board.model import ItemKind
from p2paid.errors import P2paidError
from p2paid.node.asyncboard import AsyncBoard
from p2paid.node.asyncmember import AsyncMemberBoard
from p2paid.node.node import Node
from p2paid.web.i18n import language_of
from p2paid.web.limits import Limiter, WebLimits
from p2paid.web.session import (
    PAIR_COOKIE,
    Member,
    clear_session,
    session_token,
    set_session,
)
from p2paid.web.tokens import MAX_TOKEN_TEXT, new_token
from p2paid.web.webstore import PairingError, WebStore
from p2paid.web.zawgyi import ZAWGYI_HINT, zawgyi_fields

__all__ = ["AS_ME", "MemberPages"]



Render = Callable[..., Response]
#: Field names a post form may carry, and the longest value taken of each.
_FIELDS: Final = {"title": 200, "details": 2000, "category": 20, "urgency": 20,
                  "quantity": 12, "unit": 40, "location": 200}
_SEE_OTHER: Final = 303
#: The device id of a session that posts as the node's own member (``web pair --as-me``).
AS_ME: Final = "@me"
#: A device's "last seen" is written at most this often.
TOUCH_EVERY_MS: Final = 60_000
#: Form fields whose text is checked for Zawgyi (Burmese in the legacy encoding).
_TEXT_FIELDS: Final = ("title", "details", "location", "unit", "note", "name")


class MemberPages:
    """Routes for paired phones, over a node and its web store.

    Args:
        node: the running node.
        web: invites and sessions.
        render: renders a template into a response.
        secure: cookies only over HTTPS.
        limits: the rate limits.
        clock: seconds (for the rate limits).
    """

    def __init__(self, node: Node, web: WebStore, render: Render, *, secure: bool = False,
                 limits: WebLimits | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._node = node
        self._web = web
        self._render = render
        self._secure = secure
        self._clock = clock
        limits = limits or WebLimits()
        self.pairing_limit = Limiter(limits.pairing_per_minute, limits.pairing_burst)
        self.posting_limit = Limiter(limits.posting_per_minute, limits.posting_burst)

    def routes(self) -> list[Route]:
        return [
            Route("/pair/{token}", self.pair_page, methods=["GET"]),
            Route("/pair/{token}", self.pair, methods=["POST"]),
            Route("/b/{board}/post", self.post, methods=["POST"]),
            Route("/b/{board}/i/{item}/pledge", self.pledge, methods=["POST"]),
            Route("/b/{board}/i/{item}/unpledge", self.unpledge, methods=["POST"]),
            Route("/b/{board}/i/{item}/status", self.set_status, methods=["POST"]),
            Route("/b/{board}/i/{item}/edit", self.edit, methods=["POST"]),
            Route("/leave", self.leave, methods=["POST"]),
        ]

    # ------------------------------------------------------------------ who asks

    def member(self, request: Request) -> Member | None:
        """The paired phone behind ``request``, or None (no cookie, or an ended session)."""
        token = session_token(request)
        session = self._web.session(token)
        if token is None or session is None:
            return None
        if session.device_id != AS_ME:
            try:
                device = self._node.store.device(session.device_id)
            except P2paidError:
                return None
            if device.revoked is not None:
                return None
            now = int(time.time() * 1000)
            if device.last_seen is None or now - device.last_seen > TOUCH_EVERY_MS:
                self._node.store.touch_device(device.id)  # (for 'p2paid web devices')
        if int(time.time()) - session.last_seen >= TOUCH_EVERY_MS // 1000:
            self._web.touch(token)  # (a write: not on every page view)
        return Member(token, session)

    def author_of(self, member: Member) -> str:
        """The author key (hex) the member's phone posts with."""
        if member.session.device_id == AS_ME:
            return bytes(self._node.board(member.session.board_id).author).hex()
        return bytes(self._node.store.device(member.session.device_id).author).hex()

    def board_for(self, request: Request, member: Member | None) -> AsyncBoard:
        """The board the URL names, if ``member`` is paired with it (else 404, so that
        nobody learns which boards a node holds)."""
        board_hex = request.path_params["board"]
        if member is None or board_hex != member.session.board_id.hex():
            raise HTTPException(404)
        try:
            return self._node.board(member.session.board_id)
        except P2paidError:
            raise HTTPException(404) from None

    def _writer(self, request: Request, member: Member) -> AsyncMemberBoard:
        board = self.board_for(request, member)
        if member.session.device_id == AS_ME:
            return board  # the coordinator's phone: the node's own member
        return board.as_device(self._node.store.device(member.session.device_id))

    async def _form(self, request: Request, member: Member | None) -> tuple[Member, FormData]:
        if member is None:
            raise HTTPException(404)
        form = await request.form(max_files=0, max_fields=20, max_part_size=4096)
        if not member.form_ok(_text(form, "csrf", MAX_TOKEN_TEXT)):
            raise HTTPException(403, "this form has expired; reload the page and try again")
        typed = {n: v for n in _TEXT_FIELDS if isinstance(v := form.get(n), str)}
        if zawgyi_fields(typed):
            raise HTTPException(400, language_of(request).translations.gettext(ZAWGYI_HINT))
        client = request.client.host if request.client else "?"
        if not (self.posting_limit.allow(member.session.device_id, self._clock())
                and self.posting_limit.allow(f"addr {client}", self._clock())):
            raise HTTPException(429, "too many changes at once; wait a minute")
        return member, form

    # ------------------------------------------------------------------ pairing

    async def pair_page(self, request: Request) -> Response:
        token = request.path_params["token"]
        invite = self._web.invite(token) if len(token) <= MAX_TOKEN_TEXT else None
        usable = invite is not None and invite.usable(int(time.time()))
        board = None
        if invite is not None and usable:
            try:
                board = self._node.board(invite.board_id)
            except P2paidError:
                usable = False
        nonce = new_token()
        response = self._render(request, "pair.html", status=200 if usable else 410,
                                board=board, usable=usable, nonce=nonce, token=token)
        response.set_cookie(PAIR_COOKIE, nonce, max_age=3600, path="/pair", httponly=True,
                            samesite="strict", secure=self._secure)
        return response

    async def pair(self, request: Request) -> Response:
        client = request.client.host if request.client else "?"
        if not self.pairing_limit.allow(client, self._clock()):
            raise HTTPException(429, "too many pairing attempts; wait a minute")
        form = await request.form(max_files=0, max_fields=5, max_part_size=1024)
        nonce = request.cookies.get(PAIR_COOKIE)
        if not nonce or _text(form, "nonce", MAX_TOKEN_TEXT) != nonce:
            raise HTTPException(403, "open the invite link again to pair this phone")
        name = " ".join(_text(form, "name", 60).split())
        token = request.path_params["token"]
        try:
            invite = self._web.redeem(token)
        except PairingError as exc:
            return self._render(request, "pair.html", status=410, board=None, usable=False,
                                nonce="", token="", reason=str(exc))
        if invite.as_me:
            device_id = AS_ME
        else:
            device = self._node.store.add_device(invite.board_id, name or "phone")
            device_id = device.id
            if name:
                await self._node.board(invite.board_id).as_device(device).set_display_name(
                    name)
        session = self._web.create_session(device_id, invite.board_id)
        response = RedirectResponse(f"/b/{invite.board_id.hex()}", status_code=_SEE_OTHER)
        set_session(response, session, secure=self._secure)
        response.delete_cookie(PAIR_COOKIE, path="/pair")
        return response

    # ------------------------------------------------------------------ changes

    async def post(self, request: Request) -> Response:
        member, form = await self._form(request, self.member(request))
        board = self._writer(request, member)
        kind = _text(form, "kind", 10)
        if kind not in (ItemKind.NEED.value, ItemKind.OFFER.value):
            raise HTTPException(400, "choose a need or an offer")
        fields = _item_fields(form, ItemKind(kind))
        try:
            item = await board.post(kind, _text(form, "title", _FIELDS["title"]), **fields)
        except P2paidError as exc:
            raise HTTPException(400, str(exc)) from None
        return RedirectResponse(f"/b/{board.id.hex()}/i/{item.id}", status_code=_SEE_OTHER)

    async def _item_change(self, request: Request,
                           change: Callable[[AsyncMemberBoard, str, FormData], Awaitable[object]]
                           ) -> Response:
        """Run ``change`` on the URL's item as the member's phone; a refusal (not one's
        own item, a bad value) is a 400 with its reason, then back to the item."""
        member, form = await self._form(request, self.member(request))
        board = self._writer(request, member)
        item_id = request.path_params["item"]
        try:
            await change(board, item_id, form)
        except P2paidError as exc:
            raise HTTPException(400, str(exc)) from None
        return RedirectResponse(f"/b/{board.id.hex()}/i/{item_id}", status_code=_SEE_OTHER)

    async def pledge(self, request: Request) -> Response:
        async def claim(board: AsyncMemberBoard, item_id: str, form: FormData) -> object:
            return await board.claim(item_id, quantity=_quantity(form),
                                     note=_text(form, "note", 500))

        return await self._item_change(request, claim)

    async def unpledge(self, request: Request) -> Response:
        async def unclaim(board: AsyncMemberBoard, item_id: str, form: FormData) -> object:
            return await board.unclaim(item_id)

        return await self._item_change(request, unclaim)

    async def set_status(self, request: Request) -> Response:
        async def set_status(board: AsyncMemberBoard, item_id: str, form: FormData) -> object:
            ops = {"fulfil": board.fulfil, "withdraw": board.withdraw, "reopen": board.reopen}
            op = ops.get(_text(form, "action", 10))
            if op is None:
                raise HTTPException(400, "no such change")
            return await op(item_id)

        return await self._item_change(request, set_status)

    async def edit(self, request: Request) -> Response:
        """Change one's own need or offer (every field of the form; empty clears)."""
        async def edit(board: AsyncMemberBoard, item_id: str, form: FormData) -> object:
            item = board.get(item_id)
            changes: dict[str, Any] = {
                name: _text(form, name, _FIELDS[name]).strip()
                for name in ("title", "details", "category", "unit", "location")}
            changes["quantity"] = _quantity(form)
            urgency = _text(form, "urgency", _FIELDS["urgency"]).strip()
            if item.kind is ItemKind.NEED and urgency:
                changes["urgency"] = urgency
            if not changes["category"]:
                del changes["category"]
            return await board.edit(item_id, **changes)

        return await self._item_change(request, edit)

    async def leave(self, request: Request) -> Response:
        """"Leave and forget this phone": end the session, clear the site's data."""
        member = self.member(request)
        if member is not None:
            form = await request.form(max_files=0, max_fields=3, max_part_size=1024)
            if not member.form_ok(_text(form, "csrf", MAX_TOKEN_TEXT)):
                raise HTTPException(403, "this form has expired; reload the page")
            self._web.end_session(member.token)
        response = Response("", status_code=200, media_type="text/html")
        response.headers["clear-site-data"] = '"cache", "cookies", "storage"'
        clear_session(response, secure=self._secure)
        return response


def _text(form: FormData, name: str, limit: int) -> str:
    value = form.get(name)
    if not isinstance(value, str):
        return ""
    if len(value) > limit:
        raise HTTPException(400, f"{name} is too long")
    return value


def _item_fields(form: FormData, kind: ItemKind) -> Mapping[str, Any]:
    fields: dict[str, Any] = {}
    for name in ("details", "category", "unit", "location"):
        value = _text(form, name, _FIELDS[name]).strip()
        if value:
            fields[name] = value
    if kind is ItemKind.NEED:
        urgency = _text(form, "urgency", _FIELDS["urgency"]).strip()
        if urgency:
            fields["urgency"] = urgency
    quantity = _quantity(form)
    if quantity is not None:
        fields["quantity"] = quantity
    return fields


def _quantity(form: FormData) -> int | None:
    """The form's ``quantity``: None when empty; ASCII digits only (``int`` would take
    other scripts' digits, and ``str.isdigit`` superscripts it cannot convert)."""
    text = _text(form, "quantity", _FIELDS["quantity"]).strip()
    if not text:
        return None
    if not (text.isascii() and text.isdigit()):
        raise HTTPException(400, "the quantity is a whole number")
    return int(text)
