"""Canonical base32: one text per byte string, so a mistyped last character of an
invite or relay key is refused; invites survive being wrapped over several lines."""

from __future__ import annotations

import base64
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2paid.core import base32
from p2paid.core.base32 import Base32Error
from p2paid.core.invite import Invite, new_board_secret
from p2paid.errors import InviteError

ALPHABET = string.ascii_lowercase + "234567"


@given(st.binary(max_size=80))
def test_round_trip(data: bytes) -> None:
    text = base32.encode(data)
    assert text == base64.b32encode(data).decode().rstrip("=").lower()
    assert base32.decode(text) == data == base32.decode(text.upper())


@given(st.text(alphabet=ALPHABET, max_size=40))
def test_every_text_that_decodes_is_the_canonical_one(text: str) -> None:
    try:
        data = base32.decode(text)
    except Base32Error:
        return
    assert base32.encode(data) == text


@pytest.mark.parametrize(("text", "why"), [
    ("mzxw6=", "not base32"), ("mzxw6!", "not base32"), ("mzxw 6", "not base32"),
    ("m", "length"), ("mzx", "length"), ("mzxw6y", "length"),
    ("mf", "last character"), ("mz", "last character"), ("mzxr", "last character"),
])
def test_refusals(text: str, why: str) -> None:
    with pytest.raises(Base32Error, match=why):
        base32.decode(text)


def _invite_with_unused_bits() -> str:
    for relays in ((), ("p2paid-relay://relay.example:7447/" + "a" * 52,)):
        for name in ("Aid", "Riverside", "Riverside aid", "Riverside mutual aid"):
            uri = Invite(new_board_secret(), name, relays).to_uri()
            if len(uri.removeprefix("p2paid:")) % 8 not in (0,):
                return uri
    raise AssertionError("no invite length with unused bits found")


def test_changing_the_last_character_of_an_invite_is_refused() -> None:
    uri = _invite_with_unused_bits()
    accepted = [c for c in ALPHABET if _parses(uri[:-1] + c)]
    assert accepted == [uri[-1]]


def _parses(uri: str) -> bool:
    try:
        Invite.from_uri(uri)
    except InviteError:
        return False
    return True


def test_an_invite_wrapped_over_lines_is_accepted() -> None:
    invite = Invite(new_board_secret(), "Riverside mutual aid", ())
    uri = invite.to_uri()
    wrapped = "  " + "\n".join(uri[i:i + 20] for i in range(0, len(uri), 20)) + "\r\n"
    assert Invite.from_uri(wrapped) == invite
    assert Invite.from_uri(uri.replace("p2paid:", "p2paid: ")) == invite
