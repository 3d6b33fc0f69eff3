"""Secrets of the web interface: invite and session tokens, and CSRF tokens.

Tokens are 256 random bits in URL-safe base64; only their SHA-256 is stored, so a
copy of the data dir lets nobody pair a phone or take over a session. A CSRF token
is derived from the session token (an HMAC), so it needs no storage, and a page
that cannot read the session cookie (``HttpOnly``) cannot forge it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import Final

__all__ = ["TOKEN_BYTES", "csrf_token", "csrf_valid", "new_token", "token_hash"]

TOKEN_BYTES: Final = 32
_CSRF_LABEL: Final = b"p2paid/1 web csrf\0"
#: The longest token text taken from a request (a longer one is not a token).
MAX_TOKEN_TEXT: Final = 64


def new_token() -> str:
    """A fresh random token, as text for a URL or a cookie (43 characters)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(TOKEN_BYTES)).rstrip(b"=").decode()


def token_hash(token: str) -> bytes:
    """What is stored of ``token``."""
    return hashlib.sha256(token.encode("ascii", "replace")).digest()


def csrf_token(session_token: str) -> str:
    """The CSRF token of the session whose cookie holds ``session_token``."""
    mac = hmac.new(session_token.encode("ascii", "replace"), _CSRF_LABEL, hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()


def csrf_valid(session_token: str | None, submitted: str | None) -> bool:
    """Whether a form's ``submitted`` CSRF token belongs to the session."""
    if not session_token or not submitted or len(submitted) > MAX_TOKEN_TEXT:
        return False
    return hmac.compare_digest(csrf_token(session_token).encode(),
                               submitted.encode("utf-8", "replace"))
