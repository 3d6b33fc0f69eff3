"""Who is asking: a paired phone's session, read from its cookie.

The session cookie is ``HttpOnly`` and ``SameSite=Strict`` (so no other site's page
can send it along) and ``Secure`` when the node serves HTTPS. Its token is stored
hashed (:class:`~p2paid.web.webstore.WebStore`); every POST also carries the
session's CSRF token (:func:`~p2paid.web.tokens.csrf_token`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, final

from starlette.requests import Request
from starlette.responses import Response

from p2paid.web.tokens import csrf_token, csrf_valid
from p2paid.web.webstore import SessionRow

__all__ = ["COOKIE", "PAIR_COOKIE", "Member", "clear_session", "set_session"]

COOKIE: Final = "p2paid_session"
#: A nonce the pairing page sets and its form echoes (a cross-site form cannot).
PAIR_COOKIE: Final = "p2paid_pair"
#: Sessions last until the phone leaves or the coordinator revokes it; the cookie
#: is renewed on use, up to this age (seconds).
MAX_AGE: Final = 180 * 86400


@final
@dataclass(frozen=True, slots=True)
class Member:
    """The phone behind a request: its session and its CSRF token."""

    token: str
    session: SessionRow

    @property
    def csrf(self) -> str:
        return csrf_token(self.token)

    def form_ok(self, submitted: str | None) -> bool:
        return csrf_valid(self.token, submitted)


def set_session(response: Response, token: str, *, secure: bool) -> None:
    response.set_cookie(COOKIE, token, max_age=MAX_AGE, path="/", httponly=True,
                        samesite="strict", secure=secure)


def clear_session(response: Response, *, secure: bool) -> None:
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=secure)


def session_token(request: Request) -> str | None:
    token = request.cookies.get(COOKIE)
    return token if token and len(token) <= 64 else None
